//! The filter language: parsing, errors at the right column, and matching
//! rows and paths on outer and inner headers.

use tracer_ebpf::{FAMILY_IPV4, FlowId, TUPLE_PORTS, Tuple, VNI_PRESENT};

use super::*;

fn tuple(src: [u8; 4], dst: [u8; 4], proto: u8, ports: (u16, u16)) -> Tuple {
    let mut t = Tuple {
        family: FAMILY_IPV4,
        proto,
        sport: ports.0,
        dport: ports.1,
        flags: TUPLE_PORTS,
        ..Tuple::default()
    };
    t.src[..4].copy_from_slice(&src);
    t.dst[..4].copy_from_slice(&dst);
    t
}

/// DNS from 10.0.0.1 to 10.0.0.2 inside VXLAN 4097 between 192.168.0.1 and .2.
fn dns_in_vxlan() -> FlowId {
    FlowId {
        outer: tuple([192, 168, 0, 1], [192, 168, 0, 2], 17, (40000, 4789)),
        inner: tuple([10, 0, 0, 1], [10, 0, 0, 2], 17, (33333, 53)),
        vni: VNI_PRESENT | 4097,
        _pad: 0,
    }
}

fn dns_plain() -> FlowId {
    FlowId {
        outer: dns_in_vxlan().inner,
        ..FlowId::default()
    }
}

fn m(expr: &str, id: &FlowId) -> bool {
    Filter::parse(expr)
        .unwrap_or_else(|e| panic!("{expr}: {e}"))
        .matches(&Facts::row(id, "c1", Some("eth0")).with_reason(Some("NETFILTER_DROP")))
}

#[test]
fn the_issues_examples() {
    let (vx, plain) = (dns_in_vxlan(), dns_plain());
    assert!(m("inner udp port 53", &vx));
    assert!(
        m("inner udp port 53", &plain),
        "a plain packet is its own inner"
    );
    assert!(!m("outer udp port 53", &vx));
    assert!(m("outer udp port 4789", &vx));
    assert!(!m("inner port 4789", &vx));
    assert!(m("host 10.0.0.2", &vx) && m("host 192.168.0.2", &vx));
    assert!(!m("host 10.0.0.3", &vx));
    assert!(m("vni 4097", &vx) && !m("vni 4097", &plain) && !m("vni 1", &vx));
    assert!(m("netns c1", &vx) && !m("netns c2", &vx));
}

#[test]
fn atoms_written_together_hold_on_one_header() {
    let vx = dns_in_vxlan();
    // Port 53 is on the inner header, 192.168.0.1 on the outer: not one header.
    assert!(!m("host 192.168.0.1 port 53", &vx));
    assert!(m("host 192.168.0.1 and port 53", &vx));
    assert!(m("src host 10.0.0.1 dst port 53", &vx));
    assert!(!m("dst host 10.0.0.1", &vx));
    assert!(m("src net 192.168.0.0/16", &vx) && !m("inner net 192.168.0.0/16", &vx));
    assert!(m("portrange 50-60", &vx) && !m("inner portrange 54-60", &vx));
}

#[test]
fn operators_precedence_and_spellings() {
    let vx = dns_in_vxlan();
    assert!(m("tcp or udp", &vx));
    assert!(!m("tcp || icmp", &vx));
    assert!(m("not tcp", &vx) && m("! tcp && udp", &vx));
    // and binds tighter than or.
    assert!(m("tcp and port 1 or vni 4097", &vx));
    assert!(!m("tcp and (port 1 or vni 4097)", &vx));
    assert!(m("ip and not ip6", &vx));
    assert!(m("proto 17 and proto udp", &vx));
    assert!(m("iface eth0 and reason netfilter_drop", &vx));
    assert!(m("reason SKB_DROP_REASON_NETFILTER_DROP", &vx));
    assert!(!m("reason NO_SOCKET", &vx));
}

fn error(expr: &str) -> String {
    Filter::parse(expr).unwrap_err().to_string()
}

#[test]
fn errors_point_at_the_bad_token() {
    assert_eq!(
        error("udp port x53"),
        "column 10: 'x53' is not a port (0-65535)"
    );
    assert_eq!(
        error("host 10.0.0.300"),
        "column 6: '10.0.0.300' is not an IPv4 or IPv6 address"
    );
    assert_eq!(
        error("udp port"),
        "column 9: expected a port after 'port' at the end"
    );
    assert_eq!(
        error("(udp or tcp"),
        "column 12: '(' at column 1 is never closed"
    );
    assert_eq!(error("udp )"), "column 5: ')' without a '(' before it");
    assert_eq!(
        error("inner vni 4"),
        "column 7: 'vni' after 'inner': expected host, net, port, portrange, src, dst or a protocol"
    );
    assert_eq!(
        error("net 10.0.0.0/33"),
        "column 14: '33' is not a prefix length (0-32)"
    );
    assert_eq!(
        error("vni 99999999"),
        "column 5: '99999999' is not a VNI (0-16777215)"
    );
    assert_eq!(
        error("portrange 9-1"),
        "column 11: '9-1': the range is empty"
    );
    assert_eq!(
        error("src 10.0.0.1"),
        "column 5: expected host, net, port or portrange after 'src', found '10.0.0.1'"
    );
    assert_eq!(
        error("and udp"),
        "column 1: 'and' needs an expression before it"
    );
    assert!(error("udp & tcp").starts_with("column 5: unknown word '&'"));
    assert!(error("frobnicate").starts_with("column 1: unknown word 'frobnicate'"));
    assert_eq!(error("   "), "column 1: empty filter");
}

#[test]
fn retain_keeps_matching_rows_and_paths() {
    use crate::{
        analysis::paths::{Hop, PathRow},
        collectors::flows::{Counts, FlowRow},
        model::Direction,
        output::Report,
    };
    let flow = |id: FlowId, ns: &str| FlowRow {
        netns: ns.into(),
        iface: "eth0".into(),
        dir: Direction::Egress,
        id,
        counts: Counts::default(),
    };
    let path = PathRow {
        id: FlowId {
            outer: dns_plain().outer,
            vni: VNI_PRESENT | 4097,
            ..FlowId::default()
        },
        hops: vec![Hop {
            netns: "ha".into(),
            iface: "ul0".into(),
            dir: Direction::Egress,
            vxlan: true,
            counts: Counts::default(),
        }],
        lost: vec![],
        incomplete: vec![],
        notes: vec![],
        carriers: vec![dns_in_vxlan().outer],
    };
    let mut r = Report {
        flows: vec![flow(dns_in_vxlan(), "ha"), flow(dns_plain(), "c1")],
        paths: vec![path],
        ..Report::default()
    };
    let f = Filter::parse("outer host 192.168.0.2").unwrap();
    f.retain(&mut r);
    assert_eq!(r.flows.len(), 1);
    assert_eq!(&*r.flows[0].netns, "ha");
    assert_eq!(
        r.paths.len(),
        1,
        "a path matches by the VXLAN packets that carried it"
    );
    assert!(
        Filter::parse("inner udp port 53 and netns ha vni 4097")
            .unwrap()
            .matches_path(&r.paths[0])
    );
    Filter::parse("netns c1").unwrap().retain(&mut r);
    assert!(r.flows.is_empty() && r.paths.is_empty());
}
