//! Netfilter verdicts per flow and hook, from the observers around the filter
//! table, checked against the rules' own counters and the drop reasons.

mod common;

use std::{net::SocketAddrV4, time::Duration};

use common::*;
use xtask::{
    lab::{Bridged, Overlay, OverlayOpts, Pair, iptables, sysctl},
    peers::{iptables_packets, nstat},
    traffic::{UdpSink, send_udp},
};

const N: u64 = 9;
const M: u64 = 4;

/// The drop rows of `netns` for the flow of `verdict`, summed.
fn netfilter_drops_of(
    f: &xtask::tracer::Finished,
    netns: &str,
    verdict: &serde_json::Value,
) -> u64 {
    drops_in(f, netns)
        .iter()
        .filter(|d| {
            dropped_for(d, "NETFILTER_DROP")
                && ["proto", "src", "dst", "sport", "dport", "vni", "inner"]
                    .iter()
                    .all(|k| d[k] == verdict[k])
        })
        .map(|d| d["count"].as_u64().unwrap())
        .sum()
}

/// Scenarios 1 and 5 at once on an overlay: host B drops VXLAN at input; a
/// flow to another port of host B is accepted there.
#[test]
fn vxlan_dropped_at_input_other_port_accepted() {
    let lab = Overlay::new(OverlayOpts::default()).unwrap();
    let hb = &lab.b.ns;
    iptables(
        hb,
        &["-A", "INPUT", "-p", "udp", "--dport", "4789", "-j", "DROP"],
    )
    .unwrap();
    let other = SocketAddrV4::new(lab.b.underlay_ip, 5555);
    let sink = UdpSink::start(hb, other).unwrap();
    let run = start(lab.namespaces(), &[]);
    let before = nstat(hb, "IpInReceives").unwrap();
    let (c1, c2) = (&lab.c1, &lab.c2);
    send_udp(
        &c1.ns,
        SocketAddrV4::new(c1.ip, 41000),
        SocketAddrV4::new(c2.ip, 5001),
        N as u32,
        100,
    )
    .unwrap();
    send_udp(
        &lab.a.ns,
        SocketAddrV4::new(lab.a.underlay_ip, 5556),
        other,
        M as u32,
        20,
    )
    .unwrap();
    wait_received(hb, before, N + M);
    assert!(sink.wait_for(M, Duration::from_secs(10)));
    let f = stop(run);
    assert_eq!(iptables_packets(hb, "INPUT", "dpt:4789").unwrap(), N);

    let input = verdicts_at(&f, hb, "input");
    let (aip, bip) = (lab.a.underlay_ip.to_string(), bip(&lab));
    let vxlan: Vec<_> = input.iter().filter(|r| r["dport"] == 4789).collect();
    assert_eq!(vxlan.len(), 1, "{input:#?}");
    let v = vxlan[0];
    assert_eq!(
        (v["src"].as_str(), v["dst"].as_str()),
        (Some(aip.as_str()), Some(bip.as_str()))
    );
    assert_eq!(
        (&v["table"], &v["family"], &v["iface"]),
        (&"filter".into(), &"ipv4".into(), &"ul0".into())
    );
    assert_eq!(
        (v["dropped"].as_u64(), v["accepted"].as_u64()),
        (Some(N), Some(0)),
        "{v}"
    );
    assert_eq!(v["vni"], lab.opts.vni);
    assert_eq!(v["inner"]["dport"], 5001);
    assert_eq!(
        netfilter_drops_of(&f, hb, v),
        N,
        "verdicts agree with NETFILTER_DROP drops"
    );

    let ok = only(&input, "udp", &aip, &bip, Some((5556, 5555)));
    assert_eq!(
        (ok["accepted"].as_u64(), ok["dropped"].as_u64()),
        (Some(M), Some(0)),
        "{ok}"
    );
    // Only where a table can decide: host B's INPUT, nothing at prerouting.
    assert!(verdicts_at(&f, hb, "prerouting").is_empty());
    assert!(
        f.totals("verdict")
            .iter()
            .all(|r| r["netns"] == hb.as_str() && r["hook"] == "input")
    );
}

fn bip(lab: &Overlay) -> String {
    lab.b.underlay_ip.to_string()
}

