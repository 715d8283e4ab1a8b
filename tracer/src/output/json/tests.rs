//! JSON rows against the contract the README documents.

use std::{rc::Rc, time::Duration};

use tracer_ebpf::{FlowId, VNI_PRESENT};

use super::*;
use crate::model::{Direction, Hook, IpFamily, Table};
use crate::output::test_tuple as tuple;
use crate::{
    collectors::drops::DropCounts, collectors::flows::Counts, collectors::verdicts::VerdictCounts,
    output::Health,
};

fn vxlan_id() -> FlowId {
    FlowId {
        outer: tuple(1, 2, 17, Some((40000, 4789))),
        inner: tuple(5, 6, 1, None),
        vni: VNI_PRESENT | 42,
        _pad: 0,
    }
}

#[test]
fn hand_written_flow_rows_are_what_serde_writes() {
    let mut v6 = tuple(1, 2, 6, Some((1, 65535)));
    v6.family = tracer_ebpf::FAMILY_IPV6;
    v6.src = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    v6.dst = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0xab, 0xcd, 0, 0, 0, 2];
    let ids = [
        vxlan_id(),
        FlowId {
            outer: tuple(255, 0, 17, Some((0, 53))),
            ..FlowId::default()
        },
        FlowId {
            outer: tuple(3, 4, 47, None),
            ..FlowId::default()
        },
        FlowId {
            outer: v6,
            inner: tuple(7, 8, 58, None),
            vni: VNI_PRESENT,
            _pad: 0,
        },
        FlowId::default(),
    ];
    for (i, id) in ids.into_iter().enumerate() {
        for scope in [Scope::Interval, Scope::Total] {
            let row = FlowRow {
                netns: ["tl1-ha", "4026531840", "a\"b\\c\u{1}é"][i % 3].into(),
                iface: ["ul0", "vx\tlan"][i % 2].into(),
                dir: [Direction::Ingress, Direction::Egress][i % 2],
                id,
                counts: Counts {
                    packets: i as u64,
                    bytes: u64::MAX - i as u64,
                    frags_first: 10,
                    frags_rest: 0,
                    df: 7,
                    max_len: u32::MAX,
                },
            };
            let mut ours = Vec::new();
            let inodes = [("tl1-ha".to_string(), 4026532000)];
            // Every other row is one after a published port's DNAT.
            let mut nat = crate::analysis::nat::Ties::default();
            if let (0, Some(k)) = (i % 2, crate::analysis::nat::key(&id)) {
                nat.insert(k, "10.9.1.1:8080".parse().unwrap());
            }
            let at = At {
                scope,
                inodes: &inodes,
                nat: &nat,
            };
            write_flow(&mut ours, &at, &row).unwrap();
            let serde = serde_json::to_string(&flow(&at, &row)).unwrap() + "\n";
            assert_eq!(String::from_utf8(ours).unwrap(), serde);
        }
    }
}

fn lines(report: &Report) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    JsonSink::new(&mut out).report(report).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn vxlan_flow_row_matches_the_contract() {
    let report = Report {
        scope: Scope::Total,
        elapsed: Duration::from_secs(2),
        flows: vec![FlowRow {
            netns: "hostA".into(),
            iface: "ul0".into(),
            dir: Direction::Egress,
            id: vxlan_id(),
            counts: Counts {
                packets: 3,
                bytes: 444,
                frags_first: 1,
                frags_rest: 2,
                df: 0,
                max_len: 148,
            },
        }],
        health: Health {
            flow_map_full: 7,
            drop_map_full: 1,
            drop_events_lost: 2,
            verdict_map_full: 3,
            icmp_map_full: 4,
            device_map_full: 10,
            frag_unmatched: 5,
            explain_events_lost: 6,
            capture_rate_limited: 8,
            capture_lost: 9,
            attach_failed: 0,
            totals_full: 11,
        },
        ..Report::default()
    };
    let lines = lines(&report);
    assert_eq!(
        lines[0],
        serde_json::json!({
            "type": "flow", "scope": "total", "netns": "hostA", "netns_inode": null, "orig": null, "iface": "ul0",
            "dir": "egress", "proto": "udp", "src": "10.0.0.1", "dst": "10.0.0.2",
            "sport": 40000, "dport": 4789, "vni": 42,
            "inner": {"proto": "icmp", "src": "10.0.0.5", "dst": "10.0.0.6",
                      "sport": null, "dport": null},
            "packets": 3, "bytes": 444, "frags_first": 1, "frags_rest": 2,
            "df": 0, "max_len": 148
        })
    );
    assert_eq!(
        lines[1],
        serde_json::json!({"type": "health", "scope": "total", "seconds": 2.0,
                           "flow_map_full": 7, "drop_map_full": 1, "drop_events_lost": 2,
                           "verdict_map_full": 3, "icmp_map_full": 4, "device_map_full": 10,
                           "frag_unmatched": 5,
                           "explain_events_lost": 6, "capture_rate_limited": 8,
                           "capture_lost": 9, "attach_failed": 0, "totals_full": 11})
    );
    assert_eq!(lines.len(), 2);
}

