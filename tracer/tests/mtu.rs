//! MTU and fragment loss (scenarios 3 and 4): fragments per inner flow, the
//! fragments a middlebox drops, reassembly timeouts, ICMP "fragmentation
//! needed" with its MTU, and the MTU arithmetic behind them.

mod common;

use std::net::SocketAddrV4;

use common::*;
use xtask::{
    lab::{Lab, Overlay, OverlayOpts, Pair, addr, iptables, neigh, sysctl},
    peers::{iptables_packets, nstat},
    traffic::{Df, UdpSink, send_udp_df},
};

const N: u64 = 6;
/// Inner IP packet 1460 + 28 = 1488 bytes: fits the containers' 1500, but
/// with 50 bytes of VXLAN not the 1500 of the underlay.
const PAYLOAD: usize = 1460;

/// Scenario 3: overlay MTU 1500 over underlay 1500, DF clear: the outer
/// packets fragment, a router drops non-first fragments, host B's reassembly
/// times out.
#[test]
fn middlebox_drops_non_first_fragments() {
    let lab = Overlay::new(OverlayOpts {
        overlay_mtu: 1500,
        underlay_mtu: 1500,
        router: true,
        ..OverlayOpts::default()
    })
    .unwrap();
    let r = lab.router.as_ref().unwrap();
    iptables(&r.ns, &["-A", "FORWARD", "-f", "-j", "DROP"]).unwrap();
    sysctl(&lab.b.ns, "net.ipv4.ipfrag_time=1").unwrap();
    sysctl(&lab.b.ns, "net.ipv4.icmp_ratelimit=0").unwrap();
    let (c1, c2) = (&lab.c1, &lab.c2);
    let to = SocketAddrV4::new(c2.ip, 5003);
    let sink = UdpSink::start(&c2.ns, to).unwrap();
    let run = start(lab.namespaces(), &[]);
    send_udp_df(
        &c1.ns,
        SocketAddrV4::new(c1.ip, 41003),
        to,
        N as u32,
        PAYLOAD,
        Df::Dont,
    )
    .unwrap();
    assert!(
        wait_until(|| nstat(&lab.b.ns, "IpReasmTimeout").unwrap() >= N),
        "no reassembly timeouts"
    );
    let f = stop(run);
    assert_eq!(sink.received(), 0);
    assert_eq!(iptables_packets(&r.ns, "FORWARD", "").unwrap(), N);

    // The inner flow, carried in every row about the underlay.
    let (c1ip, c2ip) = (c1.ip.to_string(), c2.ip.to_string());
    let carries_inner = |row: &serde_json::Value| {
        endpoints_are(&row["inner"], "udp", &c1ip, &c2ip, Some((41003, 5003)))
    };
    let (aip, bip) = (lab.a.underlay_ip.to_string(), lab.b.underlay_ip.to_string());

    // Fragments sent on the underlay, per inner flow, and what became of them.
    let frags = f.totals("frag");
    assert_eq!(frags.len(), 1, "{frags:#?}");
    let fr = frags[0];
    assert!(carries_inner(fr) && fr["vni"] == lab.opts.vni, "{fr}");
    assert_eq!(
        (fr["netns"].as_str(), fr["iface"].as_str()),
        (Some(lab.a.ns.as_str()), Some("ul0"))
    );
    assert!(
        fr["src"] == aip.as_str() && fr["dst"] == bip.as_str() && fr["dport"] == 4789,
        "{fr}"
    );
    for (k, v) in [
        ("datagrams", N),
        ("fragments", 2 * N),
        ("fragments_lost", N),
        ("reassembly_failed", N),
        ("datagrams_lost", N),
        ("reassembled", 0),
    ] {
        assert_eq!(fr[k], v, "{k}: {fr}");
    }

    // Where they were lost: every non-first fragment at the router's
    // firewall, every first fragment when host B gave up reassembling.
    let at_router = drops_in(&f, &r.ns);
    assert_eq!(at_router.len(), 1, "{at_router:#?}");
    let d = at_router[0];
    assert_dropped_for(d, "NETFILTER_DROP");
    assert_eq!(
        (&d["fragment"], &d["count"]),
        (&"rest".into(), &N.into()),
        "{d}"
    );
    assert!(
        carries_inner(d),
        "non-first fragments are counted against their inner flow: {d}"
    );
    let at_b = drops_in(&f, &lab.b.ns);
    assert_eq!(at_b.len(), 1, "{at_b:#?}");
    let d = at_b[0];
    assert_dropped_for(d, "FRAG_REASM_TIMEOUT");
    assert_eq!(
        (&d["fragment"], &d["count"]),
        (&"first".into(), &N.into()),
        "{d}"
    );
    assert!(carries_inner(d), "{d}");
    assert_eq!(nstat(&lab.b.ns, "IpReasmTimeout").unwrap(), N);

    // Host B told host A, once per datagram.
    let sent: Vec<_> = f
        .totals("icmp")
        .into_iter()
        .filter(|i| i["netns"] == lab.b.ns.as_str() && i["dir"] == "sent")
        .collect();
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_eq!(
        (&sent[0]["kind"], &sent[0]["count"]),
        (&"reassembly_timeout".into(), &N.into())
    );
    assert!(carries_inner(sent[0]), "{}", sent[0]);
}