/// Scenario 5: DNS blocked; another UDP port on the server works.
#[test]
fn dns_dropped_other_port_accepted() {
    let p = Pair::new(1500).unwrap();
    let (client, server) = (&p.a, &p.b);
    iptables(
        &server.ns,
        &["-A", "INPUT", "-p", "udp", "--dport", "53", "-j", "DROP"],
    )
    .unwrap();
    let ok_port = SocketAddrV4::new(server.ip, 5353);
    let sink = UdpSink::start(&server.ns, ok_port).unwrap();
    let run = start(p.namespaces(), &[]);
    let before = nstat(&server.ns, "IpInReceives").unwrap();
    let from = SocketAddrV4::new(client.ip, 40053);
    send_udp(
        &client.ns,
        from,
        SocketAddrV4::new(server.ip, 53),
        N as u32,
        30,
    )
    .unwrap();
    send_udp(&client.ns, from, ok_port, M as u32, 30).unwrap();
    wait_received(&server.ns, before, N + M);
    assert!(sink.wait_for(M, Duration::from_secs(10)));
    let f = stop(run);

    let (cip, sip) = (client.ip.to_string(), server.ip.to_string());
    let input = verdicts_at(&f, &server.ns, "input");
    let dns = only(&input, "udp", &cip, &sip, Some((40053, 53)));
    assert_eq!(
        (dns["dropped"].as_u64(), dns["accepted"].as_u64()),
        (Some(N), Some(0)),
        "{dns}"
    );
    assert_eq!(netfilter_drops_of(&f, &server.ns, dns), N);
    let mdns = only(&input, "udp", &cip, &sip, Some((40053, 5353)));
    assert_eq!(
        (mdns["accepted"].as_u64(), mdns["dropped"].as_u64()),
        (Some(M), Some(0)),
        "{mdns}"
    );
    // The client has no firewall: nothing to observe there.
    assert!(
        f.totals("verdict")
            .iter()
            .all(|r| r["netns"] == server.ns.as_str())
    );
}

/// Scenario 6: bridged traffic reaches iptables FORWARD through br_netfilter.
#[test]
fn bridged_flows_are_filtered_at_forward() {
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
    let sink = UdpSink::start(&c2.ns, ok).unwrap();
    let run = start(b.namespaces(), &[]);
    let from = SocketAddrV4::new(c1.ip, 40700);
    send_udp(&c1.ns, from, SocketAddrV4::new(c2.ip, 7000), N as u32, 50).unwrap();
    send_udp(&c1.ns, from, ok, M as u32, 50).unwrap();
    assert!(sink.wait_for(M, Duration::from_secs(10)));
    assert!(wait_until(|| iptables_packets(
        &b.bridge_ns,
        "FORWARD",
        "dpt:7000"
    )
    .unwrap()
        == N));
    let f = stop(run);

    let (ip1, ip2) = (c1.ip.to_string(), c2.ip.to_string());
    let fwd = verdicts_at(&f, &b.bridge_ns, "forward");
    let blocked = only(&fwd, "udp", &ip1, &ip2, Some((40700, 7000)));
    assert_eq!(
        (blocked["dropped"].as_u64(), blocked["accepted"].as_u64()),
        (Some(N), Some(0)),
        "{blocked}"
    );
    let passed = only(&fwd, "udp", &ip1, &ip2, Some((40700, 7001)));
    assert_eq!(
        (passed["accepted"].as_u64(), passed["dropped"].as_u64()),
        (Some(M), Some(0)),
        "{passed}"
    );
    // As iptables sees it: `-i br0` (the port is its --physdev-in).
    assert_eq!(blocked["iface"], b.bridge.as_str());
}