#[test]
fn drop_row_matches_the_contract() {
    let report = Report {
        scope: Scope::Interval,
        elapsed: Duration::from_secs(1),
        drops: vec![DropRow {
            netns: "hostB".into(),
            iface: Some("ul0".into()),
            id: vxlan_id(),
            reason: Some("NETFILTER_DROP".into()),
            location: "nf_hook_slow+0x9a".into(),
            fragment: Some("rest"),
            counts: DropCounts {
                packets: 5,
                bytes: 740,
            },
        }],
        ..Report::default()
    };
    let lines = lines(&report);
    assert_eq!(
        lines[0],
        serde_json::json!({
            "type": "drop", "scope": "interval", "netns": "hostB", "netns_inode": null, "orig": null, "iface": "ul0",
            "dir": null, "proto": "udp", "src": "10.0.0.1", "dst": "10.0.0.2",
            "sport": 40000, "dport": 4789, "vni": 42,
            "inner": {"proto": "icmp", "src": "10.0.0.5", "dst": "10.0.0.6",
                      "sport": null, "dport": null},
            "reason": "NETFILTER_DROP", "location": "nf_hook_slow+0x9a",
            "fragment": "rest", "count": 5, "bytes": 740,
            "hint": "a netfilter (iptables/nftables) rule dropped it"
        })
    );
    assert_eq!(lines[1]["type"], "health");
}

#[test]
fn verdict_row_matches_the_contract() {
    let report = Report {
        scope: Scope::Total,
        verdicts: vec![VerdictRow {
            netns: "hostB".into(),
            iface: Some("ul0".into()),
            family: IpFamily::Ipv4,
            hook: Hook::Input,
            table: Table::Filter,
            id: vxlan_id(),
            counts: VerdictCounts {
                entered: 10,
                left: 4,
                unleft: 0,
            },
            rule: Some("-A INPUT -p udp -m udp --dport 4789 -j DROP".into()),
        }],
        ..Report::default()
    };
    let lines = lines(&report);
    assert_eq!(
        lines[0],
        serde_json::json!({
            "type": "verdict", "scope": "total", "netns": "hostB", "netns_inode": null, "orig": null, "iface": "ul0",
            "dir": null, "proto": "udp", "src": "10.0.0.1", "dst": "10.0.0.2",
            "sport": 40000, "dport": 4789, "vni": 42,
            "inner": {"proto": "icmp", "src": "10.0.0.5", "dst": "10.0.0.6",
                      "sport": null, "dport": null},
            "hook": "input", "family": "ipv4", "table": "filter",
            "accepted": 4, "dropped": 6,
            "rule": "-A INPUT -p udp -m udp --dport 4789 -j DROP"
        })
    );
}

