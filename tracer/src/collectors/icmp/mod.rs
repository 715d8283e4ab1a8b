//! ICMP errors ("fragmentation needed", "packet too big", unreachable, time
//! exceeded) with the flow they are about: seen as packets by the TC
//! programs on traced devices, and sent by a traced namespace's stack
//! (`icmp:icmp_send`).

use anyhow::Result;
use aya::Ebpf;
use tracer_ebpf::{FAMILY_IPV4, FlowId, IcmpKey};

use crate::{
    cli::Cli,
    collectors::{
        Collector, Notice, SKB_FIELDS, Setup, double_buffer::Drained, fragment_of, loader,
        tally::Accumulate,
    },
    model::Direction,
    output::{Report, Scope},
    sys::bpf::Barrier,
    topology::names::Names,
};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IcmpCount(pub u64);

impl Accumulate for IcmpCount {
    fn add(&mut self, o: &Self) {
        self.0 += o.0;
    }
}

impl From<&u64> for IcmpCount {
    fn from(v: &u64) -> Self {
        IcmpCount(*v)
    }
}

/// ICMP errors of one kind about one flow, where they were seen or sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcmpRow {
    pub netns: String,
    pub iface: Option<String>,
    /// Seen as a packet on `iface` (ingress, egress), or sent by this namespace's stack.
    pub dir: Direction,
    /// `frag_needed`, `packet_too_big`, `port_unreachable`, `time_exceeded`, ...
    pub kind: &'static str,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// The MTU a "fragmentation needed" or "packet too big" announces.
    pub mtu: Option<u32>,
    /// The offending packet, from the header the error quotes.
    pub id: FlowId,
    pub count: u64,
}

pub struct Icmp {
    counts: Drained<IcmpKey, u64, IcmpCount>,
}

impl Icmp {
    pub fn new(cli: &Cli) -> Self {
        Icmp {
            counts: Drained::limited(cli.totals_limit),
        }
    }
}

impl Collector for Icmp {
    fn name(&self) -> &'static str {
        "icmp"
    }

    fn start(&mut self, ebpf: &mut Ebpf, setup: &Setup) -> Result<Vec<Notice>> {
        let text = if setup.kernel.icmp_send_args.is_none() {
            "this kernel has no icmp:icmp_send tracepoint: ICMP errors its stack sends are \
             not counted as sent; those that cross a traced device still are"
                .to_string()
        } else {
            let started = setup.require(SKB_FIELDS).and_then(|()| {
                loader::attach_tracepoint(ebpf, setup.kernel.aya_btf()?, "icmp_send", "icmp_send")
            });
            match started {
                Ok(()) => return Ok(Vec::new()),
                Err(e) => format!(
                    "ICMP errors sent by the stack are not counted ({e:#}); those that cross a \
                     traced device still are"
                ),
            }
        };
        Ok(vec![Notice {
            collector: self.name(),
            text,
        }])
    }

    fn take_maps(&mut self, ebpf: &mut Ebpf) -> Result<()> {
        self.counts.take(ebpf, "ICMP_GENERATION", "ICMPS")?;
        Ok(())
    }

    fn drain(&mut self, barrier: &Barrier) -> Result<()> {
        self.counts.drain(barrier)
    }

    fn untotalled(&self) -> u64 {
        self.counts.untotalled()
    }

    fn fill(&self) -> Option<(usize, u32)> {
        self.counts.fill()
    }

    fn rows(&mut self, scope: Scope, names: &mut Names, report: &mut Report) {
        report.icmps = self.counts.rows(scope, |e| named(names, e));
    }
}

/// Named rows, by namespace, device, kind, flow.
fn named(names: &Names, icmps: Vec<(&IcmpKey, &IcmpCount)>) -> Vec<IcmpRow> {
    let mut rows: Vec<IcmpRow> = icmps
        .into_iter()
        .map(|(key, count)| {
            let (netns, iface) = names.device(key.netns_inode as u64, key.ifindex);
            let (id, _) = fragment_of(key.id);
            IcmpRow {
                netns,
                iface: (key.ifindex != 0).then_some(iface),
                dir: Direction::from_raw(key.dir),
                kind: kind(key.family, key.icmp_type, key.icmp_code),
                icmp_type: key.icmp_type,
                icmp_code: key.icmp_code,
                mtu: (key.mtu != 0).then_some(key.mtu),
                id,
                count: count.0,
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        (&a.netns, &a.iface, a.dir, a.kind, &a.id).cmp(&(&b.netns, &b.iface, b.dir, b.kind, &b.id))
    });
    rows
}

/// The name of an ICMP (`family` 4) or ICMPv6 error.
pub fn kind(family: u8, icmp_type: u8, code: u8) -> &'static str {
    if family == FAMILY_IPV4 {
        match (icmp_type, code) {
            (3, 0) => "net_unreachable",
            (3, 1) => "host_unreachable",
            (3, 2) => "protocol_unreachable",
            (3, 3) => "port_unreachable",
            (3, 4) => "frag_needed",
            (3, 9 | 10 | 13) => "admin_prohibited",
            (3, _) => "dest_unreachable",
            (11, 0) => "time_exceeded",
            (11, 1) => "reassembly_timeout",
            (12, _) => "parameter_problem",
            (4, _) => "source_quench",
            (5, _) => "redirect",
            _ => "other",
        }
    } else {
        match (icmp_type, code) {
            (1, 1) => "admin_prohibited",
            (1, 3) => "address_unreachable",
            (1, 4) => "port_unreachable",
            (1, _) => "dest_unreachable",
            (2, _) => "packet_too_big",
            (3, 0) => "time_exceeded",
            (3, 1) => "reassembly_timeout",
            (4, _) => "parameter_problem",
            _ => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use tracer_ebpf::FAMILY_IPV6;

    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(kind(FAMILY_IPV4, 3, 4), "frag_needed");
        assert_eq!(kind(FAMILY_IPV4, 3, 3), "port_unreachable");
        assert_eq!(kind(FAMILY_IPV4, 11, 1), "reassembly_timeout");
        assert_eq!(kind(FAMILY_IPV4, 11, 0), "time_exceeded");
        assert_eq!(kind(FAMILY_IPV6, 2, 0), "packet_too_big");
        assert_eq!(kind(FAMILY_IPV6, 1, 4), "port_unreachable");
        assert_eq!(kind(FAMILY_IPV6, 3, 0), "time_exceeded");
    }
}
