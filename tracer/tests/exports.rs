//! Drops to pcapng and counters to OpenMetrics, read back by the real
//! readers: tcpdump and tshark for the file, Python's prometheus_client
//! OpenMetrics parser for `/metrics`.

mod common;

use std::{
    collections::BTreeMap,
    net::SocketAddrV4,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use common::*;
use serde_json::Value;
use xtask::{
    lab::{Overlay, OverlayOpts, Pair, iptables},
    peers::{iptables_packets, nstat},
    tracer::{Finished, TracerRun},
    traffic::send_udp,
};

const N: u64 = 12;

/// A pcapng path of this test's own, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("tracer-{}-{name}.pcapng", std::process::id()));
        let _ = std::fs::remove_file(&p);
        TempFile(p)
    }

    fn arg(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn output_of(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// tshark's `fields` of each packet of `file`, tab-separated.
fn tshark_fields(file: &Path, fields: &[&str]) -> Vec<Vec<String>> {
    let mut args = vec!["-r", file.to_str().unwrap(), "-T", "fields"];
    for f in fields {
        args.extend(["-e", f]);
    }
    output_of("tshark", &args)
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// Fetches and parses `/metrics` with prometheus_client's OpenMetrics
/// parser, which rejects anything the format does not allow; prints each
/// sample as a JSON line.
const SCRAPE: &str = r#"
import json, sys, urllib.request
from prometheus_client.openmetrics.parser import text_string_to_metric_families
with urllib.request.urlopen(sys.argv[1]) as r:
    ctype = r.headers["Content-Type"]
    assert ctype.startswith("application/openmetrics-text; version=1.0.0"), ctype
    text = r.read().decode()
for family in text_string_to_metric_families(text):
    for s in family.samples:
        print(json.dumps({"family": family.name, "type": family.type,
                          "name": s.name, "labels": s.labels, "value": s.value}))
"#;

/// Every sample `/metrics` serves now.
fn scrape(url: &str) -> Vec<Value> {
    // Debian's python3, which has python3-prometheus-client.
    output_of("/usr/bin/python3", &["-c", SCRAPE, url])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Sum of the samples called `name` whose labels include `labels`.
fn value(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .map(|s| s["value"].as_f64().unwrap())
        .sum()
}

/// The blocks of a pcapng file: (type, body without the length fields).
fn blocks(file: &Path) -> Vec<(u32, Vec<u8>)> {
    let data = std::fs::read(file).unwrap();
    let u32_at = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap());
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let (kind, len) = (u32_at(at), u32_at(at + 4) as usize);
        assert_eq!(u32_at(at + len - 4) as usize, len, "block at {at}");
        out.push((kind, data[at + 8..at + len - 4].to_vec()));
        at += len;
    }
    out
}

/// Options of an interface statistics block body: code -> value.
fn isb_options(body: &[u8]) -> BTreeMap<u16, Vec<u8>> {
    let mut opts = BTreeMap::new();
    let mut at = 12; // interface id, timestamp
    while at + 4 <= body.len() {
        let code = u16::from_le_bytes([body[at], body[at + 1]]);
        let len = u16::from_le_bytes([body[at + 2], body[at + 3]]) as usize;
        if code == 0 {
            break;
        }
        opts.insert(code, body[at + 4..at + 4 + len].to_vec());
        at += 4 + len.next_multiple_of(4);
    }
    opts
}

fn u64_opt(opts: &BTreeMap<u16, Vec<u8>>, code: u16) -> u64 {
    u64::from_le_bytes(opts[&code][..8].try_into().unwrap())
}

/// The health row of the totals.
fn health(f: &Finished) -> &Value {
    f.totals("health")[0]
}

/// The issue's "done when": a VXLAN lab whose receiving host drops UDP 4789.
/// 12 drops are 12 packets in the pcapng, which tcpdump decodes as VXLAN with
/// their inner flow and tshark shows with their comments, and a counter of
/// 12 NETFILTER_DROP drops at /metrics.
#[test]
fn vxlan_drops_to_pcapng_and_metrics() {
    let lab = Overlay::new(OverlayOpts::default()).unwrap();
    iptables(
        &lab.b.ns,
        &["-A", "INPUT", "-p", "udp", "--dport", "4789", "-j", "DROP"],
    )
    .unwrap();
    let pcap = TempFile::new("vxlan");
    let mut run = start(
        lab.namespaces(),
        &[
            "--pcap-drops",
            &pcap.arg(),
            "--metrics",
            "127.0.0.1:0",
            "--interval",
            "0.2",
        ],
    );
    let url = run.metrics_url().expect("metrics address on stderr");
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
    // The reason label is empty on kernels without reasons (5.10).
    let reason = if kernel_has_drop_reasons() {
        "NETFILTER_DROP"
    } else {
        ""
    };
    let b_ul = [
        ("reason", reason),
        ("netns", lab.b.ns.as_str()),
        ("iface", "ul0"),
    ];
    let mut samples = Vec::new();
    assert!(
        wait_until(|| {
            samples = scrape(&url);
            value(&samples, "tracer_drops_total", &b_ul) >= N as f64
        }),
        "{samples:#?}"
    );
    let f = stop(run);
    assert_eq!(iptables_packets(&lab.b.ns, "INPUT", "dpt:4789").unwrap(), N);

    // /metrics: exactly the drops the rule made, with bounded labels only.
    assert_eq!(value(&samples, "tracer_drops_total", &b_ul), N as f64);
    assert_eq!(value(&samples, "tracer_drops_total", &[]), N as f64);
    let drop = samples
        .iter()
        .find(|s| s["name"] == "tracer_drops_total")
        .unwrap();
    let keys: Vec<&String> = drop["labels"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["iface", "netns", "reason"], "{drop}");
    let verdict = [
        ("netns", lab.b.ns.as_str()),
        ("hook", "input"),
        ("table", "filter"),
        ("verdict", "dropped"),
    ];
    // Kernels without a verdict hook (5.10) have no verdict rows at all.
    let verdicts = if has_verdicts() { N as f64 } else { 0.0 };
    assert_eq!(value(&samples, "tracer_verdicts_total", &verdict), verdicts);
    let sent = [
        ("netns", lab.a.ns.as_str()),
        ("iface", "ul0"),
        ("dir", "egress"),
    ];
    assert!(value(&samples, "tracer_packets_total", &sent) >= N as f64);
    for (name, labels) in [
        (
            "tracer_health_events_total",
            &[("event", "drop_map_full")][..],
        ),
        ("tracer_health_events_total", &[("event", "capture_lost")]),
        ("tracer_map_capacity", &[("map", "drops")]),
        ("tracer_bpf_stats_enabled", &[]),
    ] {
        assert!(
            samples
                .iter()
                .any(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v)),
            "{name} {labels:?}"
        );
    }

    // The pcapng: tcpdump decodes each packet as VXLAN and its inner flow.
    let tcpdump = output_of("tcpdump", &["-r", &pcap.arg(), "-n", "-v"]);
    let vxlan: Vec<&str> = tcpdump
        .lines()
        .filter(|l| l.contains(&format!("VXLAN, flags [I] (0x08), vni {}", lab.opts.vni)))
        .collect();
    assert_eq!(vxlan.len(), N as usize, "{tcpdump}");
    let inner = format!("{}.41000 > {}.5001: UDP, length 100", c1.ip, c2.ip);
    assert_eq!(tcpdump.matches(&inner).count(), N as usize, "{tcpdump}");
    // tshark: the same packets, each with its drop in its comment, whole lengths kept.
    let packets = tshark_fields(
        &pcap.0,
        &[
            "frame.comment",
            "vxlan.vni",
            "udp.dstport",
            "frame.len",
            "frame.interface_name",
        ],
    );
    assert_eq!(packets.len(), N as usize, "{packets:?}");
    for p in &packets {
        // nf_hook_slow, or nft_do_chain with iptables-nft, with its offset.
        assert!(p[0].starts_with(&netfilter_drop_comment()), "{p:?}");
        assert!(
            p[0].ends_with(&format!("netns={} iface=ul0", lab.b.ns)),
            "{p:?}"
        );
        assert_eq!(p[1], lab.opts.vni.to_string(), "{p:?}");
        assert_eq!(p[2], "4789,5001", "{p:?}");
        // Ethernet + outer IPv4 + UDP + VXLAN + Ethernet + IPv4 + UDP + 100.
        assert_eq!(
            p[3],
            (14 + 20 + 8 + 8 + 14 + 20 + 8 + 100).to_string(),
            "{p:?}"
        );
        assert_eq!(p[4], format!("{}/ul0", lab.b.ns), "{p:?}");
    }
    // Its statistics: 12 drops on the device, all 12 written.
    let isbs: Vec<_> = blocks(&pcap.0)
        .into_iter()
        .filter(|(kind, _)| *kind == 5)
        .collect();
    assert_eq!(isbs.len(), 1);
    let opts = isb_options(&isbs[0].1);
    assert_eq!(
        (u64_opt(&opts, 4), u64_opt(&opts, 5), u64_opt(&opts, 8)),
        (N, 0, N)
    );
    assert_eq!(health(&f)["capture_rate_limited"], 0);
    assert_eq!(health(&f)["capture_lost"], 0);
}

/// BPF run-time statistics on (held by a BPF_ENABLE_STATS descriptor, which
/// unlike `sysctl kernel.bpf_stats_enabled=1` ends with the test): /metrics
/// reports each program's runs and time. The drop program ran at least once
/// per drop, the ingress program once per packet.
#[test]
fn metrics_report_program_run_time_when_stats_are_on() {
    let p = Pair::new(1500).unwrap();
    let (client, server) = (&p.a, &p.b);
    iptables(
        &server.ns,
        &["-A", "INPUT", "-p", "udp", "--dport", "5600", "-j", "DROP"],
    )
    .unwrap();
    let _stats = enable_bpf_stats();
    let mut run = start(
        p.namespaces(),
        &["--metrics", "127.0.0.1:0", "--interval", "0.2"],
    );
    let url = run.metrics_url().expect("metrics address on stderr");
    let before = nstat(&server.ns, "IpInReceives").unwrap();
    send_udp(
        &client.ns,
        SocketAddrV4::new(client.ip, 40400),
        SocketAddrV4::new(server.ip, 5600),
        N as u32,
        10,
    )
    .unwrap();
    wait_received(&server.ns, before, N);
    // kfree_skb_noreason where the tracepoint has no reason (5.10).
    let kfree_program = if kernel_has_drop_reasons() {
        "kfree_skb"
    } else {
        "kfree_skb_noreason"
    };
    let kfree = [("program", kfree_program)];
    let mut samples = Vec::new();
    assert!(
        wait_until(|| {
            samples = scrape(&url);
            value(&samples, "tracer_drops_total", &[]) >= N as f64
        }),
        "{samples:#?}"
    );
    stop(run);
    assert_eq!(value(&samples, "tracer_drops_total", &[]), N as f64);
    assert!(value(&samples, "tracer_bpf_program_runs_total", &kfree) >= N as f64);
    assert!(value(&samples, "tracer_bpf_program_run_seconds_total", &kfree) > 0.0);
    assert!(
        value(
            &samples,
            "tracer_bpf_program_runs_total",
            &[("program", "tc_ingress")]
        ) >= N as f64
    );
}

/// How a packet's comment starts when netfilter dropped it: its reason, or
/// "-" on kernels without reasons, and the function that dropped it
/// (nf_hook_slow, or nft_do_chain with iptables-nft).
fn netfilter_drop_comment() -> String {
    let reason = if kernel_has_drop_reasons() {
        "NETFILTER_DROP"
    } else {
        "-"
    };
    format!("drop reason={reason} location=nf")
}

/// Turns BPF run-time statistics on for as long as the descriptor is open.
fn enable_bpf_stats() -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd as _;
    const BPF_ENABLE_STATS: libc::c_long = 32;
    let mut attr = [0u32; 2]; // type: BPF_STATS_RUN_TIME (0)
    // SAFETY: `attr` is the enable_stats part of `union bpf_attr`, zeroed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            attr.as_mut_ptr(),
            size_of_val(&attr) as libc::c_uint,
        )
    };
    assert!(
        fd >= 0,
        "BPF_ENABLE_STATS: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new descriptor that nothing else owns.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }
}