#[test]
fn icmp_and_frag_rows_match_the_contract() {
    let report = Report {
        scope: Scope::Total,
        icmps: vec![IcmpRow {
            netns: "hostA".into(),
            iface: Some("vx0".into()),
            dir: Direction::Ingress,
            kind: "frag_needed",
            icmp_type: 3,
            icmp_code: 4,
            mtu: Some(1450),
            id: FlowId {
                outer: tuple(5, 6, 1, None),
                ..FlowId::default()
            },
            count: 2,
        }],
        frags: vec![FragRow {
            netns: "hostA".into(),
            iface: "ul0".into(),
            dir: Direction::Egress,
            id: vxlan_id(),
            datagrams: 10,
            reassembled: 0,
            datagrams_lost: 10,
            fragments: 20,
            fragments_lost: 10,
            reassembly_failed: 10,
        }],
        ..Report::default()
    };
    let lines = lines(&report);
    assert_eq!(
        lines[0],
        serde_json::json!({
            "type": "icmp", "scope": "total", "netns": "hostA", "netns_inode": null, "orig": null, "iface": "vx0",
            "dir": "ingress", "proto": "icmp", "src": "10.0.0.5", "dst": "10.0.0.6",
            "sport": null, "dport": null, "vni": null, "inner": null,
            "kind": "frag_needed", "icmp_type": 3, "icmp_code": 4, "mtu": 1450, "count": 2
        })
    );
    assert_eq!(lines[1]["type"], "frag");
    assert_eq!(lines[1]["vni"], 42);
    assert_eq!(lines[1]["inner"]["proto"], "icmp");
    for (k, v) in [
        ("datagrams", 10),
        ("reassembled", 0),
        ("datagrams_lost", 10),
        ("fragments", 20),
        ("fragments_lost", 10),
        ("reassembly_failed", 10),
    ] {
        assert_eq!(lines[1][k], v, "{k}");
    }
}

#[test]
fn first_drops_have_no_health_row_and_a_device_may_be_missing() {
    let report = Report {
        scope: Scope::First,
        drops: vec![DropRow {
            netns: "4026531840".into(),
            iface: None,
            id: FlowId::default(),
            reason: Some("SUBSYS_3:1".into()),
            location: "0x1234".into(),
            fragment: None,
            counts: DropCounts {
                packets: 1,
                bytes: 60,
            },
        }],
        ..Report::default()
    };
    let lines = lines(&report);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["scope"], "first");
    assert_eq!(lines[0]["iface"], serde_json::Value::Null);
    assert_eq!(lines[0]["hint"], serde_json::Value::Null);
    assert_eq!(lines[0]["src"], serde_json::Value::Null);
}

#[test]
fn plain_flow_has_null_vni_and_inner_and_numeric_unknown_proto() {
    let row = FlowRow {
        netns: "4026531840".into(),
        iface: "br0".into(),
        dir: Direction::Ingress,
        id: FlowId {
            outer: tuple(1, 2, 47, None),
            ..FlowId::default()
        },
        counts: Counts::default(),
    };
    let nat = crate::analysis::nat::Ties::default();
    let at = At {
        scope: Scope::Interval,
        inodes: &[],
        nat: &nat,
    };
    let v = serde_json::to_value(flow(&at, &row)).unwrap();
    // An unnamed namespace is named by its inode, which is its inode too.
    assert_eq!(v["netns_inode"], 4026531840u64);
    assert_eq!(v["vni"], serde_json::Value::Null);
    assert_eq!(v["inner"], serde_json::Value::Null);
    assert_eq!(v["proto"], 47);
    assert_eq!(v["sport"], serde_json::Value::Null);
    assert_eq!(v["scope"], "interval");
}

