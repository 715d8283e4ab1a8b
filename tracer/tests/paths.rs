//! Path rows: one flow along its hops, in order, with where its packets
//! went missing and why, on real overlays with known faults.

mod common;

use std::{net::SocketAddrV4, time::Duration};

use common::*;
use serde_json::Value;
use xtask::{
    lab::{Bridged, Overlay, OverlayOpts, iptables, sysctl},
    peers::{iptables_packets, nstat},
    traffic::{Df, UdpSink, send_udp, send_udp_df},
};

const N: u64 = 12;

/// The total path row of the flow `src` -> `dst` (the container's flow).
fn path_of(f: &xtask::tracer::Finished, src: SocketAddrV4, dst: SocketAddrV4) -> &Value {
    let paths = f.totals("path");
    only(
        &paths,
        "udp",
        &src.ip().to_string(),
        &dst.ip().to_string(),
        Some((src.port(), dst.port())),
    )
}

/// `netns/iface dir` of each hop, and whether it carried the flow in VXLAN.
fn hops(p: &Value) -> Vec<(String, bool)> {
    p["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                format!(
                    "{}/{} {}",
                    h["netns"].as_str().unwrap(),
                    h["iface"].as_str().unwrap(),
                    h["dir"].as_str().unwrap()
                ),
                h["vxlan"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// Every hop from container 1 to container 2, in the order of travel.
fn full_path(lab: &Overlay) -> Vec<(String, bool)> {
    let (a, b, c1, c2) = (&lab.a, &lab.b, &lab.c1, &lab.c2);
    vec![
        (format!("{}/{} egress", c1.ns, c1.dev), false),
        (
            format!("{}/{} ingress", a.overlay_ns, c1.bridge_port),
            false,
        ),
        (format!("{}/{} egress", a.overlay_ns, a.vxlan_dev), false),
        (format!("{}/{} egress", a.ns, a.underlay_dev), true),
        (format!("{}/{} ingress", b.ns, b.underlay_dev), true),
        (format!("{}/{} ingress", b.overlay_ns, b.vxlan_dev), false),
        (format!("{}/{} egress", b.overlay_ns, c2.bridge_port), false),
        (format!("{}/{} ingress", c2.ns, c2.dev), false),
    ]
}

/// Scenario 1: host B drops UDP 4789 at input. The path ends at host B's
/// underlay, with every packet lost there, the reason and the rule.
fn vxlan_blocked(docker: bool) {
    let lab = Overlay::new(OverlayOpts {
        docker,
        ..OverlayOpts::default()
    })
    .unwrap();
    let hb = &lab.b.ns;
    iptables(
        hb,
        &["-A", "INPUT", "-p", "udp", "--dport", "4789", "-j", "DROP"],
    )
    .unwrap();
    let run = start(lab.namespaces(), &[]);
    let before = nstat(hb, "IpInReceives").unwrap();
    let from = SocketAddrV4::new(lab.c1.ip, 41000);
    let to = SocketAddrV4::new(lab.c2.ip, 5001);
    send_udp(&lab.c1.ns, from, to, N as u32, 100).unwrap();
    wait_received(hb, before, N);
    let f = stop(run);

    let p = path_of(&f, from, to);
    assert_eq!(hops(p), full_path(&lab)[..5], "{p:#}");
    for h in p["hops"].as_array().unwrap() {
        assert_eq!(h["packets"], N, "{h}");
    }
    assert_eq!(p["vni"], lab.opts.vni);
    assert_eq!(
        (p["sent"].as_u64(), p["arrived"].as_u64()),
        (Some(N), Some(0))
    );
    let lost = p["lost"].as_array().unwrap();
    assert_eq!(lost.len(), 1, "{p:#}");
    let l = &lost[0];
    assert_eq!(l["after"], 4, "{l}");
    assert_eq!(
        (&l["netns"], &l["iface"]),
        (&hb.as_str().into(), &"ul0".into())
    );
    assert_eq!(l["count"], N, "{l}");
    assert_dropped_for(l, "NETFILTER_DROP");
    assert!(l["location"].as_str().is_some(), "{l}");
    assert_eq!(l["hook"], "input", "{l}");
    assert_eq!(
        l["rule"], "-A INPUT -p udp -m udp --dport 4789 -j DROP",
        "{l}"
    );
    assert!(p["incomplete"].as_array().unwrap().is_empty(), "{p:#}");
    // Interval rows carry the same path: their losses add up to the total.
    let interval_lost: u64 = f
        .rows
        .iter()
        .filter(|r| r["type"] == "path" && r["scope"] == "interval" && r["src"] == p["src"])
        .flat_map(|r| r["lost"].as_array().unwrap().clone())
        .map(|l| l["count"].as_u64().unwrap())
        .sum();
    assert_eq!(interval_lost, N);
}

#[test]
fn vxlan_port_blocked_path_ends_at_the_remote_underlay() {
    vxlan_blocked(false);
}

#[test]
fn vxlan_port_blocked_path_docker_style() {
    vxlan_blocked(true);
}

/// The demo: one flow gets through every hop; another is dropped by
/// container 2's firewall after its last hop.
#[test]
fn demo_lab_paths_delivered_and_dropped_in_the_container() {
    let lab = Overlay::new(OverlayOpts::default()).unwrap();
    let (c1, c2) = (&lab.c1, &lab.c2);
    iptables(
        &c2.ns,
        &["-A", "INPUT", "-p", "udp", "--dport", "5353", "-j", "DROP"],
    )
    .unwrap();
    let ok = SocketAddrV4::new(c2.ip, 5001);
    let blocked = SocketAddrV4::new(c2.ip, 5353);
    let sink = UdpSink::start(&c2.ns, ok).unwrap();
    let run = start(lab.namespaces(), &[]);
    let (from_ok, from_blocked) = (
        SocketAddrV4::new(c1.ip, 41000),
        SocketAddrV4::new(c1.ip, 41001),
    );
    let before = nstat(&c2.ns, "IpInReceives").unwrap();
    send_udp(&c1.ns, from_ok, ok, 50, 200).unwrap();
    send_udp(&c1.ns, from_blocked, blocked, 10, 60).unwrap();
    assert!(sink.wait_for(50, Duration::from_secs(10)));
    wait_received(&c2.ns, before, 60);
    let f = stop(run);

    let p = path_of(&f, from_ok, ok);
    assert_eq!(hops(p), full_path(&lab), "{p:#}");
    assert_eq!(
        (p["sent"].as_u64(), p["arrived"].as_u64()),
        (Some(50), Some(50))
    );
    assert!(p["lost"].as_array().unwrap().is_empty(), "{p:#}");

    let p = path_of(&f, from_blocked, blocked);
    assert_eq!(hops(p), full_path(&lab), "{p:#}");
    assert_eq!(
        (p["sent"].as_u64(), p["arrived"].as_u64()),
        (Some(10), Some(0))
    );
    let lost = p["lost"].as_array().unwrap();
    assert_eq!(lost.len(), 1, "{p:#}");
    assert_eq!(lost[0]["after"], 7);
    assert_eq!(lost[0]["netns"], c2.ns.as_str());
    assert_eq!(lost[0]["count"], 10);
    assert_dropped_for(&lost[0], "NETFILTER_DROP");
    assert_eq!(
        lost[0]["rule"],
        "-A INPUT -p udp -m udp --dport 5353 -j DROP"
    );
    assert_eq!(f.totals("path").len(), 2, "{:#?}", f.totals("path"));
}

/// Tracing one host only: the path stops where the traced part ends, and
/// says so.
#[test]
fn untraced_namespace_makes_the_path_incomplete() {
    let lab = Overlay::new(OverlayOpts::default()).unwrap();
    let (c1, c2) = (&lab.c1, &lab.c2);
    let to = SocketAddrV4::new(c2.ip, 5001);
    let from = SocketAddrV4::new(c1.ip, 41000);
    let sink = UdpSink::start(&c2.ns, to).unwrap();
    let run = start(&[c1.ns.clone(), lab.a.ns.clone()], &[]);
    send_udp(&c1.ns, from, to, N as u32, 100).unwrap();
    assert!(sink.wait_for(N, Duration::from_secs(10)));
    let f = stop(run);
    let p = path_of(&f, from, to);
    assert_eq!(hops(p), full_path(&lab)[..4], "{p:#}");
    assert!(p["lost"].as_array().unwrap().is_empty(), "{p:#}");
    assert_eq!(
        p["incomplete"],
        serde_json::json!([format!(
            "after {}/ul0 out: the peer of ul0 is in a namespace that is not traced",
            lab.a.ns
        )])
    );
}

/// `--filter` keeps the rows and paths of one conversation, by its inner
/// header, whichever hop they were seen at.
#[test]
fn filter_keeps_one_conversation_at_every_hop() {
    let lab = Overlay::new(OverlayOpts::default()).unwrap();
    let (c1, c2) = (&lab.c1, &lab.c2);
    let a = SocketAddrV4::new(c2.ip, 5001);
    let b = SocketAddrV4::new(c2.ip, 5002);
    let sink_a = UdpSink::start(&c2.ns, a).unwrap();
    let sink_b = UdpSink::start(&c2.ns, b).unwrap();
    let run = start(lab.namespaces(), &["--filter", "inner udp dst port 5002"]);
    let from = SocketAddrV4::new(c1.ip, 41000);
    send_udp(&c1.ns, from, a, 7, 50).unwrap();
    send_udp(&c1.ns, from, b, N as u32, 50).unwrap();
    assert!(sink_a.wait_for(7, Duration::from_secs(10)));
    assert!(sink_b.wait_for(N, Duration::from_secs(10)));
    let f = stop(run);
    let paths = f.totals("path");
    assert_eq!(paths.len(), 1, "{paths:#?}");
    assert_eq!(hops(paths[0]), full_path(&lab));
    assert_eq!(paths[0]["arrived"], N);
    let flows = f.totals("flow");
    assert_eq!(flows.len(), 8, "{flows:#?}");
    for r in flows {
        let inner = if r["inner"].is_null() { r } else { &r["inner"] };
        assert_eq!(
            (&inner["dport"], &r["packets"]),
            (&5002.into(), &N.into()),
            "{r}"
        );
    }
}

/// Scenario 4: DF set on an overlay whose MTU does not fit the underlay.
/// The path stops at the VXLAN device, with the MTU finding and the
/// "fragmentation needed" it answered with.
#[test]
fn df_set_path_stops_at_the_vxlan_device_with_the_mtu_and_the_icmp() {
    let lab = Overlay::new(OverlayOpts {
        overlay_mtu: 1500,
        underlay_mtu: 1500,
        ..OverlayOpts::default()
    })
    .unwrap();
    let (c1, c2) = (&lab.c1, &lab.c2);
    let (from, to) = (
        SocketAddrV4::new(c1.ip, 41004),
        SocketAddrV4::new(c2.ip, 5004),
    );
    let run = start(lab.namespaces(), &[]);
    send_udp_df(&c1.ns, from, to, N as u32, 1472, Df::Probe).unwrap();
    assert!(wait_until(
        || nstat(&c1.ns, "IcmpInDestUnreachs").unwrap() == N
    ));
    let f = stop(run);
    let p = path_of(&f, from, to);
    assert_eq!(hops(p), full_path(&lab)[..3], "{p:#}");
    assert_eq!(
        (p["sent"].as_u64(), p["arrived"].as_u64()),
        (Some(N), Some(0))
    );
    let lost = p["lost"].as_array().unwrap();
    let total: u64 = lost.iter().map(|l| l["count"].as_u64().unwrap()).sum();
    assert_eq!(total, N, "{p:#}");
    let l = &lost[0];
    assert_eq!(l["after"], 2, "{l}");
    assert_eq!(
        l["icmp"],
        format!("frag_needed mtu 1450 x{N}").as_str(),
        "{l}"
    );
    assert!(
        l["mtu"]
            .as_str()
            .is_some_and(|m| m.starts_with("overlay MTU 1500 + 50 VXLAN > underlay MTU 1500")),
        "{l}"
    );
}

/// Scenario 6: bridged traffic dropped by iptables FORWARD (br_netfilter):
/// lost after the bridge port it came in by, with the rule.
#[test]
fn bridged_flow_dropped_at_forward_is_lost_inside_the_bridge() {
    let b = Bridged::new(1500).unwrap();
    sysctl(&b.bridge_ns, "net.bridge.bridge-nf-call-iptables=1").unwrap();
    iptables(
        &b.bridge_ns,
        &[
            "-A", "FORWARD", "-p", "udp", "--dport", "7000", "-j", "DROP",
        ],
    )
    .unwrap();
    let (c1, c2) = (&b.c1, &b.c2);
    let ok = SocketAddrV4::new(c2.ip, 7001);
    let blocked = SocketAddrV4::new(c2.ip, 7000);
    let sink = UdpSink::start(&c2.ns, ok).unwrap();
    let run = start(b.namespaces(), &[]);
    let from = SocketAddrV4::new(c1.ip, 40700);
    send_udp(&c1.ns, from, blocked, N as u32, 50).unwrap();
    send_udp(&c1.ns, from, ok, 3, 50).unwrap();
    assert!(sink.wait_for(3, Duration::from_secs(10)));
    assert!(wait_until(|| iptables_packets(
        &b.bridge_ns,
        "FORWARD",
        "dpt:7000"
    )
    .unwrap()
        == N));
    let f = stop(run);
    let hop = |ns: &str, dev: &str, dir: &str| (format!("{ns}/{dev} {dir}"), false);
    let through = vec![
        hop(&c1.ns, &c1.dev, "egress"),
        hop(&b.bridge_ns, &c1.bridge_port, "ingress"),
        hop(&b.bridge_ns, &c2.bridge_port, "egress"),
        hop(&c2.ns, &c2.dev, "ingress"),
    ];
    let p = path_of(&f, from, ok);
    assert_eq!(hops(p), through, "{p:#}");
    assert_eq!(
        (p["sent"].as_u64(), p["arrived"].as_u64()),
        (Some(3), Some(3))
    );

    let p = path_of(&f, from, blocked);
    assert_eq!(hops(p), through[..2], "{p:#}");
    let lost = p["lost"].as_array().unwrap();
    assert_eq!(lost.len(), 1, "{p:#}");
    let l = &lost[0];
    assert_eq!((&l["after"], &l["count"]), (&1.into(), &N.into()), "{l}");
    assert_eq!(l["hook"], "forward", "{l}");
    assert_dropped_for(l, "NETFILTER_DROP");
    assert_eq!(
        l["rule"], "-A FORWARD -p udp -m udp --dport 7000 -j DROP",
        "{l}"
    );
}
