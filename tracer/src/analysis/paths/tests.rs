//! Paths built from rows and a topology made by hand.

use tracer_ebpf::{FAMILY_IPV4, TUPLE_PORTS, VNI_PRESENT};

use super::*;
use crate::{
    collectors::{drops::DropCounts, verdicts::VerdictCounts},
    model::{IpFamily, Table},
    topology::links::Link,
};

fn tuple(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Tuple {
    let mut t = Tuple {
        family: FAMILY_IPV4,
        proto: 17,
        sport,
        dport,
        flags: TUPLE_PORTS,
        ..Tuple::default()
    };
    t.src[..4].copy_from_slice(&src);
    t.dst[..4].copy_from_slice(&dst);
    t
}

fn container() -> Tuple {
    tuple([10, 1, 100, 1], [10, 1, 100, 2], 41000, 5001)
}

fn plain() -> FlowId {
    FlowId {
        outer: container(),
        ..FlowId::default()
    }
}

fn encapsulated() -> FlowId {
    FlowId {
        outer: tuple([10, 1, 1, 1], [10, 1, 1, 2], 36789, 4789),
        inner: container(),
        vni: VNI_PRESENT | 4242,
        _pad: 0,
    }
}

fn overlay() -> Links {
    Links::test_overlay()
}

fn flow(ns: &str, iface: &str, dir: Direction, id: FlowId, packets: u64) -> FlowRow {
    FlowRow {
        netns: ns.into(),
        iface: iface.into(),
        dir,
        id,
        counts: Counts {
            packets,
            bytes: packets * 100,
            max_len: 100,
            ..Counts::default()
        },
    }
}

use Direction::{Egress as Out, Ingress as In};

/// The hops of the overlay from c1 to c2, shuffled, with `to_c2` packets
/// past host B's underlay.
fn overlay_rows(sent: u64, to_c2: u64) -> Vec<FlowRow> {
    let mut rows = vec![
        flow("ha", "ul0", Out, encapsulated(), sent),
        flow("c2", "eth0", In, plain(), to_c2),
        flow("ha", "vc1", In, plain(), sent),
        flow("hb", "vx0", In, plain(), to_c2),
        flow("c1", "eth0", Out, plain(), sent),
        flow("hb", "ul0", In, encapsulated(), sent),
        flow("hb", "vc2", Out, plain(), to_c2),
        flow("ha", "vx0", Out, plain(), sent),
    ];
    rows.retain(|r| r.counts.packets > 0);
    rows
}

fn labels(p: &PathRow) -> Vec<String> {
    p.hops.iter().map(Hop::label).collect()
}

fn only(links: &Links, rows: Rows) -> PathRow {
    let mut all = paths(links, rows);
    assert_eq!(all.len(), 1, "{all:#?}");
    all.remove(0)
}

fn rows<'a>(flows: &'a [FlowRow], drops: &'a [DropRow], verdicts: &'a [VerdictRow]) -> Rows<'a> {
    Rows {
        flows,
        drops,
        verdicts,
        icmps: &[],
        mtu: &[],
    }
}

#[test]
fn healthy_overlay_in_the_order_of_travel() {
    let links = overlay();
    let flows = overlay_rows(50, 50);
    let p = only(&links, rows(&flows, &[], &[]));
    assert_eq!(
        labels(&p),
        [
            "c1/eth0 out",
            "ha/vc1 in",
            "ha/vx0 out",
            "ha/ul0 out",
            "hb/ul0 in",
            "hb/vx0 in",
            "hb/vc2 out",
            "c2/eth0 in"
        ]
    );
    assert_eq!(p.hops.iter().filter(|h| h.vxlan).count(), 2);
    assert_eq!(vni(&p.id), Some(4242));
    assert_eq!(p.id.outer, container());
    assert_eq!((p.sent(), p.arrived(), p.lost_total()), (50, 50, 0));
    assert!(p.lost.is_empty() && p.incomplete.is_empty(), "{p:#?}");
}

fn drop_row(ns: &str, iface: &str, id: FlowId, reason: &str, n: u64) -> DropRow {
    DropRow {
        netns: ns.into(),
        iface: Some(iface.into()),
        id,
        reason: Some(reason.into()),
        location: "nft_do_chain+0x3e8".into(),
        fragment: None,
        counts: DropCounts {
            packets: n,
            bytes: n * 150,
        },
    }
}

fn verdict(ns: &str, iface: &str, id: FlowId, dropped: u64, rule: &str) -> VerdictRow {
    VerdictRow {
        netns: ns.into(),
        iface: Some(iface.into()),
        family: IpFamily::Ipv4,
        hook: Hook::Input,
        table: Table::Filter,
        id,
        counts: VerdictCounts {
            entered: dropped,
            left: 0,
            unleft: 0,
        },
        rule: Some(rule.into()),
    }
}

