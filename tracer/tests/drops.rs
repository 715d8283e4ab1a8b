//! Drops per flow with the kernel's reason and place: scenarios 1, 5 and 7,
//! each checked against a counter the test reads independently.

mod common;

use std::net::SocketAddrV4;

use common::*;
use xtask::{
    lab::{Overlay, OverlayOpts, Pair, iptables, netns_inode, sysctl},
    peers::{Bpftrace, bpftrace_counts, iptables_packets, kernel_reason_value, nstat},
    traffic::{UdpSink, send_udp},
};

const N: u64 = 12;

/// Scenario 1: host B's firewall drops VXLAN. The drops show on host B's
/// underlay, with the outer flow, the VNI and the container flow inside.
#[test]
fn vxlan_port_blocked_by_a_firewall() {
    let lab = Overlay::new(OverlayOpts::default()).unwrap();
    iptables(
        &lab.b.ns,
        &["-A", "INPUT", "-p", "udp", "--dport", "4789", "-j", "DROP"],
    )
    .unwrap();
    let run = start(lab.namespaces(), &[]);
    let (c1, c2) = (&lab.c1, &lab.c2);
    let before = nstat(&lab.b.ns, "IpInReceives").unwrap();
    send_udp(
        &c1.ns,
        SocketAddrV4::new(c1.ip, 41000),
        SocketAddrV4::new(c2.ip, 5001),
        N as u32,
        100,
    )
    .unwrap();
    wait_received(&lab.b.ns, before, N);
    let f = stop(run);
    assert_eq!(iptables_packets(&lab.b.ns, "INPUT", "dpt:4789").unwrap(), N);

    let drops = drops_in(&f, &lab.b.ns);
    assert_eq!(drops.len(), 1, "{drops:#?}");
    let d = drops[0];
    assert_dropped_for(d, "NETFILTER_DROP");
    assert_eq!(d["count"], N, "{d}");
    assert_eq!(d["iface"], "ul0", "{d}");
    // A netfilter function (nf_hook_slow, or nft_do_chain with iptables-nft), with its offset.
    let location = d["location"].as_str().unwrap();
    assert!(
        location.starts_with("nf") && location.contains("+0x"),
        "{d}"
    );
    let (a_ip, b_ip) = (lab.a.underlay_ip.to_string(), lab.b.underlay_ip.to_string());
    assert!(
        d["src"] == a_ip.as_str() && d["dst"] == b_ip.as_str() && d["dport"] == 4789,
        "{d}"
    );
    assert_eq!(d["vni"], lab.opts.vni, "{d}");
    let (c1ip, c2ip) = (c1.ip.to_string(), c2.ip.to_string());
    assert!(
        endpoints_are(&d["inner"], "udp", &c1ip, &c2ip, Some((41000, 5001))),
        "{d}"
    );
    // Nothing was dropped anywhere else in the lab.
    assert_eq!(f.totals("drop").len(), 1, "{:#?}", f.totals("drop"));
    // Each drop was also announced at once, the first time.
    let first: Vec<_> = f
        .rows
        .iter()
        .filter(|r| r["type"] == "drop" && r["scope"] == "first")
        .collect();
    assert_eq!(first.len(), 1, "{first:#?}");
    assert_dropped_for(first[0], "NETFILTER_DROP");
}

/// Scenario 5: DNS blocked on the server.
#[test]
fn dns_blocked_on_the_server() {
    let p = Pair::new(1500).unwrap();
    let (client, server) = (&p.a, &p.b);
    iptables(
        &server.ns,
        &["-A", "INPUT", "-p", "udp", "--dport", "53", "-j", "DROP"],
    )
    .unwrap();
    let dns = SocketAddrV4::new(server.ip, 53);
    let listener = UdpSink::start(&server.ns, dns).unwrap();
    let run = start(p.namespaces(), &[]);
    let before = nstat(&server.ns, "IpInReceives").unwrap();
    send_udp(
        &client.ns,
        SocketAddrV4::new(client.ip, 40053),
        dns,
        N as u32,
        40,
    )
    .unwrap();
    wait_received(&server.ns, before, N);
    let f = stop(run);
    assert_eq!(listener.received(), 0);
    assert_eq!(iptables_packets(&server.ns, "INPUT", "dpt:53").unwrap(), N);

    let drops = drops_in(&f, &server.ns);
    assert_eq!(drops.len(), 1, "{drops:#?}");
    let d = drops[0];
    let (cip, sip) = (client.ip.to_string(), server.ip.to_string());
    assert!(
        endpoints_are(d, "udp", &cip, &sip, Some((40053, 53))),
        "{d}"
    );
    assert_dropped_for(d, "NETFILTER_DROP");
    assert_eq!(d["count"], N, "{d}");
    assert_eq!(d["iface"], "v0");
    assert_eq!(
        d["bytes"],
        N * (20 + 8 + 40),
        "skb->len at INPUT starts at the IP header: {d}"
    );
    assert!(d["vni"].is_null() && d["inner"].is_null());
}

