//! Plain text: one line per row, `key=value` fields, for pipes and logs.

use std::{
    fmt::{self, Display},
    io::{self, Write},
};

use tracer_ebpf::FlowId;

use super::{
    Chunked, DropRow, Endpoints, FlowRow, FragRow, IcmpRow, MtuRow, PathRow, Report, RuleRow,
    Scope, Sink, VerdictRow, inner, vni,
};
use crate::{collectors::drops::reasons::hint, rules::Family};

/// What the `benign` row is.
pub const BENIGN_HINT: &str = "known-benign drops and IPv6 link-local control traffic, \
     summarised; --show-benign shows them";

pub struct TextSink<W: Write> {
    out: Chunked<W>,
}

impl<W: Write> TextSink<W> {
    pub fn new(out: W) -> Self {
        Self {
            out: Chunked::new(out),
        }
    }

    fn line(&mut self, line: impl Display) -> io::Result<()> {
        writeln!(self.out.buf, "{line}")?;
        self.out.spill()
    }
}

// Each line is a `Display` written straight into the sink's buffer: no
// `String` per line or per field. `*_line(..).to_string()` gives the text.

/// `udp 10.0.0.1:5000 > 10.0.0.2:4789 vni=42 inner=[tcp 10.1.0.1:1 > 10.1.0.2:80]`
pub fn packet(id: &FlowId) -> String {
    packet_text(id).to_string()
}

fn packet_text(id: &FlowId) -> impl Display + '_ {
    fmt::from_fn(move |f| {
        write!(f, "{}", Endpoints::of(&id.outer))?;
        if let Some(vni) = vni(id) {
            write!(f, " vni={vni}")?;
        }
        if let Some(i) = inner(id) {
            write!(f, " inner=[{i}]")?;
        }
        Ok(())
    })
}

/// A value that may hold spaces, in double quotes: `"` and `\` in it are
/// escaped, so that a rule's own quotes (an iptables comment, say) do not
/// end the field early for whoever splits the line.
struct Quoted<'a>(&'a str);

impl Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        let mut rest = self.0;
        while let Some(at) = rest.find(['"', '\\']) {
            f.write_str(&rest[..at])?;
            f.write_str("\\")?;
            // The quote or backslash itself, after its escape.
            f.write_str(&rest[at..at + 1])?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)?;
        f.write_str("\"")
    }
}

/// `s` or `-` where there is none.
fn or_dash(s: Option<&str>) -> &str {
    s.unwrap_or("-")
}

pub fn flow_line(scope: Scope, row: &FlowRow) -> impl Display + '_ {
    fmt::from_fn(move |f| {
        let c = &row.counts;
        write!(
            f,
            "flow {} netns={} iface={} dir={} {} packets={} bytes={} frags_first={} \
             frags_rest={} df={} max_len={}",
            scope.as_str(),
            row.netns,
            row.iface,
            row.dir,
            packet_text(&row.id),
            c.packets,
            c.bytes,
            c.frags_first,
            c.frags_rest,
            c.df,
            c.max_len
        )
    })
}

pub fn drop_line(scope: Scope, row: &DropRow) -> impl Display + '_ {
    fmt::from_fn(move |f| {
        write!(
            f,
            "drop {} netns={} iface={} {} reason={} location={} count={} bytes={}",
            scope.as_str(),
            row.netns,
            or_dash(row.iface.as_deref()),
            packet_text(&row.id),
            or_dash(row.reason.as_deref()),
            row.location,
            row.counts.packets,
            row.counts.bytes,
        )?;
        if let Some(fr) = row.fragment {
            write!(f, " fragment={fr}")?;
        }
        if let Some(h) = hint(row.reason.as_deref(), &row.location) {
            write!(f, " hint={}", Quoted(h))?;
        }
        Ok(())
    })
}

pub fn icmp_line(scope: Scope, row: &IcmpRow) -> impl Display + '_ {
    fmt::from_fn(move |f| {
        write!(
            f,
            "icmp {} netns={} iface={} dir={} kind={}",
            scope.as_str(),
            row.netns,
            or_dash(row.iface.as_deref()),
            row.dir,
            row.kind,
        )?;
        if let Some(mtu) = row.mtu {
            write!(f, " mtu={mtu}")?;
        }
        write!(f, " about=[{}] count={}", packet_text(&row.id), row.count)
    })
}