fn lost_path() -> crate::output::PathRow {
    use crate::analysis::paths::{Hop, Lost};
    let hop = |ns: &str, iface: &str, dir, vxlan, packets| Hop {
        netns: ns.into(),
        iface: iface.into(),
        dir,
        vxlan,
        counts: Counts {
            packets,
            bytes: packets * 100,
            max_len: 100,
            ..Counts::default()
        },
    };
    crate::output::PathRow {
        id: FlowId {
            outer: tuple(5, 6, 17, Some((41000, 5001))),
            vni: VNI_PRESENT | 42,
            ..FlowId::default()
        },
        hops: vec![
            hop("c1", "eth0", Direction::Egress, false, 7),
            hop("ha", "ul0", Direction::Egress, true, 7),
            hop("hb", "ul0", Direction::Ingress, true, 7),
        ],
        lost: vec![Lost {
            after: Some(2),
            netns: "hb".into(),
            iface: Some("ul0".into()),
            count: 7,
            reason: Some("NETFILTER_DROP".into()),
            location: Some("nft_do_chain+0x3e8".into()),
            hook: Some(Hook::Input),
            rule: Some("-A INPUT -p udp -m udp --dport 4789 -j DROP".into()),
            mtu: None,
            icmp: None,
        }],
        incomplete: vec![],
        notes: vec!["none of what passed hb/ul0 in was seen at hb/vx0 in".into()],
        carriers: vec![],
    }
}

#[test]
fn path_row_matches_the_contract() {
    let report = Report {
        scope: Scope::Total,
        paths: vec![lost_path()],
        ..Report::default()
    };
    let lines = lines(&report);
    assert_eq!(
        lines[0],
        serde_json::json!({
            "type": "path", "scope": "total", "netns": "c1", "netns_inode": null, "orig": null, "iface": "eth0", "dir": "egress",
            "proto": "udp", "src": "10.0.0.5", "dst": "10.0.0.6", "sport": 41000, "dport": 5001,
            "vni": 42, "inner": null, "sent": 7, "arrived": 0,
            "hops": [
                {"netns": "c1", "netns_inode": null, "iface": "eth0", "dir": "egress", "vxlan": false, "packets": 7,
                 "bytes": 700, "frags_first": 0, "frags_rest": 0, "max_len": 100},
                {"netns": "ha", "netns_inode": null, "iface": "ul0", "dir": "egress", "vxlan": true, "packets": 7,
                 "bytes": 700, "frags_first": 0, "frags_rest": 0, "max_len": 100},
                {"netns": "hb", "netns_inode": null, "iface": "ul0", "dir": "ingress", "vxlan": true, "packets": 7,
                 "bytes": 700, "frags_first": 0, "frags_rest": 0, "max_len": 100},
            ],
            "lost": [{
                "after": 2, "netns": "hb", "iface": "ul0", "count": 7, "reason": "NETFILTER_DROP",
                "location": "nft_do_chain+0x3e8", "hook": "input",
                "rule": "-A INPUT -p udp -m udp --dport 4789 -j DROP",
                "hint": "a netfilter (iptables/nftables) rule dropped it", "mtu": null, "icmp": null,
            }],
            "incomplete": [],
            "notes": ["none of what passed hb/ul0 in was seen at hb/vx0 in"],
        })
    );
}

#[test]
fn path_text_line_says_where_and_why() {
    let line = crate::output::text::path_line(Scope::Total, &lost_path()).to_string();
    assert_eq!(
        line,
        "path total netns=c1 udp 10.0.0.5:41000 > 10.0.0.6:5001 vni=42 sent=7 arrived=0 lost=7 \
         hops=[c1/eth0 out 7; ha/ul0 out vxlan 7; hb/ul0 in vxlan 7] lost=[after hb/ul0 in: 7 \
         reason=NETFILTER_DROP location=nft_do_chain+0x3e8 hook=input \
         rule=\"-A INPUT -p udp -m udp --dport 4789 -j DROP\"] \
         note=\"none of what passed hb/ul0 in was seen at hb/vx0 in\""
    );
}

