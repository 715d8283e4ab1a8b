//! One collector per kind of data. Each owns its eBPF programs (and which
//! variant of them the running kernel takes), the draining of its maps and
//! the decoding of what it drained into typed rows.
//!
//! Adding a collector: a folder here with a type implementing [`Collector`],
//! and one line in [`registry`].

pub mod double_buffer;
pub mod drops;
pub mod flows;
pub mod health;
pub mod icmp;
pub mod loader;
pub mod tally;
pub mod totals;
pub mod verdicts;

use std::os::fd::BorrowedFd;

use anyhow::{Context as _, Result};
use aya::Ebpf;
use tracer_ebpf::{Config, FlowId, TUPLE_FRAG_FIRST, TUPLE_FRAG_REST, TUPLE_PORTS};

use crate::{
    cli::Cli,
    output::{Report, Scope},
    sys::{bpf::Barrier, kernel::Kernel},
    topology::{Target, names::Names},
};

/// Takes the map `name` out of `ebpf` as the type `convert` makes of it;
/// the error names the map, missing or of another kind.
pub fn take_map<T, E>(
    ebpf: &mut Ebpf,
    name: &str,
    convert: impl FnOnce(aya::maps::Map) -> Result<T, E>,
) -> Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow::anyhow!("eBPF object has no map {name}"))?;
    convert(map).with_context(|| format!("map {name}"))
}

/// What a collector is given to start.
pub struct Setup<'a> {
    pub cli: &'a Cli,
    pub targets: &'a [Target],
    pub kernel: &'a Kernel,
    /// Struct fields the programs read that this kernel's BTF lacks.
    pub missing_fields: &'a [String],
}

impl Setup<'_> {
    /// An error naming which of `fields` (`struct.member`) this kernel lacks, if any.
    pub fn require(&self, fields: &[&str]) -> Result<()> {
        let lacking: Vec<&str> = fields
            .iter()
            .copied()
            .filter(|f| self.missing_fields.iter().any(|m| m == f))
            .collect();
        if lacking.is_empty() {
            return Ok(());
        }
        anyhow::bail!("the kernel's BTF has no {}", lacking.join(", "))
    }
}

/// Fields of `struct sk_buff` and what it points to that a program reads to
/// place and parse a packet outside TC.
pub const SKB_FIELDS: &[&str] = &[
    "sk_buff.dev",
    "sk_buff.sk",
    "sk_buff.head",
    "sk_buff.data",
    "sk_buff.len",
    "sk_buff.data_len",
    "sk_buff.network_header",
    "sk_buff.mac_header",
    "sk_buff.protocol",
    "net_device.ifindex",
    "net_device.nd_net.net",
    "net.ns.inum",
    "sock.__sk_common.skc_net.net",
    "sock.__sk_common.skc_family",
];

/// Something a collector could not do on this kernel or host, said once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The collector.
    pub collector: &'static str,
    /// What is missing and what the user loses.
    pub text: String,
}

pub trait Collector {
    /// Its name in messages: `flows`, `drops`...
    fn name(&self) -> &'static str;

    /// Sets its part of the programs' load-time configuration, from what
    /// the kernel offers.
    fn configure(&mut self, _kernel: &Kernel, _config: &mut Config) {}

    /// Loads and attaches its programs. The object's maps are all still in
    /// `ebpf`. What it cannot do here it returns as notices; an error stops tracer.
    fn start(&mut self, ebpf: &mut Ebpf, setup: &Setup) -> Result<Vec<Notice>>;

    /// Takes the maps it drains out of `ebpf`, once every collector has started.
    fn take_maps(&mut self, ebpf: &mut Ebpf) -> Result<()>;

    /// Keeps its attachments in step with the traced namespaces and devices
    /// as they come and go. Returns how many attachments failed (said on
    /// stderr, counted in health); an error stops tracer.
    fn sync(&mut self, _ebpf: &mut Ebpf, _targets: &[Target]) -> Result<usize> {
        Ok(0)
    }

    /// Moves what the kernel counted since the last call into its tallies.
    fn drain(&mut self, barrier: &Barrier) -> Result<()>;

    /// Puts its rows of `scope` into `report`; `Scope::Interval` ends the interval.
    fn rows(&mut self, scope: Scope, names: &mut Names, report: &mut Report);

    /// What it attached that does not go away with tracer's file descriptors.
    fn stop(&mut self, _ebpf: &mut Ebpf) {}

    /// File descriptors that become readable when it has events to show at
    /// once, between reports.
    fn event_fds(&self) -> Vec<BorrowedFd<'_>> {
        Vec::new()
    }

    /// Reads its pending events into `report` (of scope `First`).
    fn events(&mut self, _names: &mut Names, _report: &mut Report) {}

    /// Whether it collects anything on this run (an option or the kernel may
    /// have turned it off).
    fn active(&self) -> bool {
        true
    }

    /// How many attachments it holds, for the start-up line.
    fn attached(&self) -> usize {
        0
    }

    /// Programs it loaded outside aya, by name (for their run-time statistics).
    fn programs(&self) -> Vec<(String, BorrowedFd<'_>)> {
        Vec::new()
    }

    /// Entries its map held at the last drain, and the map's capacity.
    fn fill(&self) -> Option<(usize, u32)> {
        None
    }

    /// Interval entries its run totals left out since start: they held
    /// `--totals-limit` keys.
    fn untotalled(&self) -> u64 {
        0
    }
}

