//! Plain text: one line per row, `key=value` fields, for pipes and logs.

use std::io::{self, Write};

use tracer_ebpf::FlowId;

use super::{
    DropRow, Endpoints, FlowRow, FragRow, IcmpRow, MtuRow, PathRow, Report, RuleRow, Scope, Sink,
    VerdictRow, inner, vni,
};
use crate::{collectors::drops::reasons::hint, rules::Family};

/// What the `benign` row is.
pub const BENIGN_HINT: &str = "known-benign drops and IPv6 link-local control traffic, \
     summarised; --show-benign shows them";

pub struct TextSink<W: Write> {
    out: W,
}

impl<W: Write> TextSink<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }
}

/// `udp 10.0.0.1:5000 > 10.0.0.2:4789 vni=42 inner=[tcp 10.1.0.1:1 > 10.1.0.2:80]`
pub fn packet(id: &FlowId) -> String {
    let outer = Endpoints::of(&id.outer);
    let mut s = format!("{} {} > {}", outer.proto, outer.src_str(), outer.dst_str());
    if let Some(vni) = vni(id) {
        s.push_str(&format!(" vni={vni}"));
    }
    if let Some(i) = inner(id) {
        s.push_str(&format!(
            " inner=[{} {} > {}]",
            i.proto,
            i.src_str(),
            i.dst_str()
        ));
    }
    s
}

pub fn flow_line(scope: Scope, row: &FlowRow) -> String {
    let mut line = format!(
        "flow {} netns={} iface={} dir={} {}",
        scope.as_str(),
        row.netns,
        row.iface,
        row.dir,
        packet(&row.id)
    );
    let c = &row.counts;
    line.push_str(&format!(
        " packets={} bytes={} frags_first={} frags_rest={} df={} max_len={}",
        c.packets, c.bytes, c.frags_first, c.frags_rest, c.df, c.max_len
    ));
    line
}

pub fn drop_line(scope: Scope, row: &DropRow) -> String {
    let mut line = format!(
        "drop {} netns={} iface={} {} reason={} location={} count={} bytes={}",
        scope.as_str(),
        row.netns,
        row.iface.as_deref().unwrap_or("-"),
        packet(&row.id),
        row.reason.as_deref().unwrap_or("-"),
        row.location,
        row.counts.packets,
        row.counts.bytes,
    );
    if let Some(f) = row.fragment {
        line.push_str(&format!(" fragment={f}"));
    }
    if let Some(h) = hint(row.reason.as_deref(), &row.location) {
        line.push_str(&format!(" hint=\"{h}\""));
    }
    line
}

pub fn icmp_line(scope: Scope, row: &IcmpRow) -> String {
    let mut line = format!(
        "icmp {} netns={} iface={} dir={} kind={}",
        scope.as_str(),
        row.netns,
        row.iface.as_deref().unwrap_or("-"),
        row.dir,
        row.kind,
    );
    if let Some(mtu) = row.mtu {
        line.push_str(&format!(" mtu={mtu}"));
    }
    line.push_str(&format!(" about=[{}] count={}", packet(&row.id), row.count));
    line
}

pub fn frag_line(scope: Scope, row: &FragRow) -> String {
    format!(
        "frag {} netns={} iface={} dir={} {} datagrams={} reassembled={} datagrams_lost={} \
         fragments={} fragments_lost={} reassembly_failed={}",
        scope.as_str(),
        row.netns,
        row.iface,
        row.dir,
        packet(&row.id),
        row.datagrams,
        row.reassembled,
        row.datagrams_lost,
        row.fragments,
        row.fragments_lost,
        row.reassembly_failed,
    )
}

pub fn verdict_line(scope: Scope, row: &VerdictRow) -> String {
    let mut line = format!(
        "verdict {} netns={} iface={} hook={} family={} table={} {} accepted={} dropped={}",
        scope.as_str(),
        row.netns,
        row.iface.as_deref().unwrap_or("-"),
        row.hook,
        row.family,
        row.table,
        packet(&row.id),
        row.counts.accepted(),
        row.counts.dropped(),
    );
    if let Some(rule) = &row.rule {
        line.push_str(&format!(" rule=\"{rule}\""));
    }
    line
}

pub fn mtu_line(scope: Scope, row: &MtuRow) -> String {
    let f = &row.finding;
    let devices: Vec<String> = f
        .devices
        .iter()
        .map(|d| format!("{}/{}:{}", d.netns, d.name, d.mtu))
        .collect();
    let mut line = format!(
        "mtu {} kind={} limit={} devices={}",
        scope.as_str(),
        f.kind.as_str(),
        f.limit,
        devices.join(",")
    );
    if let Some(o) = f.overhead {
        line.push_str(&format!(" overhead={o}"));
    }
    line.push_str(&format!(
        " finding=\"{}\" flows={}",
        f.finding,
        row.flows.len()
    ));
    for fl in &row.flows {
        line.push_str(&format!(
            " [{} {} {} max_len={}]",
            fl.netns,
            fl.iface,
            packet(&fl.id),
            fl.counts.max_len
        ));
    }
    line
}

