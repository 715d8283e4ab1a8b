//! Bad input gets one clear line and a non-zero exit; nothing tracer
//! attaches outlives it.

mod common;

use std::process::{Command, Output};

use common::*;
use xtask::{
    bpf::{bpftool_finds, links_held_by, tcx_attached},
    lab::Lab,
};

fn tracer(args: &[&str]) -> Output {
    Command::new(tracer_bin()).args(args).output().unwrap()
}

/// Exactly one line on stderr containing `needle`, nothing on stdout, exit `code`.
fn assert_one_line_error(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    assert!(stderr.starts_with("tracer: "), "{stderr:?}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
    assert!(
        out.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A namespace with one veth pair (both ends inside), for tracer to attach to.
fn lab_with_veth() -> (Lab, String) {
    let mut lab = Lab::new().unwrap();
    let ns = lab.add_ns("x").unwrap();
    let macs = (lab.mac(1, 1), lab.mac(1, 2));
    lab.veth((&ns, "v0"), (&ns, "v1"), 1500, (&macs.0, &macs.1))
        .unwrap();
    (lab, ns)
}

#[test]
fn unknown_interface_names_it_and_lists_what_exists() {
    let (_lab, ns) = lab_with_veth();
    let out = tracer(&["--netns", &ns, "--iface", "nosuch0"]);
    assert_one_line_error(&out, 1, "unknown interface 'nosuch0'");
    assert_one_line_error(&out, 1, "lo v1 v0");
}

#[test]
fn unknown_namespace() {
    let out = tracer(&["--netns", "tracer-test-no-such-ns"]);
    assert_one_line_error(
        &out,
        1,
        "unknown network namespace 'tracer-test-no-such-ns'",
    );
    let out = tracer(&["--netns", "/no/such/path"]);
    assert_one_line_error(&out, 1, "--netns /no/such/path: no such file");
    let out = tracer(&["--netns", "pid:999999999"]);
    assert_one_line_error(&out, 1, "no process with pid 999999999");
    let out = tracer(&["--netns", "/etc/hostname"]);
    assert_one_line_error(&out, 1, "/etc/hostname is not a network namespace");
}

#[test]
fn bad_values() {
    for (args, needle) in [
        (&["--vxlan-port", "70000"][..], "70000"),
        (&["--vxlan-port", "-1"][..], "-1"),
        (&["--vxlan-port", "0"][..], "0"),
        (&["--interval", "0"][..], "positive"),
        (&["--output", "xml"][..], "xml"),
        (&["--no-such-flag"][..], "--no-such-flag"),
        (
            &["--filter", "inner udp port x53"][..],
            "bad filter: column 16: 'x53' is not a port",
        ),
    ] {
        assert_one_line_error(&tracer(args), 2, needle);
    }
}

#[test]
fn not_root() {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(tracer_bin())
        .output()
        .unwrap();
    assert_one_line_error(&out, 1, "tracer must run as root");
}

#[test]
fn kernel_without_usable_btf() {
    let (_lab, ns) = lab_with_veth();
    let out = tracer(&["--netns", &ns, "--kernel-btf", "/etc/hostname"]);
    assert_one_line_error(&out, 1, "/etc/hostname is not usable kernel BTF");
    let out = tracer(&["--netns", &ns, "--kernel-btf", "/no/btf"]);
    assert_one_line_error(&out, 1, "no BTF file at /no/btf");
}

#[test]
fn non_ethernet_device_is_refused() {
    let (_lab, ns) = lab_with_veth();
    let out = tracer(&["--netns", &ns, "--iface", "lo"]);
    assert_one_line_error(&out, 1, "'lo' in");
}

/// Runs tracer on the lab's veth pair, stops it with `signal`, and checks
/// that every program and link it had is gone from the kernel: tcx links
/// with the process; netlink filters (kernels without tcx) when it exits,
/// or at the next start after a SIGKILL.
fn leaves_nothing_behind(signal: i32) {
    let k = kernel();
    let (lab, ns) = lab_with_veth();
    // A firewall, for the netfilter observers to go around.
    xtask::lab::iptables(
        &ns,
        &["-A", "INPUT", "-p", "udp", "--dport", "1", "-j", "DROP"],
    )
    .unwrap();
    let run = start(std::slice::from_ref(&ns), &[]);
    let mut progs = Vec::new();
    let mut links = Vec::new();
    let filters = |dev: &str| {
        let state = tc_state(&ns, dev);
        (
            state.matches("name tc_ingress").count(),
            state.matches("name tc_egress").count(),
        )
    };
    for dev in ["v0", "v1"] {
        if k.tcx {
            let (p, l) = tcx_attached(&ns, dev).unwrap();
            assert_eq!((p.len(), l.len()), (2, 2), "{dev}: ingress and egress");
            progs.extend(p);
            links.extend(l);
        } else {
            assert_eq!(filters(dev), (1, 1), "{dev}: {}", tc_state(&ns, dev));
        }
    }
    // Everything else it attached: the kfree_skb and icmp_send tracepoints,
    // and what counts verdicts.
    let held = links_held_by(run.pid()).unwrap();
    let kinds = |t: &str| held.iter().filter(|l| l.link_type == t).count();
    assert_eq!(kinds("tcx"), if k.tcx { 4 } else { 0 }, "{held:#?}");
    assert_eq!(
        kinds("raw_tracepoint"),
        1 + k.icmp_send as usize,
        "{held:#?}"
    );
    // Before and after the one chain there is: iptables' IPv4 INPUT; or
    // nft_do_chain's entry and exit.
    let verdict_links = (k.netfilter_links || k.nft_tracing) as usize * 2;
    assert_eq!(
        kinds("netfilter") + kinds("tracing"),
        verdict_links,
        "{held:#?}"
    );
    links.extend(held.iter().map(|l| l.link_id));
    progs.extend(held.iter().map(|l| l.prog_id));
    links.sort();
    links.dedup();
    progs.sort();
    progs.dedup();
    assert!(progs.iter().all(|&id| bpftool_finds("prog", id)));
    assert!(links.iter().all(|&id| bpftool_finds("link", id)));
    run.stop_with(signal).unwrap();
    if !k.tcx && signal == libc::SIGKILL {
        // Filters outlive a killed process; the next start removes them.
        assert_eq!(filters("v0"), (1, 1), "{}", tc_state(&ns, "v0"));
        stop(start(std::slice::from_ref(&ns), &[]));
    }
    for dev in ["v0", "v1"] {
        assert_nothing_attached(&ns, dev);
    }
    // Freed asynchronously after the last reference goes: give it a moment.
    let gone = |obj: &str, ids: &[u32]| {
        (0..100).any(|_| {
            let all_gone = ids.iter().all(|&id| !bpftool_finds(obj, id));
            if !all_gone {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            all_gone
        })
    };
    assert!(gone("link", &links), "links left: {links:?}");
    assert!(gone("prog", &progs), "programs left: {progs:?}");
    drop(lab);
}

#[test]
fn nothing_left_after_sigterm() {
    leaves_nothing_behind(libc::SIGTERM);
}

#[test]
fn nothing_left_after_sigkill() {
    leaves_nothing_behind(libc::SIGKILL);
}

#[test]
fn sigint_prints_totals_and_exits_zero() {
    let (_lab, ns) = lab_with_veth();
    let f = start(&[ns], &[]).stop_with(libc::SIGINT).unwrap();
    assert!(f.status.success(), "{}", f.stderr);
    assert_eq!(f.totals("health").len(), 1, "{}", f.stdout);
}

#[test]
fn duration_stops_by_itself_with_totals() {
    let (_lab, ns) = lab_with_veth();
    let out = tracer(&[
        "--netns",
        &ns,
        "--duration",
        "0.5",
        "--interval",
        "0.2",
        "--output",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let health: Vec<_> = rows.iter().filter(|r| r["type"] == "health").collect();
    // Two or three intervals, then the totals.
    assert!(health.len() >= 3, "{stdout}");
    assert_eq!(health.last().unwrap()["scope"], "total");
    assert!(
        health[..health.len() - 1]
            .iter()
            .all(|h| h["scope"] == "interval")
    );
}

#[test]
fn malformed_filters_and_names() {
    let (_lab, ns) = lab_with_veth();
    let out = tracer(&["--netns", &ns, "--explain", "udp dportt 53"]);
    assert_one_line_error(&out, 1, "bad --explain filter 'udp dportt 53'");
    let out = tracer(&["--netns", &ns, "--nf-table", "filtre"]);
    assert_one_line_error(&out, 1, "unknown --nf-table 'filtre'");
    let out = tracer(&["--netns", &ns, "--reason", "NETFILTER_DORP"]);
    if kernel_has_drop_reasons() {
        assert_one_line_error(&out, 1, "unknown drop reason 'NETFILTER_DORP'");
    } else {
        assert_one_line_error(&out, 1, "this kernel has no drop reasons");
    }
}

#[test]
fn list_reasons_names_the_kernels_reasons() {
    let out = tracer(&["--list-reasons"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    if !kernel_has_drop_reasons() {
        assert!(
            text.starts_with("this kernel has no drop reasons"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 1, "{text}");
        return;
    }
    assert!(
        text.lines()
            .any(|l| l.contains("NETFILTER_DROP") && l.contains("netfilter")),
        "{text}"
    );
    assert!(text.lines().count() > 50, "{text}");
}

/// `tc ... show dev DEV` in `ns`, both directions' filters and the qdiscs.
/// The attachment of kernels without tcx, forced here: it counts the same,
/// and tracer removes its filters and qdiscs; those of a killed run go at
/// the next start.
#[test]
fn netlink_attachment_counts_and_cleans_up() {
    use std::net::SocketAddrV4;
    let p = xtask::lab::Pair::new(1500).unwrap();
    let (a, b) = (&p.a, &p.b);
    let netlink = ["--tc-attach", "netlink"];
    let to = SocketAddrV4::new(b.ip, 6100);
    let sink = xtask::traffic::UdpSink::start(&b.ns, to).unwrap();
    let run = start(p.namespaces(), &netlink);
    let during = tc_state(&a.ns, &a.dev);
    assert!(
        during.contains("clsact") && during.contains("tc_ingress") && during.contains("tc_egress"),
        "{during}"
    );
    xtask::traffic::send_udp(&a.ns, SocketAddrV4::new(a.ip, 6101), to, 7, 10).unwrap();
    assert!(sink.wait_for(7, std::time::Duration::from_secs(10)));
    let f = stop(run);
    for (ns, dir) in [(&a.ns, "egress"), (&b.ns, "ingress")] {
        let rows = flows_at(&f, ns, "v0", dir);
        assert_eq!(rows.len(), 1, "{rows:#?}");
        assert_eq!(rows[0]["packets"], 7);
    }
    assert!(
        !tc_state(&a.ns, &a.dev).contains("clsact"),
        "{}",
        tc_state(&a.ns, &a.dev)
    );

    start(p.namespaces(), &netlink)
        .stop_with(libc::SIGKILL)
        .unwrap();
    assert!(
        tc_state(&a.ns, &a.dev).contains("tc_ingress"),
        "a SIGKILL leaves netlink filters"
    );
    stop(start(p.namespaces(), &netlink));
    let after = tc_state(&a.ns, &a.dev);
    assert!(
        !after.contains("tc_ingress") && !after.contains("tc_egress"),
        "{after}"
    );
}

/// Netlink mode on a host with other users of clsact and another tracer:
/// a killed run's filters and the qdiscs it created go at the next start,
/// but a qdisc and filter that were there before stay, and so do the
/// filters of a tracer that is still running, which keeps counting.
#[test]
fn netlink_leftovers_go_but_nothing_that_is_not_theirs() {
    use std::net::SocketAddrV4;
    let p = xtask::lab::Pair::new(1500).unwrap();
    let (a, b) = (&p.a, &p.b);
    let netlink = ["--tc-attach", "netlink"];
    // Someone else's clsact qdisc and filter on b's end, before any tracer.
    let tc = |args: &[&str]| xtask::cmd::run("tc", &[&["-n", &b.ns][..], args].concat()).unwrap();
    tc(&["qdisc", "add", "dev", &b.dev, "clsact"]);
    tc(&[
        "filter", "add", "dev", &b.dev, "ingress", "prio", "7", "u32", "match", "u32", "0", "0",
    ]);
    let foreign = |state: &str| state.contains("clsact") && state.contains("u32");

    // A tracer that keeps running throughout.
    let survivor = start(p.namespaces(), &netlink);
    // Another one, killed: its filters stay, on both devices.
    start(p.namespaces(), &netlink)
        .stop_with(libc::SIGKILL)
        .unwrap();
    let count = |ns: &str, dev: &str| tc_state(ns, dev).matches("name tc_ingress").count();
    assert_eq!(count(&a.ns, &a.dev), 2, "{}", tc_state(&a.ns, &a.dev));

    // The next start removes exactly the killed run's.
    stop(start(p.namespaces(), &netlink));
    assert_eq!(count(&a.ns, &a.dev), 1, "{}", tc_state(&a.ns, &a.dev));
    assert_eq!(count(&b.ns, &b.dev), 1, "{}", tc_state(&b.ns, &b.dev));
    assert!(foreign(&tc_state(&b.ns, &b.dev)));

    // The survivor still counts what crosses a's end.
    let to = SocketAddrV4::new(b.ip, 6200);
    let sink = xtask::traffic::UdpSink::start(&b.ns, to).unwrap();
    xtask::traffic::send_udp(&a.ns, SocketAddrV4::new(a.ip, 6201), to, 5, 10).unwrap();
    assert!(sink.wait_for(5, std::time::Duration::from_secs(10)));
    let f = stop(survivor);
    let rows = flows_at(&f, &a.ns, "v0", "egress");
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["packets"], 5);

    // All tracers gone: a's end is as it was, b's keeps what was not theirs.
    let after_a = tc_state(&a.ns, &a.dev);
    assert!(
        !after_a.contains("clsact") && !after_a.contains("tc_"),
        "{after_a}"
    );
    let after_b = tc_state(&b.ns, &b.dev);
    assert!(foreign(&after_b) && !after_b.contains("tc_"), "{after_b}");
}
