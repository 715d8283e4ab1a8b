//! Turning drained counters into output: JSON lines, plain text lines, or a
//! live table; dropped packets as pcapng; counters as OpenMetrics. Renderers write to an injected `Write` so that tests can
//! capture exactly what a user would see.

pub mod json;
pub mod live;
pub mod metrics;
pub mod pcap;
pub mod text;

use std::{
    io::{self, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    rc::Rc,
    time::Duration,
};

use tracer_ebpf::{FAMILY_IPV4, FAMILY_IPV6, FlowId, TUPLE_PORTS, Tuple, VNI_PRESENT};

pub use crate::{
    analysis::{fragments::FragRow, paths::PathRow},
    collectors::{
        drops::DropRow, flows::FlowRow, health::Health, icmp::IcmpRow, verdicts::VerdictRow,
    },
    output::pcap::Capture,
};
use crate::{model::Hook, rules::Family};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Counts of the last interval.
    #[default]
    Interval,
    /// Counts of the whole run, printed once at exit.
    Total,
    /// The first drop of a (flow, reason, place) not seen before, printed at
    /// once; it is counted again in the next interval.
    First,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Interval => "interval",
            Scope::Total => "total",
            Scope::First => "first",
        }
    }
}

/// Packets of one flow decided by one rule (or chain policy), from
/// nftables tracing (`--explain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRow {
    pub netns: String,
    pub id: FlowId,
    /// nftables family of the table (`ip`, `ip6`, `inet`...), if the trace said.
    pub family: Option<Family>,
    pub table: String,
    pub chain: String,
    /// The hook of the rule's chain, when it is a base chain.
    pub hook: Option<Hook>,
    /// nftables rule handle; `None` when the chain's policy decided.
    pub handle: Option<u64>,
    /// The rule as the user wrote it (iptables or nft syntax), when known.
    pub rule: Option<String>,
    /// `drop`, `accept`, `queue`, ... (a REJECT is a drop).
    pub verdict: &'static str,
    pub count: u64,
}

/// An MTU problem of the traced topology and the flows of the report it hits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtuRow {
    pub finding: crate::topology::mtu::Finding,
    pub flows: Vec<FlowRow>,
}

/// Everything printed for one interval, or for the whole run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub scope: Scope,
    /// Length of the interval, or of the whole run.
    pub elapsed: Duration,
    pub flows: Vec<FlowRow>,
    /// The flows of `flows` the run had not seen before (at any hop): only
    /// these can bring a conversation the NAT ties have not looked up.
    pub new_flows: Vec<FlowId>,
    pub drops: Vec<DropRow>,
    pub verdicts: Vec<VerdictRow>,
    pub icmps: Vec<IcmpRow>,
    pub frags: Vec<FragRow>,
    pub mtu: Vec<MtuRow>,
    pub rules: Vec<RuleRow>,
    /// Each conversation along its hops, from the rows above.
    pub paths: Vec<PathRow>,
    pub health: Health,
    /// Dropped packets captured (`--pcap-drops`), in reports of scope `First`.
    pub captures: Vec<Capture>,
    /// Per collector: entries its map held at the last drain, and its capacity.
    pub map_fill: Vec<(&'static str, (usize, u32))>,
    /// The inode of each namespace rows name (JSON's `netns_inode`).
    pub netns_inodes: Vec<(String, u64)>,
    /// Known-benign drops and IPv6 link-local rows, summarised (unless
    /// `--show-benign`).
    pub benign: Option<crate::analysis::benign::BenignRow>,
    /// Conversations after a destination NAT, to what their client addressed.
    pub nat: Rc<crate::analysis::nat::Ties>,
}

/// Where reports go.
pub trait Sink {
    fn report(&mut self, report: &Report) -> io::Result<()>;
}

/// A sink's output, gathered first in `buf` and handed to `out` in large
/// pieces: a row is dozens of small writes, which on a `Vec` are inlined
/// copies, and tens of thousands of rows are written a second. `buf` is
/// kept between reports.
pub struct Chunked<W: Write> {
    out: W,
    pub buf: Vec<u8>,
}

/// What `buf` holds before it is handed to `out`: as much as the pipe that
/// `widen_pipe` (session.rs) asks for. Each write wakes the reader, which
/// then often takes tracer's CPU until it has read; at ten thousand flows (12 MB
/// of JSON a second) 64 KiB writes cost about 140 such switches a second,
/// and tracer 9% more CPU than 1 MiB writes (medians of six bench runs).
const CHUNK: usize = 1 << 20;

impl<W: Write> Chunked<W> {
    pub fn new(out: W) -> Self {
        Chunked {
            out,
            buf: Vec::with_capacity(CHUNK + 4096),
        }
    }

    /// Hands `buf` to `out` once it holds a chunk.
    pub fn spill(&mut self) -> io::Result<()> {
        if self.buf.len() >= CHUNK {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Hands all of `buf` to `out` and flushes it: the end of a report.
    pub fn finish(&mut self) -> io::Result<()> {
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        self.out.flush()
    }
}

/// Printable view of a [`Tuple`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub proto: Proto,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Named(&'static str),
    Number(u8),
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Proto::Named(n) => f.write_str(n),
            Proto::Number(n) => write!(f, "{n}"),
        }
    }
}