/// `--pcap-drops -` streams to standard output: tshark reads it from a pipe,
/// with the snap length applied and each packet's original length kept.
#[test]
fn pcap_to_stdout_reads_in_tshark() {
    let p = Pair::new(1500).unwrap();
    let (client, server) = (&p.a, &p.b);
    iptables(
        &server.ns,
        &["-A", "INPUT", "-p", "udp", "--dport", "53", "-j", "DROP"],
    )
    .unwrap();
    let mut tshark = Command::new("tshark")
        .args([
            "-r",
            "-",
            "-T",
            "fields",
            "-e",
            "frame.comment",
            "-e",
            "udp.dstport",
        ])
        .args(["-e", "frame.len", "-e", "frame.cap_len"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pipe = Stdio::from(tshark.stdin.take().unwrap());
    let mut args: Vec<String> = Vec::new();
    for ns in p.namespaces() {
        args.extend(["--netns".into(), ns.clone()]);
    }
    args.extend(["--pcap-drops", "-", "--pcap-snaplen", "64"].map(String::from));
    let run = TracerRun::start_with_stdout(tracer_bin(), &args, Some(pipe)).unwrap();
    let before = nstat(&server.ns, "IpInReceives").unwrap();
    send_udp(
        &client.ns,
        SocketAddrV4::new(client.ip, 40053),
        SocketAddrV4::new(server.ip, 53),
        N as u32,
        200,
    )
    .unwrap();
    wait_received(&server.ns, before, N);
    let f = run.stop().unwrap();
    assert!(f.status.success(), "{}", f.stderr);
    let out = tshark.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), N as usize, "{lines:#?}");
    let frame = 14 + 20 + 8 + 200;
    for l in &lines {
        let fields: Vec<&str> = l.split('\t').collect();
        assert!(
            fields[0].starts_with(&netfilter_drop_comment())
                && fields[0].ends_with(&format!("netns={} iface=v0", server.ns)),
            "{l}"
        );
        assert_eq!(fields[1..], ["53", &frame.to_string(), "64"], "{l}");
    }
    // The reports went to standard error instead, as JSON lines.
    assert!(
        f.stderr.contains(r#""type":"drop","scope":"total""#),
        "{}",
        f.stderr
    );
}

/// Past `--pcap-rate`, drops are not written but counted: in the health
/// row, and in the file's interface statistics.
#[test]
fn pcap_rate_limit_is_counted() {
    let p = Pair::new(1500).unwrap();
    let (client, server) = (&p.a, &p.b);
    iptables(
        &server.ns,
        &["-A", "INPUT", "-p", "udp", "--dport", "5300", "-j", "DROP"],
    )
    .unwrap();
    let pcap = TempFile::new("rate");
    let run = start(
        p.namespaces(),
        &["--pcap-drops", &pcap.arg(), "--pcap-rate", "1"],
    );
    let before = nstat(&server.ns, "IpInReceives").unwrap();
    send_udp(
        &client.ns,
        SocketAddrV4::new(client.ip, 40100),
        SocketAddrV4::new(server.ip, 5300),
        N as u32,
        10,
    )
    .unwrap();
    wait_received(&server.ns, before, N);
    let f = stop(run);
    let written = tshark_fields(&pcap.0, &["frame.comment"]).len() as u64;
    let skipped = health(&f)["capture_rate_limited"].as_u64().unwrap();
    assert_eq!(written + skipped, N, "written {written}, skipped {skipped}");
    // One a second on each CPU: 12 drops sent at once cannot all pass.
    assert!(written >= 1 && skipped >= 1, "written {written}");
    assert_eq!(health(&f)["capture_lost"], 0);
    let isb = blocks(&pcap.0)
        .into_iter()
        .find(|(kind, _)| *kind == 5)
        .unwrap();
    let opts = isb_options(&isb.1);
    assert_eq!(
        (u64_opt(&opts, 4), u64_opt(&opts, 5), u64_opt(&opts, 8)),
        (N, skipped, written)
    );
}

/// `--filter` decides what the file and /metrics hold, as it does the rows:
/// of two dropped flows, only the one it names.
#[test]
fn pcap_and_metrics_follow_the_filter() {
    let p = Pair::new(1500).unwrap();
    let (client, server) = (&p.a, &p.b);
    for port in ["5700", "5701"] {
        iptables(
            &server.ns,
            &["-A", "INPUT", "-p", "udp", "--dport", port, "-j", "DROP"],
        )
        .unwrap();
    }
    let pcap = TempFile::new("filter");
    let mut run = start(
        p.namespaces(),
        &[
            "--pcap-drops",
            &pcap.arg(),
            "--metrics",
            "127.0.0.1:0",
            "--interval",
            "0.2",
            "--filter",
            "udp dst port 5700",
        ],
    );
    let url = run.metrics_url().expect("metrics address on stderr");
    let before = nstat(&server.ns, "IpInReceives").unwrap();
    let from = SocketAddrV4::new(client.ip, 40500);
    for port in [5700, 5701] {
        let to = SocketAddrV4::new(server.ip, port);
        send_udp(&client.ns, from, to, N as u32, 10).unwrap();
    }
    wait_received(&server.ns, before, 2 * N);
    let mut samples = Vec::new();
    assert!(
        wait_until(|| {
            samples = scrape(&url);
            value(&samples, "tracer_drops_total", &[]) >= N as f64
        }),
        "{samples:#?}"
    );
    let f = stop(run);
    assert_eq!(
        iptables_packets(&server.ns, "INPUT", "dpt:5701").unwrap(),
        N
    );
    assert_eq!(value(&samples, "tracer_drops_total", &[]), N as f64);
    let ports = tshark_fields(&pcap.0, &["udp.dstport"]);
    assert_eq!(ports.len(), N as usize, "{ports:?}");
    assert!(ports.iter().all(|p| p[0] == "5700"), "{ports:?}");
    let drops = drops_in(&f, &server.ns);
    assert_eq!(drops.len(), 1, "{drops:#?}");
    assert_eq!(drops[0]["dport"], 5700);
}

/// SIGKILL leaves a file valid up to its last block: every packet written
/// before the kill is read back.
#[test]
fn pcap_valid_after_sigkill() {
    let p = Pair::new(1500).unwrap();
    let (client, server) = (&p.a, &p.b);
    iptables(
        &server.ns,
        &["-A", "INPUT", "-p", "udp", "--dport", "5400", "-j", "DROP"],
    )
    .unwrap();
    let pcap = TempFile::new("kill");
    let run = start(p.namespaces(), &["--pcap-drops", &pcap.arg()]);
    let before = nstat(&server.ns, "IpInReceives").unwrap();
    send_udp(
        &client.ns,
        SocketAddrV4::new(client.ip, 40200),
        SocketAddrV4::new(server.ip, 5400),
        N as u32,
        10,
    )
    .unwrap();
    wait_received(&server.ns, before, N);
    // The file is read while tracer runs: each block is written whole.
    assert!(wait_until(|| tshark_fields(&pcap.0, &["frame.comment"])
        .len()
        == N as usize));
    let f = run.stop_with(libc::SIGKILL).unwrap();
    assert!(!f.status.success());
    let packets = tshark_fields(&pcap.0, &["frame.comment", "udp.dstport"]);
    assert_eq!(packets.len(), N as usize);
    assert!(packets.iter().all(|p| p[1] == "5400"), "{packets:?}");
    // No statistics block: the run never reached its totals.
    assert!(blocks(&pcap.0).iter().all(|(kind, _)| *kind != 5));
}

/// SIGINT ends the file with its statistics like SIGTERM; a run that ends
/// by `--duration` with nothing dropped leaves a valid, empty file.
#[test]
fn pcap_complete_after_sigint_and_duration() {
    let p = Pair::new(1500).unwrap();
    let (client, server) = (&p.a, &p.b);
    iptables(
        &server.ns,
        &["-A", "INPUT", "-p", "udp", "--dport", "5500", "-j", "DROP"],
    )
    .unwrap();
    let pcap = TempFile::new("sigint");
    let run = start(p.namespaces(), &["--pcap-drops", &pcap.arg()]);
    let before = nstat(&server.ns, "IpInReceives").unwrap();
    send_udp(
        &client.ns,
        SocketAddrV4::new(client.ip, 40300),
        SocketAddrV4::new(server.ip, 5500),
        N as u32,
        10,
    )
    .unwrap();
    wait_received(&server.ns, before, N);
    let f = run.stop_with(libc::SIGINT).unwrap();
    assert!(f.status.success(), "{}", f.stderr);
    assert_eq!(tshark_fields(&pcap.0, &["frame.comment"]).len(), N as usize);
    let kinds: Vec<u32> = blocks(&pcap.0).iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds.last(), Some(&5), "{kinds:?}");

    let empty = TempFile::new("duration");
    let run = start(
        p.namespaces(),
        &["--pcap-drops", &empty.arg(), "--duration", "0.3"],
    );
    let f = stop(run);
    assert_eq!(f.totals("drop").len(), 0, "{:#?}", f.totals("drop"));
    assert!(tshark_fields(&empty.0, &["frame.comment"]).is_empty());
    assert_eq!(blocks(&empty.0).len(), 1, "the section header only");
}