pub fn frag_line(scope: Scope, row: &FragRow) -> impl Display + '_ {
    fmt::from_fn(move |f| {
        write!(
            f,
            "frag {} netns={} iface={} dir={} {} datagrams={} reassembled={} datagrams_lost={} \
             fragments={} fragments_lost={} reassembly_failed={}",
            scope.as_str(),
            row.netns,
            row.iface,
            row.dir,
            packet_text(&row.id),
            row.datagrams,
            row.reassembled,
            row.datagrams_lost,
            row.fragments,
            row.fragments_lost,
            row.reassembly_failed,
        )
    })
}

pub fn verdict_line(scope: Scope, row: &VerdictRow) -> impl Display + '_ {
    fmt::from_fn(move |f| {
        write!(
            f,
            "verdict {} netns={} iface={} hook={} family={} table={} {} accepted={} dropped={}",
            scope.as_str(),
            row.netns,
            or_dash(row.iface.as_deref()),
            row.hook,
            row.family,
            row.table,
            packet_text(&row.id),
            row.counts.accepted(),
            row.counts.dropped(),
        )?;
        if let Some(rule) = &row.rule {
            write!(f, " rule={}", Quoted(rule))?;
        }
        Ok(())
    })
}

pub fn mtu_line(scope: Scope, row: &MtuRow) -> impl Display + '_ {
    fmt::from_fn(move |f| {
        let m = &row.finding;
        write!(
            f,
            "mtu {} kind={} limit={} devices=",
            scope.as_str(),
            m.kind.as_str(),
            m.limit,
        )?;
        for (i, d) in m.devices.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{}/{}:{}", d.netns, d.name, d.mtu)?;
        }
        if let Some(o) = m.overhead {
            write!(f, " overhead={o}")?;
        }
        write!(
            f,
            " finding={} flows={}",
            Quoted(&m.finding),
            row.flows.len()
        )?;
        for fl in &row.flows {
            write!(
                f,
                " [{} {} {} max_len={}]",
                fl.netns,
                fl.iface,
                packet_text(&fl.id),
                fl.counts.max_len
            )?;
        }
        Ok(())
    })
}

pub fn rule_line(scope: Scope, row: &RuleRow) -> impl Display + '_ {
    fmt::from_fn(move |f| {
        write!(
            f,
            "rule {} netns={} table={} {} chain={} {} verdict={} count={}",
            scope.as_str(),
            row.netns,
            row.family.map_or("?", Family::as_str),
            row.table,
            row.chain,
            packet_text(&row.id),
            row.verdict,
            row.count
        )?;
        match (&row.rule, row.handle) {
            (Some(rule), _) => write!(f, " rule={}", Quoted(rule)),
            (None, Some(h)) => write!(f, " handle={h}"),
            (None, None) => f.write_str(" rule=policy"),
        }
    })
}

/// `path total netns=c1 udp a:1 > b:2 vni=42 sent=5 arrived=0 lost=5 hops=[c1/eth0 out 5; ...] lost=[...]`
pub fn path_line(scope: Scope, row: &PathRow) -> impl Display + '_ {
    fmt::from_fn(move |f| {
        write!(
            f,
            "path {} netns={} {} sent={} arrived={} lost={} hops=[",
            scope.as_str(),
            row.origin().0,
            packet_text(&row.id),
            row.sent(),
            row.arrived(),
            row.lost_total()
        )?;
        for (i, h) in row.hops.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            let vxlan = if h.vxlan { " vxlan" } else { "" };
            write!(f, "{sep}{}{vxlan} {}", h.label_text(), h.counts.packets)?;
        }
        f.write_str("]")?;
        for l in &row.lost {
            write!(f, " lost=[{}: {}", row.place_text(l), l.count)?;
            if let Some(r) = &l.reason {
                write!(f, " reason={r}")?;
            }
            if let Some(loc) = &l.location {
                write!(f, " location={loc}")?;
            }
            if let Some(h) = l.hook {
                write!(f, " hook={h}")?;
            }
            if let Some(r) = &l.rule {
                write!(f, " rule={}", Quoted(r))?;
            }
            if let Some(m) = &l.mtu {
                write!(f, " mtu={}", Quoted(m))?;
            }
            if let Some(i) = &l.icmp {
                write!(f, " icmp={}", Quoted(i))?;
            }
            f.write_str("]")?;
        }
        for i in &row.incomplete {
            write!(f, " incomplete={}", Quoted(i))?;
        }
        for n in &row.notes {
            write!(f, " note={}", Quoted(n))?;
        }
        Ok(())
    })
}