/// REJECT is a drop too, and what it sends back is visible.
#[test]
fn reject_counts_as_dropped_and_its_answer_shows() {
    let p = Pair::new(1500).unwrap();
    let (client, server) = (&p.a, &p.b);
    sysctl(&server.ns, "net.ipv4.icmp_ratelimit=0").unwrap();
    iptables(
        &server.ns,
        &[
            "-A", "INPUT", "-p", "udp", "--dport", "7100", "-j", "REJECT",
        ],
    )
    .unwrap();
    iptables(
        &server.ns,
        &[
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            "7101",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ],
    )
    .unwrap();
    let run = start(p.namespaces(), &[]);
    let before = nstat(&server.ns, "IpInReceives").unwrap();
    send_udp(
        &client.ns,
        SocketAddrV4::new(client.ip, 40710),
        SocketAddrV4::new(server.ip, 7100),
        N as u32,
        10,
    )
    .unwrap();
    let closed = SocketAddrV4::new(server.ip, 7101);
    connect_refused(&client.ns, closed, M);
    wait_received(&server.ns, before, N + M);
    let f = stop(run);

    let (cip, sip) = (client.ip.to_string(), server.ip.to_string());
    let input = verdicts_at(&f, &server.ns, "input");
    let udp = only(&input, "udp", &cip, &sip, Some((40710, 7100)));
    assert_eq!(
        (udp["dropped"].as_u64(), udp["accepted"].as_u64()),
        (Some(N), Some(0)),
        "{udp}"
    );
    let tcp_dropped: u64 = input
        .iter()
        .filter(|r| r["proto"] == "tcp" && r["dport"] == 7101)
        .map(|r| r["dropped"].as_u64().unwrap())
        .sum();
    assert_eq!(tcp_dropped, M, "{input:#?}");
    // The answers: ICMP port unreachable for UDP, RST for TCP, leaving the server.
    let sent = flows_at(&f, &server.ns, "v0", "egress");
    let icmp: u64 = sent
        .iter()
        .filter(|r| r["proto"] == "icmp" && r["dst"] == cip.as_str())
        .map(|r| r["packets"].as_u64().unwrap())
        .sum();
    assert_eq!(icmp, N, "{sent:#?}");
    let rst: u64 = sent
        .iter()
        .filter(|r| r["proto"] == "tcp" && r["sport"] == 7101)
        .map(|r| r["packets"].as_u64().unwrap())
        .sum();
    assert_eq!(rst, M, "{sent:#?}");
}

/// Two DROP rules for two ports; sends `a` datagrams to port 7200 and `b` to 7201.
fn two_rules(extra: &[&str], a: u64, b: u64) -> (Pair, xtask::tracer::Finished) {
    let p = Pair::new(1500).unwrap();
    let (client, server) = (&p.a, &p.b);
    for port in ["7200", "7201"] {
        iptables(
            &server.ns,
            &["-A", "INPUT", "-p", "udp", "--dport", port, "-j", "DROP"],
        )
        .unwrap();
    }
    let run = start(p.namespaces(), extra);
    let before = nstat(&server.ns, "IpInReceives").unwrap();
    let from = SocketAddrV4::new(client.ip, 40720);
    send_udp(
        &client.ns,
        from,
        SocketAddrV4::new(server.ip, 7200),
        a as u32,
        20,
    )
    .unwrap();
    send_udp(
        &client.ns,
        from,
        SocketAddrV4::new(server.ip, 7201),
        b as u32,
        20,
    )
    .unwrap();
    wait_received(&server.ns, before, a + b);
    let f = stop(run);
    (p, f)
}

fn rule_text(port: u16) -> String {
    format!("-A INPUT -p udp -m udp --dport {port} -j DROP")
}

/// Passive: the rules' counters moved by N and 2N, the flows lost N and 2N.
#[test]
fn each_flow_is_tied_to_its_own_rule_from_counters() {
    let (p, f) = two_rules(&[], N, 2 * N);
    let (cip, sip) = (p.a.ip.to_string(), p.b.ip.to_string());
    let input = verdicts_at(&f, &p.b.ns, "input");
    for (port, n) in [(7200, N), (7201, 2 * N)] {
        let v = only(&input, "udp", &cip, &sip, Some((40720, port)));
        assert_eq!(v["dropped"], n, "{v}");
        assert_eq!(v["rule"], rule_text(port).as_str(), "{v}");
    }
}

/// Exact: with equal counts the counters cannot tell; nftables tracing can.
#[test]
fn explain_names_the_rule_that_dropped_each_flow() {
    let (p, f) = two_rules(&["--explain", "udp dport { 7200, 7201 }"], N, N);
    let (cip, sip) = (p.a.ip.to_string(), p.b.ip.to_string());
    let traced = f.totals("rule");
    let input = verdicts_at(&f, &p.b.ns, "input");
    for port in [7200, 7201] {
        let r = only(
            &traced
                .iter()
                .copied()
                .filter(|r| r["netns"] == p.b.ns.as_str())
                .collect::<Vec<_>>(),
            "udp",
            &cip,
            &sip,
            Some((40720, port)),
        );
        assert_eq!(
            (&r["table"], &r["chain"], &r["verdict"]),
            (&"filter".into(), &"INPUT".into(), &"drop".into()),
            "{r}"
        );
        assert_eq!(
            (&r["family"], &r["count"], &r["hook"]),
            (&"ip".into(), &N.into(), &"input".into()),
            "{r}"
        );
        assert_eq!(r["rule"], rule_text(port).as_str(), "{r}");
        assert!(r["handle"].as_u64().is_some(), "{r}");
        let v = only(&input, "udp", &cip, &sip, Some((40720, port)));
        assert_eq!(
            (&v["dropped"], &v["rule"]),
            (&N.into(), &rule_text(port).as_str().into()),
            "{v}"
        );
    }
    // The sender's side was traced too: its output chain accepted them.
    let out: Vec<_> = traced
        .iter()
        .filter(|r| r["netns"] == p.a.ns.as_str())
        .collect();
    assert!(out.iter().all(|r| r["verdict"] == "accept"), "{out:#?}");
}