/// A drop's or error's flow as flow rows key it (no per-packet flags), and
/// whether the packet was the first or a later fragment of its datagram.
pub fn fragment_of(mut id: FlowId) -> (FlowId, Option<&'static str>) {
    let flags = if id.outer.flags & (TUPLE_FRAG_FIRST | TUPLE_FRAG_REST) != 0 {
        id.outer.flags
    } else {
        id.inner.flags
    };
    let fragment = if flags & TUPLE_FRAG_FIRST != 0 {
        Some("first")
    } else if flags & TUPLE_FRAG_REST != 0 {
        Some("rest")
    } else {
        None
    };
    id.outer.flags &= TUPLE_PORTS;
    id.inner.flags &= TUPLE_PORTS;
    (id, fragment)
}

/// Every collector, in the order they start and fill reports. Validates the
/// command line's options for them against the kernel's BTF, but touches
/// nothing in the kernel.
pub fn registry(cli: &Cli, kernel: &Kernel) -> Result<Vec<Box<dyn Collector>>> {
    Ok(vec![
        Box::new(flows::Flows::new(cli)),
        Box::new(drops::Drops::new(cli, kernel)?),
        Box::new(icmp::Icmp::new(cli)),
        Box::new(verdicts::Verdicts::new(cli)?),
    ])
}

/// The collectors of a run, driven together.
pub struct Collectors {
    list: Vec<Box<dyn Collector>>,
    barrier: Barrier,
    health: health::Counters,
}

impl Collectors {
    /// Starts every collector, then hands each its maps. On error, what was
    /// attached so far is detached.
    pub fn start(
        mut list: Vec<Box<dyn Collector>>,
        ebpf: &mut Ebpf,
        setup: &Setup,
    ) -> Result<(Self, Vec<Notice>)> {
        let mut notices = Vec::new();
        let result = (|| -> Result<()> {
            for c in list.iter_mut() {
                notices.extend(c.start(ebpf, setup)?);
            }
            for c in list.iter_mut() {
                c.take_maps(ebpf)?;
            }
            Ok(())
        })();
        let started = result.and_then(|()| {
            Ok((
                Barrier::new().context("create BPF barrier map")?,
                health::Counters::take(ebpf)?,
            ))
        });
        match started {
            Ok((barrier, health)) => Ok((
                Collectors {
                    list,
                    barrier,
                    health,
                },
                notices,
            )),
            Err(e) => {
                // A collector that failed half-way keeps what it attached: undo it too.
                for c in list.iter_mut() {
                    c.stop(ebpf);
                }
                Err(e)
            }
        }
    }

    fn find(&self, name: &str) -> Option<&dyn Collector> {
        self.list.iter().find(|c| c.name() == name).map(|c| &**c)
    }

    /// Whether collector `name` collects anything on this run.
    pub fn active(&self, name: &str) -> bool {
        self.find(name).is_some_and(|c| c.active())
    }

    /// How many attachments collector `name` holds.
    pub fn attached(&self, name: &str) -> usize {
        self.find(name).map_or(0, |c| c.attached())
    }

    pub fn sync(&mut self, ebpf: &mut Ebpf, targets: &[Target]) -> Result<()> {
        for c in &mut self.list {
            let failed = c.sync(ebpf, targets)?;
            self.health.attach_failed(failed as u64);
        }
        Ok(())
    }

    /// Drains every collector and the health counters.
    pub fn drain(&mut self) -> Result<()> {
        for c in &mut self.list {
            c.drain(&self.barrier)
                .with_context(|| format!("drain {}", c.name()))?;
        }
        self.health
            .untotalled(self.list.iter().map(|c| c.untotalled()).sum());
        self.health.read()
    }

    /// The rows of every collector for `scope`, and the health counters.
    pub fn report(&mut self, scope: Scope, names: &mut Names, report: &mut Report) {
        for c in &mut self.list {
            c.rows(scope, names, report);
        }
        report.map_fill = self
            .list
            .iter()
            .filter_map(|c| Some((c.name(), c.fill()?)))
            .collect();
        report.health = match scope {
            Scope::Total => self.health.total(),
            _ => self.health.interval(),
        };
    }

    /// The collectors' event descriptors, by index.
    pub fn event_fds(&self) -> Vec<(usize, BorrowedFd<'_>)> {
        self.list
            .iter()
            .enumerate()
            .flat_map(|(i, c)| c.event_fds().into_iter().map(move |fd| (i, fd)))
            .collect()
    }

    /// Reads the pending events of collector `index`.
    pub fn events(&mut self, index: usize, names: &mut Names, report: &mut Report) {
        if let Some(c) = self.list.get_mut(index) {
            c.events(names, report);
        }
    }

    /// Every program of the collectors' own loaders, by name.
    pub fn programs(&self) -> Vec<(String, BorrowedFd<'_>)> {
        self.list.iter().flat_map(|c| c.programs()).collect()
    }

    /// Reads the pending events of every collector.
    pub fn all_events(&mut self, names: &mut Names, report: &mut Report) {
        for c in &mut self.list {
            c.events(names, report);
        }
    }

    /// Detaches what would outlive tracer.
    pub fn stop(&mut self, ebpf: &mut Ebpf) {
        for c in &mut self.list {
            c.stop(ebpf);
        }
    }
}

/// The programs' load-time configuration, with every collector's part.
pub fn configure(list: &mut [Box<dyn Collector>], kernel: &Kernel, config: &mut Config) {
    for c in list {
        c.configure(kernel, config);
    }
}
