//! Scenario 8, healthy overlay: exact per-hop counts of a known inner flow.

mod common;

use std::{net::SocketAddrV4, time::Duration};

use common::*;
use xtask::{
    lab::{Overlay, OverlayOpts},
    traffic::{UdpSink, send_udp},
};

const N: u32 = 25;
const PAYLOAD: usize = 200;
/// Ethernet 14 + IPv4 20 + UDP 8 + payload.
const INNER_FRAME: u64 = 14 + 20 + 8 + PAYLOAD as u64;
/// Outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8 around the inner frame.
const OUTER_FRAME: u64 = INNER_FRAME + 50;

fn exact_counts_at_every_hop(opts: OverlayOpts) {
    let lab = Overlay::new(opts).expect("build lab");
    let (c1, c2) = (&lab.c1, &lab.c2);
    let from = SocketAddrV4::new(c1.ip, 41000);
    let to = SocketAddrV4::new(c2.ip, 5001);
    let sink = UdpSink::start(&c2.ns, to).unwrap();
    let run = start(lab.namespaces(), &[]);
    send_udp(&c1.ns, from, to, N, PAYLOAD).unwrap();
    assert!(
        sink.wait_for(N as u64, Duration::from_secs(10)),
        "only {} arrived",
        sink.received()
    );
    let f = stop(run);

    let (c1ip, c2ip) = (c1.ip.to_string(), c2.ip.to_string());
    let inner_is =
        |e: &serde_json::Value| endpoints_are(e, "udp", &c1ip, &c2ip, Some((41000, 5001)));
    // Hops that see the container's frame itself.
    let plain_hops = [
        (&c1.ns, &c1.dev, "egress"),
        (&lab.a.overlay_ns, &c1.bridge_port, "ingress"),
        (&lab.a.overlay_ns, &lab.a.vxlan_dev, "egress"),
        (&lab.b.overlay_ns, &lab.b.vxlan_dev, "ingress"),
        (&lab.b.overlay_ns, &c2.bridge_port, "egress"),
        (&c2.ns, &c2.dev, "ingress"),
    ];
    for (ns, iface, dir) in plain_hops {
        let rows = flows_at(&f, ns, iface, dir);
        assert_eq!(rows.len(), 1, "{ns} {iface} {dir}: {rows:#?}");
        let r = rows[0];
        assert!(inner_is(r), "{ns} {iface} {dir}: {r}");
        assert!(r["vni"].is_null() && r["inner"].is_null(), "{r}");
        assert_eq!(r["packets"], N, "{ns} {iface} {dir}: {r}");
        assert_eq!(
            r["bytes"],
            N as u64 * INNER_FRAME,
            "{ns} {iface} {dir}: {r}"
        );
        assert_eq!(r["max_len"], INNER_FRAME, "{r}");
        assert_eq!(
            (r["frags_first"].as_u64(), r["frags_rest"].as_u64()),
            (Some(0), Some(0))
        );
    }
    // The underlay sees the encapsulated frame, with the VNI and the inner flow.
    let (aip, bip) = (lab.a.underlay_ip.to_string(), lab.b.underlay_ip.to_string());
    for (ns, dir) in [(&lab.a.ns, "egress"), (&lab.b.ns, "ingress")] {
        let rows = flows_at(&f, ns, "ul0", dir);
        assert_eq!(rows.len(), 1, "{ns} ul0 {dir}: {rows:#?}");
        let r = rows[0];
        assert_eq!(
            (&r["proto"], &r["src"], &r["dst"]),
            (&"udp".into(), &aip.clone().into(), &bip.clone().into()),
            "{r}"
        );
        assert_eq!(r["dport"], lab.opts.vxlan_port, "{r}");
        assert!(r["sport"].as_u64().is_some(), "{r}");
        assert_eq!(r["vni"], lab.opts.vni, "{r}");
        assert!(inner_is(&r["inner"]), "{r}");
        assert_eq!(r["packets"], N, "{r}");
        assert_eq!(r["bytes"], N as u64 * OUTER_FRAME, "{r}");
    }
    // Nothing else happened in the lab, so nothing else may be reported.
    let total: u64 = f
        .totals("flow")
        .iter()
        .map(|r| r["packets"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 8 * N as u64, "{:#?}", f.totals("flow"));
    assert!(f.totals("drop").is_empty(), "{:#?}", f.totals("drop"));
    let health = f.totals("health");
    assert_eq!(health.len(), 1);
    assert_eq!(health[0]["flow_map_full"], 0);
    assert_eq!(health[0]["drop_map_full"], 0);
}

#[test]
fn healthy_overlay_counts_every_hop_exactly() {
    exact_counts_at_every_hop(OverlayOpts::default());
}

/// Docker keeps the bridge and VXLAN device in a namespace of their own.
#[test]
fn docker_style_overlay_counts_every_hop_exactly() {
    exact_counts_at_every_hop(OverlayOpts {
        docker: true,
        ..OverlayOpts::default()
    });
}

/// Flannel's port, 8472, is VXLAN only when the user says so or a VXLAN
/// device in a traced namespace uses it.
#[test]
fn vxlan_port_other_than_4789() {
    let lab = Overlay::new(OverlayOpts {
        vxlan_port: 8472,
        docker: true,
        ..OverlayOpts::default()
    })
    .unwrap();
    let to = SocketAddrV4::new(lab.c2.ip, 5002);
    let sink = UdpSink::start(&lab.c2.ns, to).unwrap();
    let mut sent = 0;
    let mut underlay_row = |namespaces: &[String], extra: &[&str]| {
        let run = start(namespaces, extra);
        send_udp(&lab.c1.ns, SocketAddrV4::new(lab.c1.ip, 41001), to, N, 64).unwrap();
        sent += N as u64;
        assert!(sink.wait_for(sent, Duration::from_secs(10)));
        let f = stop(run);
        let rows = flows_at(&f, &lab.a.ns, "ul0", "egress");
        assert_eq!(rows.len(), 1, "{rows:#?}");
        assert_eq!(rows[0]["dport"], 8472);
        assert_eq!(rows[0]["packets"], N);
        rows[0].clone()
    };
    // The host namespace has the underlay but not the VXLAN device (it is in ova).
    let host_only = [lab.a.ns.clone()];
    let r = underlay_row(&host_only, &["--iface", "ul0"]);
    assert!(
        r["vni"].is_null() && r["inner"].is_null(),
        "8472 decoded unasked: {r}"
    );

    let r = underlay_row(&host_only, &["--iface", "ul0", "--vxlan-port", "8472"]);
    assert_eq!(r["vni"], lab.opts.vni, "{r}");
    assert_eq!(r["inner"]["dport"], 5002, "{r}");

    // Tracing the overlay namespace too reveals a VXLAN device on 8472.
    let both = [lab.a.ns.clone(), lab.a.overlay_ns.clone()];
    let r = underlay_row(&both, &["--iface", "ul0"]);
    assert_eq!(r["vni"], lab.opts.vni, "{r}");
}