/// Scenario 4: the same overlay with DF set: the VXLAN device refuses the
/// packets and answers each with "fragmentation needed" and the tunnel's MTU.
#[test]
fn df_set_gets_frag_needed_with_the_mtu() {
    let lab = Overlay::new(OverlayOpts {
        overlay_mtu: 1500,
        underlay_mtu: 1500,
        ..OverlayOpts::default()
    })
    .unwrap();
    let (c1, c2) = (&lab.c1, &lab.c2);
    let to = SocketAddrV4::new(c2.ip, 5004);
    let run = start(lab.namespaces(), &[]);
    send_udp_df(
        &c1.ns,
        SocketAddrV4::new(c1.ip, 41004),
        to,
        N as u32,
        PAYLOAD,
        Df::Probe,
    )
    .unwrap();
    assert!(wait_until(
        || nstat(&c1.ns, "IcmpInDestUnreachs").unwrap() == N
    ));
    let f = stop(run);

    let (c1ip, c2ip) = (c1.ip.to_string(), c2.ip.to_string());
    let about_flow =
        |r: &serde_json::Value| endpoints_are(r, "udp", &c1ip, &c2ip, Some((41004, 5004)));
    let icmps = f.totals("icmp");
    // Seen where the VXLAN device injects it and on its way back to the sender.
    for (ns, iface, dir) in [
        (&lab.a.overlay_ns, &lab.a.vxlan_dev, "ingress"),
        (&lab.a.overlay_ns, &c1.bridge_port, "egress"),
        (&c1.ns, &c1.dev, "ingress"),
    ] {
        let at: Vec<_> = icmps
            .iter()
            .filter(|i| {
                i["netns"] == ns.as_str() && i["iface"] == iface.as_str() && i["dir"] == dir
            })
            .collect();
        assert_eq!(at.len(), 1, "{ns} {iface} {dir}: {icmps:#?}");
        let i = at[0];
        assert_eq!(
            (&i["kind"], &i["mtu"], &i["count"]),
            (&"frag_needed".into(), &1450.into(), &N.into()),
            "{i}"
        );
        assert!(about_flow(i), "the quoted header names the flow: {i}");
    }
    // One error per packet that reached the VXLAN device.
    let sent = flows_at(&f, &lab.a.overlay_ns, &lab.a.vxlan_dev, "egress");
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert!(
        about_flow(sent[0]) && sent[0]["packets"] == N && sent[0]["df"] == N,
        "{}",
        sent[0]
    );
    // Not one of them reached the underlay.
    assert!(flows_at(&f, &lab.a.ns, "ul0", "egress").is_empty());
}

/// A router that cannot forward a DF packet into a smaller link drops it and
/// sends "fragmentation needed" itself (through icmp_send).
#[test]
fn router_sends_frag_needed_for_a_smaller_next_hop() {
    let mut lab = Lab::new().unwrap();
    let (a, r, b) = (
        lab.add_ns("a").unwrap(),
        lab.add_ns("r").unwrap(),
        lab.add_ns("b").unwrap(),
    );
    let mac = |x: u8| lab.mac(x, 1);
    let (ma, mra, mrb, mb) = (mac(1), mac(2), mac(3), mac(4));
    lab.veth((&a, "v0"), (&r, "ra"), 1500, (&ma, &mra)).unwrap();
    lab.veth((&r, "rb"), (&b, "v0"), 1000, (&mrb, &mb)).unwrap();
    let (ip_a, ip_ra, ip_rb, ip_b) = (
        lab.addr(1, 1),
        lab.addr(1, 254),
        lab.addr(2, 254),
        lab.addr(2, 1),
    );
    for (ns, dev, ip) in [
        (&a, "v0", ip_a),
        (&r, "ra", ip_ra),
        (&r, "rb", ip_rb),
        (&b, "v0", ip_b),
    ] {
        addr(ns, dev, ip, 24).unwrap();
    }
    neigh(&a, "v0", ip_ra, &mra).unwrap();
    neigh(&r, "ra", ip_a, &ma).unwrap();
    neigh(&r, "rb", ip_b, &mb).unwrap();
    neigh(&b, "v0", ip_rb, &mrb).unwrap();
    xtask::cmd::ip(&[
        "-n",
        &a,
        "route",
        "add",
        &format!("{}/24", lab.addr(2, 0)),
        "via",
        &ip_ra.to_string(),
    ])
    .unwrap();
    xtask::cmd::ip(&[
        "-n",
        &b,
        "route",
        "add",
        &format!("{}/24", lab.addr(1, 0)),
        "via",
        &ip_rb.to_string(),
    ])
    .unwrap();
    sysctl(&r, "net.ipv4.ip_forward=1").unwrap();
    sysctl(&r, "net.ipv4.icmp_ratelimit=0").unwrap();

    let run = start(lab.namespaces(), &[]);
    send_udp_df(
        &a,
        SocketAddrV4::new(ip_a, 41005),
        SocketAddrV4::new(ip_b, 5005),
        N as u32,
        1200,
        Df::Probe,
    )
    .unwrap();
    assert!(wait_until(|| nstat(&a, "IcmpInDestUnreachs").unwrap() == N));
    let f = stop(run);

    let (sa, sb) = (ip_a.to_string(), ip_b.to_string());
    let about_flow = |r: &serde_json::Value| endpoints_are(r, "udp", &sa, &sb, Some((41005, 5005)));
    let icmps = f.totals("icmp");
    let find = |ns: &str, dir: &str| {
        let v: Vec<_> = icmps
            .iter()
            .filter(|i| i["netns"] == ns && i["dir"] == dir)
            .collect();
        assert_eq!(v.len(), 1, "{ns} {dir}: {icmps:#?}");
        v[0]
    };
    // Sent by the router's stack (icmp_send does not pass the MTU on)...
    let sent = find(&r, "sent");
    assert_eq!(
        (&sent["kind"], &sent["count"], &sent["iface"]),
        (&"frag_needed".into(), &N.into(), &"ra".into())
    );
    assert!(about_flow(sent), "{sent}");
    // ...and seen leaving it and reaching the sender, with the MTU of the next hop.
    for (ns, dir) in [(&r, "egress"), (&a, "ingress")] {
        let i = find(ns, dir);
        assert_eq!(
            (&i["kind"], &i["mtu"], &i["count"]),
            (&"frag_needed".into(), &1000.into(), &N.into()),
            "{i}"
        );
        assert!(about_flow(i), "{i}");
    }
    // The packets themselves: dropped as too big where they came in.
    let drops = drops_in(&f, &r);
    assert_eq!(drops.len(), 1, "{drops:#?}");
    assert_dropped_for(drops[0], "PKT_TOO_BIG");
    assert_eq!(
        (&drops[0]["count"], &drops[0]["iface"]),
        (&N.into(), &"ra".into())
    );
    assert!(about_flow(drops[0]));
}