/// Scenario 1: UDP 4789 dropped on host B's INPUT.
#[test]
fn vxlan_port_blocked_vanishes_after_the_remote_underlay_with_the_rule() {
    let links = overlay();
    let flows = overlay_rows(50, 0);
    let drops = [drop_row("hb", "ul0", encapsulated(), "NETFILTER_DROP", 50)];
    let rule = "-A INPUT -p udp -m udp --dport 4789 -j DROP";
    let verdicts = [verdict("hb", "ul0", encapsulated(), 50, rule)];
    let p = only(&links, rows(&flows, &drops, &verdicts));
    assert_eq!(labels(&p).last().unwrap(), "hb/ul0 in");
    assert_eq!(p.hops.len(), 5);
    assert_eq!((p.sent(), p.arrived(), p.lost_total()), (50, 0, 50));
    let l = &p.lost[0];
    assert_eq!(p.lost.len(), 1, "{:#?}", p.lost);
    assert_eq!(l.after, Some(4));
    assert_eq!((l.netns.as_str(), l.iface.as_deref()), ("hb", Some("ul0")));
    assert_eq!(l.reason.as_deref(), Some("NETFILTER_DROP"));
    assert_eq!(l.location.as_deref(), Some("nft_do_chain+0x3e8"));
    assert_eq!((l.hook, l.rule.as_deref()), (Some(Hook::Input), Some(rule)));
    assert_eq!(p.place(l), "after hb/ul0 in");
    assert!(l.hint().unwrap().contains("netfilter"));
    assert_eq!(
        p.notes,
        ["none of what passed hb/ul0 in was seen at hb/vx0 in"]
    );
}

/// Missing packets nothing explains are reported without a reason.
#[test]
fn loss_without_a_drop_row_has_no_reason() {
    let links = overlay();
    let mut flows = overlay_rows(50, 50);
    for f in &mut flows {
        if &*f.netns == "c2" {
            f.counts.packets = 45;
        }
    }
    let p = only(&links, rows(&flows, &[], &[]));
    assert_eq!(p.hops.len(), 8);
    assert_eq!(p.lost.len(), 1);
    assert_eq!((p.lost[0].after, p.lost[0].count), (Some(6), 5));
    assert_eq!(p.lost[0].reason, None);
    assert_eq!(p.arrived(), 45);
}

/// The demo: dropped by the receiving container's INPUT, after its last hop.
#[test]
fn dropped_after_the_last_hop_counts_against_arrived() {
    let links = overlay();
    let flows = overlay_rows(10, 10);
    let drops = [drop_row("c2", "eth0", plain(), "NETFILTER_DROP", 10)];
    let rule = "-A INPUT -p udp -m udp --dport 5353 -j DROP";
    let verdicts = [verdict("c2", "eth0", plain(), 10, rule)];
    let p = only(&links, rows(&flows, &drops, &verdicts));
    assert_eq!(p.hops.len(), 8);
    assert_eq!((p.sent(), p.arrived(), p.lost_total()), (10, 0, 10));
    assert_eq!(p.lost[0].after, Some(7));
    assert_eq!(p.lost[0].rule.as_deref(), Some(rule));
    assert!(p.notes.is_empty(), "{:#?}", p.notes);
}

#[test]
fn a_peer_in_an_untraced_namespace_makes_the_path_incomplete() {
    let mut links = overlay();
    links.insert(
        "ha",
        "ul0",
        Link {
            kind: LinkKind::Veth,
            hooked: true,
            peer: Some(Err(
                "the peer of ul0 is in a namespace that is not traced".into()
            )),
            ..Link::default()
        },
    );
    let flows: Vec<FlowRow> = overlay_rows(5, 5)
        .into_iter()
        .filter(|f| &*f.netns != "hb" && &*f.netns != "c2")
        .collect();
    let p = only(&links, rows(&flows, &[], &[]));
    assert_eq!(labels(&p).last().unwrap(), "ha/ul0 out");
    assert_eq!(
        p.incomplete,
        ["after ha/ul0 out: the peer of ul0 is in a namespace that is not traced"]
    );
    assert!(p.lost.is_empty());
}

#[test]
fn first_seen_arriving_says_where_it_came_from_is_unknown() {
    let links = overlay();
    let flows: Vec<FlowRow> = overlay_rows(5, 5)
        .into_iter()
        .filter(|f| &*f.netns == "hb" || &*f.netns == "c2")
        .collect();
    let p = only(&links, rows(&flows, &[], &[]));
    assert_eq!(labels(&p)[0], "hb/ul0 in");
    assert_eq!(p.hops.len(), 4);
    assert_eq!(
        p.incomplete,
        ["it is first seen arriving at hb/ul0 in: where it came from was not seen"]
    );
}

/// Dropped before any traced hop (the sender's own OUTPUT chain): a path
/// with no hops and the loss in the sender's namespace.
#[test]
fn drops_without_hops_are_a_path_too() {
    let links = overlay();
    let mut d = drop_row("c1", "eth0", plain(), "NETFILTER_DROP", 3);
    d.iface = None;
    let p = only(&links, rows(&[], &[d], &[]));
    assert!(p.hops.is_empty());
    assert_eq!((p.sent(), p.arrived(), p.lost_total()), (0, 0, 3));
    assert_eq!((p.lost[0].after, p.lost[0].netns.as_str()), (None, "c1"));
    assert_eq!(p.origin(), ("c1", None, None));
}

/// Replies are paths of their own, and each path keeps its own rows.
#[test]
fn each_direction_is_a_path() {
    let links = overlay();
    let mut flows = overlay_rows(3, 3);
    let mut back = plain();
    std::mem::swap(&mut back.outer.src, &mut back.outer.dst);
    std::mem::swap(&mut back.outer.sport, &mut back.outer.dport);
    flows.push(flow("c2", "eth0", Out, back, 2));
    flows.push(flow("hb", "vc2", In, back, 2));
    let all = paths(&links, rows(&flows, &[], &[]));
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].sent(), 3);
    assert_eq!(labels(&all[1]), ["c2/eth0 out", "hb/vc2 in"]);
}