/// ` orig=203.0.113.1:80` for a flow after a destination NAT, else nothing.
fn orig<'a>(r: &'a Report, id: &'a FlowId) -> impl Display + 'a {
    fmt::from_fn(move |f| match crate::analysis::nat::orig(&r.nat, id) {
        Some(a) => write!(f, " orig={a}"),
        None => Ok(()),
    })
}

impl<W: Write> Sink for TextSink<W> {
    fn report(&mut self, r: &Report) -> io::Result<()> {
        for row in &r.flows {
            self.line(format_args!(
                "{}{}",
                flow_line(r.scope, row),
                orig(r, &row.id)
            ))?;
        }
        for row in &r.drops {
            self.line(format_args!(
                "{}{}",
                drop_line(r.scope, row),
                orig(r, &row.id)
            ))?;
        }
        for row in &r.verdicts {
            self.line(format_args!(
                "{}{}",
                verdict_line(r.scope, row),
                orig(r, &row.id)
            ))?;
        }
        for row in &r.icmps {
            self.line(icmp_line(r.scope, row))?;
        }
        for row in &r.frags {
            self.line(frag_line(r.scope, row))?;
        }
        for row in &r.mtu {
            self.line(mtu_line(r.scope, row))?;
        }
        for row in &r.rules {
            self.line(rule_line(r.scope, row))?;
        }
        for row in &r.paths {
            self.line(format_args!(
                "{}{}",
                path_line(r.scope, row),
                orig(r, &row.id)
            ))?;
        }
        if let Some(b) = &r.benign {
            self.line(format_args!(
                "benign {} drops={} echo_replies={} empty_queue_purges={} ipv6_link_local={} \
                 rows_hidden={} hint={}",
                r.scope.as_str(),
                b.drops(),
                b.echo_replies,
                b.empty_queue_purges,
                b.ipv6_link_local,
                b.rows_hidden,
                Quoted(BENIGN_HINT)
            ))?;
        }
        if r.scope == Scope::Total || (r.scope == Scope::Interval && r.health.any()) {
            let fields = fmt::from_fn(|f| {
                for (name, n) in r.health.fields() {
                    write!(f, " {name}={n}")?;
                }
                Ok(())
            });
            self.line(format_args!(
                "health {} seconds={:.3}{fields}",
                r.scope.as_str(),
                r.elapsed.as_secs_f64(),
            ))?;
        }
        self.out.finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tracer_ebpf::{FAMILY_IPV4, FlowId, TUPLE_PORTS, Tuple, VNI_PRESENT};

    use super::*;
    use crate::model::Direction;
    use crate::{collectors::drops::DropCounts, collectors::flows::Counts, output::Health};

    #[test]
    fn one_line_per_flow_then_health() {
        let mut outer = Tuple {
            family: FAMILY_IPV4,
            proto: 17,
            sport: 5000,
            dport: 4789,
            flags: TUPLE_PORTS,
            ..Tuple::default()
        };
        outer.src[..4].copy_from_slice(&[192, 168, 0, 1]);
        outer.dst[..4].copy_from_slice(&[192, 168, 0, 2]);
        let mut inner = Tuple {
            family: FAMILY_IPV4,
            proto: 6,
            sport: 1,
            dport: 80,
            flags: TUPLE_PORTS,
            ..Tuple::default()
        };
        inner.src[..4].copy_from_slice(&[10, 0, 0, 1]);
        inner.dst[..4].copy_from_slice(&[10, 0, 0, 2]);
        let report = Report {
            scope: Scope::Total,
            elapsed: Duration::from_millis(1500),
            flows: vec![FlowRow {
                netns: "a".into(),
                iface: "eth0".into(),
                dir: Direction::Egress,
                id: FlowId {
                    outer,
                    inner,
                    vni: VNI_PRESENT | 7,
                    _pad: 0,
                },
                counts: Counts {
                    packets: 2,
                    bytes: 200,
                    max_len: 100,
                    ..Counts::default()
                },
            }],
            drops: vec![DropRow {
                netns: "b".into(),
                iface: None,
                id: FlowId::default(),
                reason: Some("NO_SOCKET".into()),
                location: "udp_queue_rcv+0x1".into(),
                fragment: None,
                counts: DropCounts {
                    packets: 3,
                    bytes: 90,
                },
            }],
            health: Health::default(),
            ..Report::default()
        };
        let mut out = Vec::new();
        TextSink::new(&mut out).report(&report).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "flow total netns=a iface=eth0 dir=egress udp 192.168.0.1:5000 > 192.168.0.2:4789 \
             vni=7 inner=[tcp 10.0.0.1:1 > 10.0.0.2:80] packets=2 bytes=200 frags_first=0 \
             frags_rest=0 df=0 max_len=100\n\
             drop total netns=b iface=- 0 - > - reason=NO_SOCKET location=udp_queue_rcv+0x1 \
             count=3 bytes=90 hint=\"nothing listens on the destination port\"\n\
             health total seconds=1.500 flow_map_full=0 drop_map_full=0 drop_events_lost=0 \
             verdict_map_full=0 icmp_map_full=0 device_map_full=0 frag_unmatched=0 explain_events_lost=0 \
             capture_rate_limited=0 capture_lost=0 attach_failed=0 totals_full=0\n"
        );
    }