/// Bad values are one line and exit 2, and a taken port one line and exit 1,
/// before anything is attached.
#[test]
fn bad_export_options_are_one_line() {
    for (args, needle, code) in [
        (&["--metrics", "nowhere"][..], "--metrics", 2),
        (&["--pcap-snaplen", "64"][..], "--pcap-drops", 2),
        (&["--pcap-drops", "x", "--pcap-snaplen", "0"][..], "0", 2),
        (
            &["--pcap-drops", "x", "--pcap-snaplen", "4096"][..],
            "4096",
            2,
        ),
        (&["--pcap-drops", "x", "--no-drops"][..], "--no-drops", 2),
        (&["--metrics-flows"][..], "--metrics", 2),
        (
            &["--pcap-drops", "/nonexistent/dir/x.pcapng", "--iface", "lo"][..],
            "/nonexistent/dir",
            1,
        ),
    ] {
        let out = Command::new(tracer_bin()).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(tracer_bin())
        .args(["--metrics", &addr, "--iface", "lo"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&addr) && stderr.contains("in use"),
        "{stderr}"
    );
}

/// Both `kfree_skb` programs (with and without a reason argument, for
/// kernels before 5.17) pass the verifier with capture on, rate-limited or
/// not: a run attaches only one of them. The one with a reason only where
/// the tracepoint has that argument.
#[test]
fn both_kfree_skb_variants_load_with_capture_on() {
    use tracer::{
        collectors::{SKB_FIELDS, loader},
        sys::{btf, kernel::Kernel},
    };
    let kernel = Kernel::read(Path::new(btf::VMLINUX)).unwrap();
    let (offsets, missing) = btf::offsets(kernel.btf());
    assert!(
        !SKB_FIELDS.iter().any(|f| missing.iter().any(|m| m == f)),
        "{missing:?}"
    );
    let mut programs = vec!["kfree_skb_noreason"];
    if kernel.kfree_skb_args.is_some_and(|n| n >= 3) {
        programs.push("kfree_skb");
    }
    for (snaplen, rate) in [(256, 1000), (tracer_ebpf::CAPTURE_MAX as u32, 0)] {
        let config = tracer_ebpf::Config {
            offsets,
            capture_snaplen: snaplen,
            capture_rate: rate,
            ..tracer_ebpf::Config::default()
        };
        for &program in &programs {
            // Attached with no namespace traced: it sees drops, records none.
            let sizes = loader::MapSizes {
                flows: 1024,
                devices: 16,
            };
            let mut ebpf = loader::load(&config, sizes, &kernel).unwrap();
            loader::attach_tracepoint(&mut ebpf, kernel.aya_btf().unwrap(), program, "kfree_skb")
                .unwrap_or_else(|e| panic!("{program} ({snaplen}, {rate}): {e:#}"));
        }
    }
}
