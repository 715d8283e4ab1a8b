//! tracer on a two-node Docker Swarm: two real dockerd, each in a lab
//! namespace and a mount namespace of its own, joined by an underlay veth,
//! with an attachable overlay network `ov-net` and one container on each node.
//! tracer runs on a node as a user would: `tracer --netns all`, started
//! before the containers, so the overlay's namespace (created when the
//! first local container joins) appears while it runs.

mod common;

use std::net::SocketAddrV4;

use common::*;
use serde_json::Value;
use xtask::{
    docker::{Container, Daemon, Swarm},
    lab::Lab,
    tracer::{Finished, TracerRun},
    traffic::{Df, UdpSink, send_udp_df},
};

fn start_on(daemon: &Daemon, extra: &[&str]) -> TracerRun {
    let mut args: Vec<String> = vec!["--netns".into(), "all".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    TracerRun::start_in(&daemon.enter(), tracer_bin(), &args, None).expect("start tracer")
}

fn send(from: &Container, to: &Container, sport: u16, port: u16, n: u32, payload: usize) {
    send_udp_df(
        &from.netns(),
        SocketAddrV4::new(from.ip, sport),
        SocketAddrV4::new(to.ip, port),
        n,
        payload,
        Df::Dont,
    )
    .unwrap();
}

fn is_inner(r: &Value, from: &Container, to: &Container, sport: u16, dport: u16) -> bool {
    endpoints_are(
        &r["inner"],
        "udp",
        &from.ip.to_string(),
        &to.ip.to_string(),
        Some((sport, dport)),
    )
}

/// Scenario 1 on a real Swarm: UDP 4789 blocked on the worker. The drop,
/// the container flow it carried and the rule, at once; counts exact.
#[test]
fn vxlan_blocked_on_a_swarm_node_names_the_drop_the_inner_flow_and_the_rule() {
    let mut lab = Lab::new().unwrap();
    let s = Swarm::new(&mut lab, 1500).unwrap();
    s.worker
        .iptables(&["-I", "INPUT", "-p", "udp", "--dport", "4789", "-j", "DROP"])
        .unwrap();
    let run = start_on(&s.worker, &[]);
    let c1 = s.manager.run("c1", Swarm::OVERLAY, &[]).unwrap();
    let c2 = s.worker.run("c2", Swarm::OVERLAY, &[]).unwrap();
    // The overlay's namespace, named by its network, and the container.
    wait_said(&run, &format!("tracer: following {} [", Swarm::OVERLAY));
    wait_following(&run, "c2", "eth0");
    send(&c1, &c2, 41000, 5001, 10, 100);
    let blocked = || {
        s.worker
            .iptables(&["-L", "INPUT", "-v", "-x", "-n"])
            .unwrap()
            .lines()
            .filter(|l| l.contains("dpt:4789"))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    assert!(wait_until(|| blocked() >= 10), "counter at {}", blocked());
    let f = stop(run);
    let drops: Vec<&Value> = drops_in(&f, "host")
        .into_iter()
        .filter(|r| is_inner(r, &c1, &c2, 41000, 5001))
        .collect();
    assert_eq!(drops.len(), 1, "{:#?}", drops_in(&f, "host"));
    let d = drops[0];
    assert_eq!(d["iface"], "ul0");
    assert_eq!(d["reason"], "NETFILTER_DROP");
    assert_eq!(d["count"], 10);
    assert_eq!(d["dport"], 4789);
    assert_eq!(d["src"], s.manager_ip.to_string());
    let v: Vec<&Value> = verdicts_at(&f, "host", "input")
        .into_iter()
        .filter(|r| is_inner(r, &c1, &c2, 41000, 5001))
        .collect();
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(v[0]["dropped"], 10);
    assert_eq!(v[0]["rule"], "-A INPUT -p udp -m udp --dport 4789 -j DROP");
    let vni = d["vni"].as_u64().expect("a VNI");
    assert!(vni >= 4096, "Docker's VNIs start at 4096: {vni}");
}

/// Docker's vxlan0 has no local, remote or dev: its underlay is found
/// from its FDB and the route to the remote node, and a lowered underlay
/// MTU gives the finding, with the flows over the limit.
#[test]
fn lowered_underlay_mtu_on_a_swarm_gives_the_mtu_finding() {
    let mut lab = Lab::new().unwrap();
    let s = Swarm::new(&mut lab, 1400).unwrap();
    let run = start_on(&s.manager, &[]);
    let c1 = s.manager.run("c1", Swarm::OVERLAY, &[]).unwrap();
    let c2 = s.worker.run("c2", Swarm::OVERLAY, &[]).unwrap();
    wait_following(&run, "c1", "eth0");
    // Said once vxlan0's FDB names the worker, which gossip fills in.
    wait_said(
        &run,
        &format!(
            "tracer: MTU problem: overlay MTU 1450 + 50 VXLAN > underlay MTU 1400: packets \
             over 1350 bytes on vxlan0 ({}) fragment on ul0 (host)",
            Swarm::OVERLAY
        ),
    );
    // Swarm's ingress network has a vxlan0 of its own, over the same
    // underlay; gossip fills its FDB on its own schedule.
    wait_said(&run, "on vxlan0 (ingress) fragment on ul0 (host)");
    let sink = UdpSink::start(&c2.netns(), SocketAddrV4::new(c2.ip, 5002)).unwrap();
    // 1372-byte IP packets fit the overlay, not the underlay: they fragment.
    send(&c1, &c2, 41001, 5002, 5, 1344);
    assert!(wait_until(|| sink.received() >= 5), "{}", sink.received());
    assert_eq!(sink.received(), 5);
    let f: Finished = stop(run);
    let rows: Vec<&Value> = f
        .totals("mtu")
        .into_iter()
        .filter(|r| r["kind"] == "vxlan_overhead" && r["devices"][0]["netns"] == Swarm::OVERLAY)
        .collect();
    assert_eq!(rows.len(), 1, "{:#?}", f.totals("mtu"));
    assert_eq!(rows[0]["limit"], 1350);
    // The underlay veth's peer is on the other node, not traced: no problem.
    assert!(!f.stderr.contains("MTU problem: veth"), "{}", f.stderr);
    let hits: Vec<&Value> = rows[0]["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["sport"] == 41001)
        .collect();
    assert!(!hits.is_empty(), "{:#?}", rows[0]);
    for h in hits {
        assert_eq!(h["packets"], 5);
        assert_eq!(h["max_len"], 1372 + 14);
    }
}