fn tracer_tables(ns: &str) -> Vec<String> {
    let out = xtask::cmd::in_ns(ns, "nft", &["list", "tables"]).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("tracer_"))
        .map(str::to_string)
        .collect()
}

/// tracer's own table goes with it; one left by a killed run goes at the next start.
#[test]
fn explain_table_removed_on_exit_and_after_a_kill() {
    let p = Pair::new(1500).unwrap();
    let ns = [p.a.ns.clone()];
    let run = start(&ns, &["--explain", "udp dport 9"]);
    assert_eq!(
        tracer_tables(&p.a.ns),
        [format!("table inet tracer_{}", run.pid())]
    );
    run.stop().unwrap();
    assert!(tracer_tables(&p.a.ns).is_empty());

    let killed = start(&ns, &["--explain", "udp dport 9"]);
    let pid = killed.pid();
    killed.stop_with(libc::SIGKILL).unwrap();
    assert_eq!(
        tracer_tables(&p.a.ns),
        [format!("table inet tracer_{pid}")],
        "a SIGKILL cannot clean up"
    );
    // Any later run removes it; it makes none of its own without --explain.
    let next = start(&ns, &[]);
    assert!(tracer_tables(&p.a.ns).is_empty());
    let f = next.stop().unwrap();
    assert!(
        f.stderr
            .contains(&format!("removed table inet tracer_{pid}")),
        "{}",
        f.stderr
    );
}

/// Observers go only where a table can decide, and follow tables created
/// after tracer started. Kernels without netfilter links (< 6.4) have no
/// observers: fentry/fexit or kprobes see every table, the later one too.
#[test]
fn observers_follow_the_namespaces_tables() {
    let p = Pair::new(1500).unwrap();
    let (client, server) = (&p.a, &p.b);
    let with_table = if kernel().netfilter_links { 2 } else { 0 };
    let run = start(p.namespaces(), &[]);
    let observers = || {
        xtask::bpf::links_held_by(run.pid())
            .unwrap()
            .iter()
            .filter(|l| l.link_type == "netfilter")
            .count()
    };
    assert_eq!(observers(), 0, "no firewall anywhere yet");
    iptables(
        &server.ns,
        &["-A", "INPUT", "-p", "udp", "--dport", "7300", "-j", "DROP"],
    )
    .unwrap();
    assert!(
        wait_until(|| observers() == with_table),
        "{} observers",
        observers()
    );
    let before = nstat(&server.ns, "IpInReceives").unwrap();
    send_udp(
        &client.ns,
        SocketAddrV4::new(client.ip, 40730),
        SocketAddrV4::new(server.ip, 7300),
        N as u32,
        20,
    )
    .unwrap();
    wait_received(&server.ns, before, N);
    iptables(&server.ns, &["-F", "INPUT"]).unwrap();
    xtask::cmd::in_ns(&server.ns, "nft", &["delete", "table", "ip", "filter"]).unwrap();
    assert!(
        wait_until(|| observers() == 0),
        "{} observers left",
        observers()
    );
    let f = stop(run);
    let input = verdicts_at(&f, &server.ns, "input");
    let (cip, sip) = (client.ip.to_string(), server.ip.to_string());
    let v = only(&input, "udp", &cip, &sip, Some((40730, 7300)));
    assert_eq!(
        (v["dropped"].as_u64(), v["accepted"].as_u64()),
        (Some(N), Some(0)),
        "{v}"
    );
    assert!(
        f.totals("verdict")
            .iter()
            .all(|r| r["netns"] == server.ns.as_str()),
        "only where the table was"
    );
}