#[test]
fn hand_written_path_rows_are_what_serde_writes() {
    use crate::analysis::paths::{Hop, Lost};
    let full = lost_path();
    let mut odd = lost_path();
    odd.id = FlowId::default();
    odd.hops[0].netns = "a\"b\\c\u{1}é".into();
    odd.hops[1].iface = "vx\tlan".into();
    odd.hops[2].dir = Direction::Sent;
    odd.lost.push(Lost {
        after: None,
        netns: "tl1-ha".into(),
        iface: None,
        count: u64::MAX,
        reason: None,
        location: None,
        hook: None,
        rule: None,
        mtu: Some("too \"big\"".into()),
        icmp: Some("frag needed mtu 1400 x3".into()),
    });
    odd.incomplete = vec!["it is first seen\n".into(), String::new()];
    odd.notes = vec![];
    // Only losses: the row's place is its first loss's.
    let mut lost_only = lost_path();
    lost_only.hops.clear();
    lost_only.lost[0].iface = None;
    let mut empty = lost_path();
    empty.hops.clear();
    empty.lost.clear();
    empty.notes.clear();
    let one = crate::output::PathRow {
        hops: vec![Hop {
            netns: "4026531840".into(),
            ..full.hops[0].clone()
        }],
        lost: vec![],
        ..full.clone()
    };
    for (i, row) in [full, odd, lost_only, empty, one].iter().enumerate() {
        for scope in [Scope::Interval, Scope::Total] {
            let inodes = [("tl1-ha".to_string(), 4026532000), ("c1".to_string(), 7)];
            let mut nat = crate::analysis::nat::Ties::default();
            if let (0, Some(k)) = (i % 2, crate::analysis::nat::key(&row.id)) {
                nat.insert(k, "10.9.1.1:8080".parse().unwrap());
            }
            let at = At {
                scope,
                inodes: &inodes,
                nat: &nat,
            };
            // Twice: the second time its places are copied from the first.
            let mut seen = Seen::default();
            for _ in 0..2 {
                let mut ours = Vec::new();
                write_path(&mut ours, &at, row, &mut seen).unwrap();
                let serde = serde_json::to_string(&path(&at, row)).unwrap() + "\n";
                assert_eq!(String::from_utf8(ours).unwrap(), serde);
            }
        }
    }
}

#[test]
fn flow_rows_of_a_report_are_what_write_flow_writes() {
    let shared: (Rc<str>, Rc<str>) = ("tl1-ha".into(), "ul0".into());
    let row = |netns: &Rc<str>, iface: &Rc<str>, dir, sport| FlowRow {
        netns: netns.clone(),
        iface: iface.clone(),
        dir,
        id: FlowId {
            outer: tuple(1, 2, 17, Some((sport, 53))),
            ..FlowId::default()
        },
        counts: Counts {
            packets: sport as u64,
            ..Counts::default()
        },
    };
    // Same names in other allocations, and a change of direction only.
    let other: (Rc<str>, Rc<str>) = ("tl1-ha".into(), "ul0".into());
    let eth: Rc<str> = "eth\"0".into();
    let flows = vec![
        row(&shared.0, &shared.1, Direction::Egress, 1),
        row(&shared.0, &shared.1, Direction::Egress, 2),
        row(&shared.0, &shared.1, Direction::Ingress, 3),
        row(&other.0, &other.1, Direction::Ingress, 4),
        row(&shared.0, &eth, Direction::Ingress, 5),
        row(&shared.0, &shared.1, Direction::Egress, 6),
    ];
    let report = Report {
        scope: Scope::First,
        flows,
        netns_inodes: vec![("tl1-ha".to_string(), 4026532000)],
        ..Report::default()
    };
    let mut ours = Vec::new();
    JsonSink::new(&mut ours).report(&report).unwrap();
    let mut each = Vec::new();
    for f in &report.flows {
        write_flow(&mut each, &At::of(&report), f).unwrap();
    }
    assert_eq!(
        String::from_utf8(ours).unwrap(),
        String::from_utf8(each).unwrap()
    );
}

#[test]
fn ipv4_addresses_as_display_writes_them() {
    for o in 0..=255u8 {
        for octets in [[o, 0, 255, o], [9, o, 10, 99], [100, 1, o, 0]] {
            let mut out = Vec::new();
            write_v4(&mut out, octets).unwrap();
            let want = format!("\"{}\"", std::net::Ipv4Addr::from(octets));
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }
}