    /// One row of every kind the sink writes, IPv6 and NAT included: the
    /// text is what users grep, so it is held whole.
    #[test]
    fn every_row_kind_as_one_line() {
        use crate::analysis::{
            benign::BenignRow,
            paths::{Hop, Lost},
        };
        use crate::collectors::verdicts::VerdictCounts;
        use crate::model::{Hook, IpFamily, Table};
        use crate::output::{FragRow, IcmpRow, PathRow, RuleRow, VerdictRow};
        use tracer_ebpf::FAMILY_IPV6;

        let v4 = crate::output::test_tuple;
        let mut v6 = Tuple {
            family: FAMILY_IPV6,
            proto: 58,
            ..Tuple::default()
        };
        v6.src = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        v6.dst = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let mut v6_ports = v6;
        (
            v6_ports.proto,
            v6_ports.sport,
            v6_ports.dport,
            v6_ports.flags,
        ) = (6, 443, 50000, TUPLE_PORTS);
        let vxlan = FlowId {
            outer: v4(1, 2, 17, Some((40000, 4789))),
            inner: v4(5, 6, 1, None),
            vni: VNI_PRESENT | 42,
            _pad: 0,
        };
        let natted = FlowId {
            outer: v4(7, 8, 6, Some((33000, 8080))),
            ..FlowId::default()
        };
        let hop = |ns: &str, iface: &str, dir, vxlan, packets| Hop {
            netns: ns.into(),
            iface: iface.into(),
            dir,
            vxlan,
            counts: Counts {
                packets,
                ..Counts::default()
            },
        };
        let mut nat = crate::analysis::nat::Ties::default();
        nat.insert(
            crate::analysis::nat::key(&natted).unwrap(),
            "203.0.113.9:80".parse().unwrap(),
        );
        let report = Report {
            scope: Scope::Interval,
            elapsed: Duration::from_millis(1000),
            flows: vec![
                FlowRow {
                    netns: "c1".into(),
                    iface: "eth0".into(),
                    dir: Direction::Ingress,
                    id: natted,
                    counts: Counts {
                        packets: 3,
                        bytes: 180,
                        frags_first: 1,
                        frags_rest: 2,
                        df: 3,
                        max_len: 60,
                    },
                },
                FlowRow {
                    netns: "c2".into(),
                    iface: "eth0".into(),
                    dir: Direction::Sent,
                    id: FlowId {
                        outer: v6_ports,
                        ..FlowId::default()
                    },
                    counts: Counts::default(),
                },
            ],
            drops: vec![DropRow {
                netns: "hb".into(),
                iface: Some("ul0".into()),
                id: vxlan,
                reason: Some("NETFILTER_DROP".into()),
                location: "nf_hook_slow+0x9a".into(),
                fragment: Some("rest"),
                counts: DropCounts {
                    packets: 5,
                    bytes: 740,
                },
            }],
            verdicts: vec![VerdictRow {
                netns: "hb".into(),
                iface: None,
                family: IpFamily::Ipv4,
                hook: Hook::Input,
                table: Table::Filter,
                id: natted,
                counts: VerdictCounts {
                    entered: 10,
                    left: 4,
                    unleft: 0,
                },
                rule: Some(r#"-A INPUT -p tcp -m comment --comment "no \ web" -j DROP"#.into()),
            }],
            icmps: vec![IcmpRow {
                netns: "ha".into(),
                iface: Some("vx0".into()),
                dir: Direction::Ingress,
                kind: "frag_needed",
                icmp_type: 3,
                icmp_code: 4,
                mtu: Some(1450),
                id: FlowId {
                    outer: v6,
                    ..FlowId::default()
                },
                count: 2,
            }],
            frags: vec![FragRow {
                netns: "ha".into(),
                iface: "ul0".into(),
                dir: Direction::Egress,
                id: vxlan,
                datagrams: 10,
                reassembled: 1,
                datagrams_lost: 9,
                fragments: 20,
                fragments_lost: 11,
                reassembly_failed: 9,
            }],
            rules: vec![
                RuleRow {
                    netns: "hb".into(),
                    id: natted,
                    family: Some(Family::Ipv4),
                    table: "filter".into(),
                    chain: "INPUT".into(),
                    hook: Some(Hook::Input),
                    handle: Some(12),
                    rule: Some("tcp dport 8080 drop".into()),
                    verdict: "drop",
                    count: 4,
                },
                RuleRow {
                    netns: "hb".into(),
                    id: natted,
                    family: None,
                    table: "filter".into(),
                    chain: "FORWARD".into(),
                    hook: None,
                    handle: Some(13),
                    rule: None,
                    verdict: "accept",
                    count: 1,
                },
                RuleRow {
                    netns: "hb".into(),
                    id: natted,
                    family: Some(Family::Inet),
                    table: "t".into(),
                    chain: "c".into(),
                    hook: None,
                    handle: None,
                    rule: None,
                    verdict: "drop",
                    count: 2,
                },
            ],
            paths: vec![
                PathRow {
                    id: natted,
                    hops: vec![
                        hop("c1", "eth0", Direction::Egress, false, 7),
                        hop("ha", "ul0", Direction::Egress, true, 7),
                        hop("hb", "ul0", Direction::Ingress, true, 5),
                    ],
                    lost: vec![
                        Lost {
                            after: Some(1),
                            netns: "ha".into(),
                            iface: Some("ul0".into()),
                            count: 2,
                            reason: Some("FRAG_REASM_TIMEOUT".into()),
                            mtu: Some("fragments over 1450".into()),
                            icmp: Some("frag_needed mtu=1450".into()),
                            ..Lost::default()
                        },
                        Lost {
                            after: Some(2),
                            netns: "hb".into(),
                            iface: Some("ul0".into()),
                            count: 5,
                            reason: Some("NETFILTER_DROP".into()),
                            location: Some("nft_do_chain+0x3e8".into()),
                            hook: Some(Hook::Input),
                            rule: Some("-A INPUT -j DROP".into()),
                            ..Lost::default()
                        },
                    ],
                    incomplete: vec!["after hb/ul0 in: not traced".into()],
                    notes: vec!["a note".into()],
                    carriers: vec![],
                },
                PathRow {
                    id: vxlan,
                    hops: vec![],
                    lost: vec![Lost {
                        after: None,
                        netns: "hb".into(),
                        iface: None,
                        count: 1,
                        ..Lost::default()
                    }],
                    incomplete: vec![],
                    notes: vec![],
                    carriers: vec![],
                },
            ],
            benign: Some(BenignRow {
                echo_replies: 1,
                empty_queue_purges: 2,
                ipv6_link_local: 3,
                rows_hidden: 4,
            }),
            health: Health {
                flow_map_full: 1,
                ..Health::default()
            },
            nat: nat.into(),
            ..Report::default()
        };
        let mut out = Vec::new();
        TextSink::new(&mut out).report(&report).unwrap();
        let text = String::from_utf8(out).unwrap();
        let expected = [
            "flow interval netns=c1 iface=eth0 dir=ingress tcp 10.0.0.7:33000 > 10.0.0.8:8080 packets=3 bytes=180 frags_first=1 frags_rest=2 df=3 max_len=60 orig=203.0.113.9:80",
            "flow interval netns=c2 iface=eth0 dir=sent tcp [fd00::1]:443 > [fd00::2]:50000 packets=0 bytes=0 frags_first=0 frags_rest=0 df=0 max_len=0",
            "drop interval netns=hb iface=ul0 udp 10.0.0.1:40000 > 10.0.0.2:4789 vni=42 inner=[icmp 10.0.0.5 > 10.0.0.6] reason=NETFILTER_DROP location=nf_hook_slow+0x9a count=5 bytes=740 fragment=rest hint=\"a netfilter (iptables/nftables) rule dropped it\"",
            "verdict interval netns=hb iface=- hook=input family=ipv4 table=filter tcp 10.0.0.7:33000 > 10.0.0.8:8080 accepted=4 dropped=6 rule=\"-A INPUT -p tcp -m comment --comment \\\"no \\\\ web\\\" -j DROP\" orig=203.0.113.9:80",
            "icmp interval netns=ha iface=vx0 dir=ingress kind=frag_needed mtu=1450 about=[icmpv6 fd00::1 > fd00::2] count=2",
            "frag interval netns=ha iface=ul0 dir=egress udp 10.0.0.1:40000 > 10.0.0.2:4789 vni=42 inner=[icmp 10.0.0.5 > 10.0.0.6] datagrams=10 reassembled=1 datagrams_lost=9 fragments=20 fragments_lost=11 reassembly_failed=9",
            "rule interval netns=hb table=ip filter chain=INPUT tcp 10.0.0.7:33000 > 10.0.0.8:8080 verdict=drop count=4 rule=\"tcp dport 8080 drop\"",
            "rule interval netns=hb table=? filter chain=FORWARD tcp 10.0.0.7:33000 > 10.0.0.8:8080 verdict=accept count=1 handle=13",
            "rule interval netns=hb table=inet t chain=c tcp 10.0.0.7:33000 > 10.0.0.8:8080 verdict=drop count=2 rule=policy",
            "path interval netns=c1 tcp 10.0.0.7:33000 > 10.0.0.8:8080 sent=7 arrived=0 lost=7 hops=[c1/eth0 out 7; ha/ul0 out vxlan 7; hb/ul0 in vxlan 5] lost=[after ha/ul0 out: 2 reason=FRAG_REASM_TIMEOUT mtu=\"fragments over 1450\" icmp=\"frag_needed mtu=1450\"] lost=[after hb/ul0 in: 5 reason=NETFILTER_DROP location=nft_do_chain+0x3e8 hook=input rule=\"-A INPUT -j DROP\"] incomplete=\"after hb/ul0 in: not traced\" note=\"a note\" orig=203.0.113.9:80",
            "path interval netns=hb udp 10.0.0.1:40000 > 10.0.0.2:4789 vni=42 inner=[icmp 10.0.0.5 > 10.0.0.6] sent=0 arrived=0 lost=1 hops=[] lost=[in hb: 1]",
            "benign interval drops=6 echo_replies=1 empty_queue_purges=2 ipv6_link_local=3 rows_hidden=4 hint=\"known-benign drops and IPv6 link-local control traffic, summarised; --show-benign shows them\"",
            "health interval seconds=1.000 flow_map_full=1 drop_map_full=0 drop_events_lost=0 verdict_map_full=0 icmp_map_full=0 device_map_full=0 frag_unmatched=0 explain_events_lost=0 capture_rate_limited=0 capture_lost=0 attach_failed=0 totals_full=0",
        ];
        assert_eq!(text.lines().collect::<Vec<_>>(), expected, "{text}");
    }
}