/// Scenario 7: nothing listens. UDP and TCP to closed ports are NO_SOCKET
/// drops, and the ICMP port unreachables and RSTs the server sent are there.
#[test]
fn nothing_listens() {
    let p = Pair::new(1500).unwrap();
    let (client, server) = (&p.a, &p.b);
    // Every datagram gets its ICMP error, not just the first few.
    sysctl(&server.ns, "net.ipv4.icmp_ratelimit=0").unwrap();
    let run = start(p.namespaces(), &[]);
    let udp_no_ports = nstat(&server.ns, "UdpNoPorts").unwrap();
    send_udp(
        &client.ns,
        SocketAddrV4::new(client.ip, 40009),
        SocketAddrV4::new(server.ip, 9),
        N as u32,
        10,
    )
    .unwrap();
    let closed = SocketAddrV4::new(server.ip, 7);
    connect_refused(&client.ns, closed, N);
    assert!(wait_until(|| nstat(&server.ns, "UdpNoPorts").unwrap()
        - udp_no_ports
        == N));
    let f = stop(run);

    let (cip, sip) = (client.ip.to_string(), server.ip.to_string());
    let drops = drops_in(&f, &server.ns);
    let udp: Vec<_> = drops.iter().filter(|d| d["proto"] == "udp").collect();
    assert_eq!(udp.len(), 1, "{drops:#?}");
    assert!(
        endpoints_are(udp[0], "udp", &cip, &sip, Some((40009, 9))),
        "{}",
        udp[0]
    );
    assert_dropped_for(udp[0], "NO_SOCKET");
    assert_eq!(udp[0]["count"], N, "{}", udp[0]);
    // Each connect() came from its own port: N flows, one SYN each.
    let tcp: Vec<_> = drops.iter().filter(|d| d["proto"] == "tcp").collect();
    assert!(
        tcp.iter()
            .all(|d| dropped_for(d, "NO_SOCKET") && d["dport"] == 7 && d["dst"] == sip.as_str()),
        "{tcp:#?}"
    );
    assert_eq!(
        tcp.iter()
            .map(|d| d["count"].as_u64().unwrap())
            .sum::<u64>(),
        N
    );
    assert_eq!(drops.len(), 1 + tcp.len(), "{drops:#?}");

    // What the server sent back.
    let sent = flows_at(&f, &server.ns, "v0", "egress");
    let icmp: u64 = sent
        .iter()
        .filter(|r| r["proto"] == "icmp" && r["dst"] == cip.as_str())
        .map(|r| r["packets"].as_u64().unwrap())
        .sum();
    assert_eq!(icmp, N, "ICMP port unreachable: {sent:#?}");
    let rsts: u64 = sent
        .iter()
        .filter(|r| r["proto"] == "tcp" && r["sport"] == 7)
        .map(|r| r["packets"].as_u64().unwrap())
        .sum();
    assert_eq!(rsts, N, "RST: {sent:#?}");
}

/// tracer's per-reason totals equal what bpftrace counts on the same
/// tracepoint for the same namespace, in the same run.
#[test]
fn per_reason_totals_agree_with_bpftrace() {
    let p = Pair::new(1500).unwrap();
    let (client, server) = (&p.a, &p.b);
    iptables(
        &server.ns,
        &["-A", "INPUT", "-p", "udp", "--dport", "5300", "-j", "DROP"],
    )
    .unwrap();
    let inode = netns_inode(&server.ns).unwrap();
    let bpftrace = Bpftrace::start(&format!(
        "tracepoint:skb:kfree_skb /((struct sk_buff *)args->skbaddr)->dev->nd_net.net->ns.inum == {inode}/ \
         {{ @[args->reason] = count(); }}"
    ))
    .unwrap();
    let run = start(p.namespaces(), &[]);
    let before = nstat(&server.ns, "IpInReceives").unwrap();
    let from = SocketAddrV4::new(client.ip, 40100);
    send_udp(
        &client.ns,
        from,
        SocketAddrV4::new(server.ip, 5300),
        N as u32,
        10,
    )
    .unwrap();
    send_udp(
        &client.ns,
        from,
        SocketAddrV4::new(server.ip, 5301),
        2 * N as u32,
        10,
    )
    .unwrap();
    wait_received(&server.ns, before, 3 * N);
    let f = stop(run);
    let witness = bpftrace_counts(&bpftrace.stop().unwrap());
    assert_eq!(
        iptables_packets(&server.ns, "INPUT", "dpt:5300").unwrap(),
        N
    );
    assert_eq!(nstat(&server.ns, "UdpNoPorts").unwrap(), 2 * N);

    let mut ours = std::collections::HashMap::<String, u64>::new();
    for d in drops_in(&f, &server.ns) {
        let value = kernel_reason_value(d["reason"].as_str().unwrap()).unwrap();
        *ours.entry(value.to_string()).or_default() += d["count"].as_u64().unwrap();
    }
    assert_eq!(ours, witness, "tracer {ours:?} vs bpftrace {witness:?}");
    assert_eq!(
        ours[&kernel_reason_value("NETFILTER_DROP").unwrap().to_string()],
        N
    );
    assert_eq!(
        ours[&kernel_reason_value("NO_SOCKET").unwrap().to_string()],
        2 * N
    );
}