impl Endpoints {
    pub fn of(t: &Tuple) -> Self {
        let addr = |a: &[u8; 16]| match t.family {
            FAMILY_IPV4 => Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
            FAMILY_IPV6 => Some(IpAddr::V6(Ipv6Addr::from(*a))),
            _ => None,
        };
        let ports = t.flags & TUPLE_PORTS != 0;
        Endpoints {
            proto: match t.proto {
                6 => Proto::Named("tcp"),
                17 => Proto::Named("udp"),
                1 => Proto::Named("icmp"),
                58 => Proto::Named("icmpv6"),
                n => Proto::Number(n),
            },
            src: addr(&t.src),
            dst: addr(&t.dst),
            sport: ports.then_some(t.sport),
            dport: ports.then_some(t.dport),
        }
    }

    /// `10.0.0.1:5000` or `[fd00::1]:5000`, without the port where there is none.
    pub fn src_text(&self) -> HostPort {
        HostPort(self.src, self.sport)
    }

    pub fn dst_text(&self) -> HostPort {
        HostPort(self.dst, self.dport)
    }
}

/// `udp 10.0.0.1:5000 > 10.0.0.2:4789`
impl std::fmt::Display for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} > {}",
            self.proto,
            self.src_text(),
            self.dst_text()
        )
    }
}

/// An address and port as text, written where it is displayed: rows are
/// printed tens of thousands a second, and a `String` each would be most of
/// the text output's cost.
#[derive(Debug, Clone, Copy)]
pub struct HostPort(Option<IpAddr>, Option<u16>);

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            HostPort(None, _) => f.write_str("-"),
            HostPort(Some(a), None) => write!(f, "{a}"),
            HostPort(Some(a @ IpAddr::V6(_)), Some(p)) => write!(f, "[{a}]:{p}"),
            HostPort(Some(a), Some(p)) => write!(f, "{a}:{p}"),
        }
    }
}

/// The VNI of a VXLAN flow.
pub fn vni(id: &FlowId) -> Option<u32> {
    (id.vni & VNI_PRESENT != 0).then_some(id.vni & 0x00ff_ffff)
}

/// The encapsulated packet of a VXLAN flow.
pub fn inner(id: &FlowId) -> Option<Endpoints> {
    (id.inner.family != 0).then(|| Endpoints::of(&id.inner))
}

/// An IPv4 tuple of 10.0.0.`src` > 10.0.0.`dst`, for the sinks' tests.
#[cfg(test)]
pub(crate) fn test_tuple(src: u8, dst: u8, proto: u8, ports: Option<(u16, u16)>) -> Tuple {
    let mut t = Tuple {
        family: FAMILY_IPV4,
        proto,
        ..Tuple::default()
    };
    t.src[..4].copy_from_slice(&[10, 0, 0, src]);
    t.dst[..4].copy_from_slice(&[10, 0, 0, dst]);
    if let Some((s, d)) = ports {
        (t.sport, t.dport) = (s, d);
        t.flags = TUPLE_PORTS;
    }
    t
}

#[cfg(test)]
mod tests {
    use tracer_ebpf::{FAMILY_NONE, TUPLE_FRAG_REST};

    use super::*;

    fn v4(src: [u8; 4], dst: [u8; 4], proto: u8, ports: Option<(u16, u16)>) -> Tuple {
        let mut t = Tuple {
            family: FAMILY_IPV4,
            proto,
            ..Tuple::default()
        };
        t.src[..4].copy_from_slice(&src);
        t.dst[..4].copy_from_slice(&dst);
        if let Some((s, d)) = ports {
            t.sport = s;
            t.dport = d;
            t.flags |= TUPLE_PORTS;
        }
        t
    }

    #[test]
    fn ipv4_udp_endpoints() {
        let e = Endpoints::of(&v4([10, 0, 0, 1], [10, 0, 0, 2], 17, Some((4000, 4789))));
        assert_eq!(e.proto.to_string(), "udp");
        assert_eq!(e.src_text().to_string(), "10.0.0.1:4000");
        assert_eq!(e.dst_text().to_string(), "10.0.0.2:4789");
    }

    #[test]
    fn ports_absent_without_the_flag_even_if_nonzero() {
        let mut t = v4([1, 1, 1, 1], [2, 2, 2, 2], 17, None);
        t.sport = 99;
        t.flags |= TUPLE_FRAG_REST;
        let e = Endpoints::of(&t);
        assert_eq!((e.sport, e.dport), (None, None));
        assert_eq!(e.src_text().to_string(), "1.1.1.1");
    }

    #[test]
    fn ipv6_and_unknown_protocols() {
        let t = Tuple {
            family: FAMILY_IPV6,
            proto: 47,
            src: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            dst: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            sport: 1,
            dport: 2,
            flags: TUPLE_PORTS,
            _pad: 0,
        };
        let e = Endpoints::of(&t);
        assert_eq!(e.proto, Proto::Number(47));
        assert_eq!(e.src_text().to_string(), "[fd00::1]:1");
        assert_eq!(e.dst.map(|a| a.to_string()).as_deref(), Some("fd00::2"));
    }

    #[test]
    fn vni_and_inner_only_for_vxlan() {
        let mut id = FlowId::default();
        assert_eq!(vni(&id), None);
        assert!(inner(&id).is_none());
        id.vni = VNI_PRESENT | 4242;
        id.inner = v4([172, 16, 0, 1], [172, 16, 0, 2], 1, None);
        assert_eq!(vni(&id), Some(4242));
        assert_eq!(inner(&id).unwrap().proto.to_string(), "icmp");
        id.inner.family = FAMILY_NONE;
        assert!(inner(&id).is_none());
    }
}
