//! What the eBPF programs could not record (full maps, lost events), from
//! the per-CPU `COUNTERS` array they all share.

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
};
use tracer_ebpf::counter;

use crate::collectors::take_map;

/// Events the eBPF side could not record, and other signs that counts are incomplete.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Health {
    /// Packets not counted because no flow slot was free.
    pub flow_map_full: u64,
    /// Drops not counted because the drop map was full.
    pub drop_map_full: u64,
    /// First drops of new keys not announced at once (ring buffer full); they
    /// are still counted in the interval rows.
    pub drop_events_lost: u64,
    /// Netfilter verdicts not counted because the verdict map was full.
    pub verdict_map_full: u64,
    /// ICMP errors not counted because the ICMP map was full.
    pub icmp_map_full: u64,
    /// Times a device could not be recorded for naming (device map full):
    /// its rows show `?` and `if<ifindex>` instead of its names.
    pub device_map_full: u64,
    /// Non-first fragments whose first fragment was not seen: counted by addresses only.
    pub frag_unmatched: u64,
    /// Times the kernel dropped nftables trace events (`--explain`) because
    /// tracer's socket buffer was full: rule counts are then lower bounds.
    pub explain_events_lost: u64,
    /// Dropped packets not written to `--pcap-drops`: over `--pcap-rate`.
    pub capture_rate_limited: u64,
    /// Dropped packets not written to `--pcap-drops`: the ring buffer was full.
    pub capture_lost: u64,
    /// Devices or namespaces that came after start and could not be attached to.
    pub attach_failed: u64,
    /// Interval rows (of flows, drops, verdicts, ICMP errors) whose keys the
    /// run totals did not take: they held `--totals-limit` keys of that kind.
    pub totals_full: u64,
}

impl Health {
    /// Each field by its name in the rows, in their order: the one list the
    /// outputs write, so a new field lands here and in the struct alone.
    pub fn fields(&self) -> [(&'static str, u64); 12] {
        [
            ("flow_map_full", self.flow_map_full),
            ("drop_map_full", self.drop_map_full),
            ("drop_events_lost", self.drop_events_lost),
            ("verdict_map_full", self.verdict_map_full),
            ("icmp_map_full", self.icmp_map_full),
            ("device_map_full", self.device_map_full),
            ("frag_unmatched", self.frag_unmatched),
            ("explain_events_lost", self.explain_events_lost),
            ("capture_rate_limited", self.capture_rate_limited),
            ("capture_lost", self.capture_lost),
            ("attach_failed", self.attach_failed),
            ("totals_full", self.totals_full),
        ]
    }

    pub fn any(&self) -> bool {
        *self != Health::default()
    }

    /// Each field as `(self - before)`.
    fn since(&self, before: &Health) -> Health {
        Health {
            flow_map_full: self.flow_map_full - before.flow_map_full,
            drop_map_full: self.drop_map_full - before.drop_map_full,
            drop_events_lost: self.drop_events_lost - before.drop_events_lost,
            verdict_map_full: self.verdict_map_full - before.verdict_map_full,
            icmp_map_full: self.icmp_map_full - before.icmp_map_full,
            device_map_full: self.device_map_full - before.device_map_full,
            frag_unmatched: self.frag_unmatched - before.frag_unmatched,
            explain_events_lost: self.explain_events_lost - before.explain_events_lost,
            capture_rate_limited: self.capture_rate_limited - before.capture_rate_limited,
            capture_lost: self.capture_lost - before.capture_lost,
            attach_failed: self.attach_failed - before.attach_failed,
            totals_full: self.totals_full - before.totals_full,
        }
    }
}

/// The `COUNTERS` map and the last two readings of it.
pub struct Counters {
    map: PerCpuArray<MapData, u64>,
    total: Health,
    interval: Health,
    /// Counted in userspace: failed attachments since start.
    attach_failed: u64,
    /// Counted in userspace: interval entries left out of the run totals.
    untotalled: u64,
}

impl Counters {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Counters {
            map: take_map(ebpf, "COUNTERS", PerCpuArray::try_from)?,
            total: Health::default(),
            interval: Health::default(),
            attach_failed: 0,
            untotalled: 0,
        })
    }

    /// Sets how many interval entries the run totals left out since start.
    pub fn untotalled(&mut self, n: u64) {
        self.untotalled = n;
    }

    /// Counts `n` attachments that failed.
    pub fn attach_failed(&mut self, n: u64) {
        self.attach_failed += n;
    }

    /// Reads the counters: what they say since start, and since the last read.
    pub fn read(&mut self) -> Result<()> {
        let read = |index: u32| -> Result<u64> {
            Ok(self
                .map
                .get(&index, 0)
                .context("read COUNTERS")?
                .iter()
                .sum())
        };
        let now = Health {
            flow_map_full: read(counter::FLOW_MAP_FULL)?,
            drop_map_full: read(counter::DROP_MAP_FULL)?,
            drop_events_lost: read(counter::DROP_EVENTS_LOST)?,
            verdict_map_full: read(counter::VERDICT_MAP_FULL)?,
            icmp_map_full: read(counter::ICMP_MAP_FULL)?,
            device_map_full: read(counter::DEVICE_MAP_FULL)?,
            frag_unmatched: read(counter::FRAG_UNMATCHED)?,
            explain_events_lost: 0,
            capture_rate_limited: read(counter::CAPTURE_RATE_LIMITED)?,
            capture_lost: read(counter::CAPTURE_LOST)?,
            attach_failed: self.attach_failed,
            totals_full: self.untotalled,
        };
        self.interval = now.since(&self.total);
        self.total = now;
        Ok(())
    }

    pub fn total(&self) -> Health {
        self.total
    }

    pub fn interval(&self) -> Health {
        self.interval
    }
}