/// The two ends of a veth pair with different MTUs: the finding, and the
/// drops of what does not fit, with their reason.
#[test]
fn veth_ends_with_different_mtus() {
    let p = Pair::new(1500).unwrap();
    let (a, b) = (&p.a, &p.b);
    xtask::cmd::ip(&["-n", &b.ns, "link", "set", &b.dev, "mtu", "1000"]).unwrap();
    let run = start(p.namespaces(), &[]);
    let before = nstat(&b.ns, "IpInReceives").unwrap();
    send_udp_df(
        &a.ns,
        SocketAddrV4::new(a.ip, 41006),
        SocketAddrV4::new(b.ip, 5006),
        N as u32,
        1200,
        Df::Want,
    )
    .unwrap();
    // What fits still arrives; the big ones vanish.
    send_udp_df(
        &a.ns,
        SocketAddrV4::new(a.ip, 41007),
        SocketAddrV4::new(b.ip, 5007),
        1,
        100,
        Df::Want,
    )
    .unwrap();
    assert!(wait_until(|| nstat(&b.ns, "IpInReceives").unwrap() > before));
    let f = stop(run);

    let (sa, sb) = (a.ip.to_string(), b.ip.to_string());
    let big = |r: &serde_json::Value| endpoints_are(r, "udp", &sa, &sb, Some((41006, 5006)));
    let mtu = f.totals("mtu");
    assert_eq!(mtu.len(), 1, "{mtu:#?}");
    let m = mtu[0];
    assert_eq!(
        (&m["kind"], &m["limit"]),
        (&"veth_mtu_mismatch".into(), &1000.into()),
        "{m}"
    );
    assert!(
        m["finding"]
            .as_str()
            .unwrap()
            .starts_with("veth ends differ: v0 ("),
        "{m}"
    );
    let hit = m["flows"].as_array().unwrap();
    assert_eq!(hit.len(), 1, "only the big flow: {m}");
    assert!(big(&hit[0]) && hit[0]["max_len"] == 14 + 28 + 1200, "{m}");
    // The kernel drops them when the veth hands them to its peer.
    let drops: Vec<_> = f.totals("drop").into_iter().filter(|d| big(d)).collect();
    assert_eq!(drops.len(), 1, "{drops:#?}");
    let d = drops[0];
    assert_eq!(
        (&d["netns"], &d["iface"], &d["count"]),
        (&a.ns.as_str().into(), &"v0".into(), &N.into()),
        "{d}"
    );
    assert_dropped_for(d, "NOT_SPECIFIED");
    assert!(
        d["location"]
            .as_str()
            .unwrap()
            .starts_with("__dev_forward_skb"),
        "{d}"
    );
    assert!(d["hint"].as_str().unwrap().contains("MTU"), "{d}");
    // None reached the other end.
    assert!(
        flows_at(&f, &b.ns, &b.dev, "ingress")
            .iter()
            .all(|r| !big(r))
    );
}