pub fn rule_line(scope: Scope, row: &RuleRow) -> String {
    let mut line = format!(
        "rule {} netns={} table={} {} chain={} {} verdict={} count={}",
        scope.as_str(),
        row.netns,
        row.family.map_or("?", Family::as_str),
        row.table,
        row.chain,
        packet(&row.id),
        row.verdict,
        row.count
    );
    match (&row.rule, row.handle) {
        (Some(rule), _) => line.push_str(&format!(" rule=\"{rule}\"")),
        (None, Some(h)) => line.push_str(&format!(" handle={h}")),
        (None, None) => line.push_str(" rule=policy"),
    }
    line
}

/// `path total netns=c1 udp a:1 > b:2 vni=42 sent=5 arrived=0 lost=5 hops=[c1/eth0 out 5; ...] lost=[...]`
pub fn path_line(scope: Scope, row: &PathRow) -> String {
    let mut line = format!(
        "path {} netns={} {} sent={} arrived={} lost={}",
        scope.as_str(),
        row.origin().0,
        packet(&row.id),
        row.sent(),
        row.arrived(),
        row.lost_total()
    );
    let hops: Vec<String> = row
        .hops
        .iter()
        .map(|h| {
            let vxlan = if h.vxlan { " vxlan" } else { "" };
            format!("{}{vxlan} {}", h.label(), h.counts.packets)
        })
        .collect();
    line.push_str(&format!(" hops=[{}]", hops.join("; ")));
    for l in &row.lost {
        line.push_str(&format!(" lost=[{}: {}", row.place(l), l.count));
        if let Some(r) = &l.reason {
            line.push_str(&format!(" reason={r}"));
        }
        if let Some(loc) = &l.location {
            line.push_str(&format!(" location={loc}"));
        }
        if let Some(h) = l.hook {
            line.push_str(&format!(" hook={h}"));
        }
        if let Some(r) = &l.rule {
            line.push_str(&format!(" rule=\"{r}\""));
        }
        if let Some(m) = &l.mtu {
            line.push_str(&format!(" mtu=\"{m}\""));
        }
        if let Some(i) = &l.icmp {
            line.push_str(&format!(" icmp=\"{i}\""));
        }
        line.push(']');
    }
    for i in &row.incomplete {
        line.push_str(&format!(" incomplete=\"{i}\""));
    }
    for n in &row.notes {
        line.push_str(&format!(" note=\"{n}\""));
    }
    line
}

impl<W: Write> Sink for TextSink<W> {
    fn report(&mut self, r: &Report) -> io::Result<()> {
        let orig = |id: &FlowId| match crate::analysis::nat::orig(&r.nat, id) {
            Some(a) => format!(" orig={a}"),
            None => String::new(),
        };
        for row in &r.flows {
            writeln!(self.out, "{}{}", flow_line(r.scope, row), orig(&row.id))?;
        }
        for row in &r.drops {
            writeln!(self.out, "{}{}", drop_line(r.scope, row), orig(&row.id))?;
        }
        for row in &r.verdicts {
            writeln!(self.out, "{}{}", verdict_line(r.scope, row), orig(&row.id))?;
        }
        for row in &r.icmps {
            writeln!(self.out, "{}", icmp_line(r.scope, row))?;
        }
        for row in &r.frags {
            writeln!(self.out, "{}", frag_line(r.scope, row))?;
        }
        for row in &r.mtu {
            writeln!(self.out, "{}", mtu_line(r.scope, row))?;
        }
        for row in &r.rules {
            writeln!(self.out, "{}", rule_line(r.scope, row))?;
        }
        for row in &r.paths {
            writeln!(self.out, "{}{}", path_line(r.scope, row), orig(&row.id))?;
        }
        if let Some(b) = &r.benign {
            writeln!(
                self.out,
                "benign {} drops={} echo_replies={} empty_queue_purges={} ipv6_link_local={} \
                 rows_hidden={} hint=\"{}\"",
                r.scope.as_str(),
                b.drops(),
                b.echo_replies,
                b.empty_queue_purges,
                b.ipv6_link_local,
                b.rows_hidden,
                BENIGN_HINT
            )?;
        }
        if r.scope == Scope::Total || (r.scope == Scope::Interval && r.health.any()) {
            let h = &r.health;
            writeln!(
                self.out,
                "health {} seconds={:.3} flow_map_full={} drop_map_full={} drop_events_lost={} \
                 verdict_map_full={} icmp_map_full={} frag_unmatched={} explain_events_lost={} \
                 capture_rate_limited={} capture_lost={} attach_failed={}",
                r.scope.as_str(),
                r.elapsed.as_secs_f64(),
                h.flow_map_full,
                h.drop_map_full,
                h.drop_events_lost,
                h.verdict_map_full,
                h.icmp_map_full,
                h.frag_unmatched,
                h.explain_events_lost,
                h.capture_rate_limited,
                h.capture_lost,
                h.attach_failed,
            )?;
        }
        self.out.flush()
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
             verdict_map_full=0 icmp_map_full=0 frag_unmatched=0 explain_events_lost=0 \
             capture_rate_limited=0 capture_lost=0 attach_failed=0\n"
        );
    }
}
