//! Shared by the integration tests: starting tracer on a lab and finding rows.
#![allow(dead_code)]

use std::{path::Path, sync::OnceLock};

use serde_json::Value;
use xtask::tracer::{Finished, TracerRun};

pub fn tracer_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tracer"))
}

/// Starts tracer on `namespaces` with `extra` arguments.
pub fn start(namespaces: &[String], extra: &[&str]) -> TracerRun {
    let mut args: Vec<String> = Vec::new();
    for ns in namespaces {
        args.push("--netns".into());
        args.push(ns.clone());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    TracerRun::start(tracer_bin(), &args).expect("start tracer")
}

pub fn stop(run: TracerRun) -> Finished {
    let f = run.stop().expect("stop tracer");
    assert!(
        f.status.success(),
        "tracer failed: {}\n{}",
        f.status,
        f.stderr
    );
    f
}

/// Total flow rows at `iface` in `netns`, direction `dir`.
pub fn flows_at<'a>(f: &'a Finished, netns: &str, iface: &str, dir: &str) -> Vec<&'a Value> {
    f.totals("flow")
        .into_iter()
        .filter(|r| r["netns"] == netns && r["iface"] == iface && r["dir"] == dir)
        .collect()
}

/// Does the endpoints object `e` (a row, or its "inner") match?
pub fn endpoints_are(
    e: &Value,
    proto: &str,
    src: &str,
    dst: &str,
    ports: Option<(u16, u16)>,
) -> bool {
    let ports_ok = match ports {
        Some((s, d)) => e["sport"] == s && e["dport"] == d,
        None => e["sport"].is_null() && e["dport"].is_null(),
    };
    e["proto"] == proto && e["src"] == src && e["dst"] == dst && ports_ok
}

/// Total drop rows in `netns`.
pub fn drops_in<'a>(f: &'a Finished, netns: &str) -> Vec<&'a Value> {
    f.totals("drop")
        .into_iter()
        .filter(|r| r["netns"] == netns)
        .collect()
}

/// Polls `cond` every 20 ms for up to 10 s.
pub fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    cond()
}

/// Total verdict rows in `netns` at `hook`.
pub fn verdicts_at<'a>(f: &'a Finished, netns: &str, hook: &str) -> Vec<&'a Value> {
    f.totals("verdict")
        .into_iter()
        .filter(|r| r["netns"] == netns && r["hook"] == hook)
        .collect()
}

/// The one row of `rows` whose endpoints match, or a panic listing them.
pub fn only<'a>(
    rows: &[&'a Value],
    proto: &str,
    src: &str,
    dst: &str,
    ports: Option<(u16, u16)>,
) -> &'a Value {
    let matching: Vec<&&Value> = rows
        .iter()
        .filter(|r| endpoints_are(r, proto, src, dst, ports))
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "{proto} {src} > {dst} {ports:?} in {rows:#?}"
    );
    matching[0]
}

/// Waits until namespace `ns` has received `n` more IP packets than `before`
/// (read from /proc, which touches nothing tracer counts).
pub fn wait_received(ns: &str, before: u64, n: u64) {
    assert!(
        wait_until(|| xtask::peers::nstat(ns, "IpInReceives").unwrap() - before >= n),
        "{ns} did not receive {n} packets"
    );
}

/// Connects `n` times from namespace `ns` to `to`, where nothing listens,
/// and checks that each connection is refused (the server sent a RST).
pub fn connect_refused(ns: &str, to: std::net::SocketAddrV4, n: u64) {
    for _ in 0..n {
        let r = xtask::traffic::in_netns(ns, || {
            std::net::TcpStream::connect_timeout(&to.into(), std::time::Duration::from_secs(2))
        })
        .unwrap();
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::ConnectionRefused);
    }
}

/// The running kernel names drop reasons (Linux >= 5.17; Debian 11's 5.10
/// does not): drops there carry `reason: null` and where they happened.
pub fn kernel_has_drop_reasons() -> bool {
    kernel_reasons().is_some()
}

/// The running kernel's `enum skb_drop_reason`, if it has one.
fn kernel_reasons() -> Option<&'static tracer::collectors::drops::reasons::Reasons> {
    static REASONS: OnceLock<Option<tracer::collectors::drops::reasons::Reasons>> = OnceLock::new();
    REASONS
        .get_or_init(|| {
            let btf =
                tracer::sys::btf::load(Path::new(tracer::sys::btf::VMLINUX)).expect("kernel BTF");
            tracer::collectors::drops::reasons::Reasons::from_btf(&btf)
        })
        .as_ref()
}

/// Kernel functions that drop packets for `reason`, by which drops are told
/// apart on kernels without reasons.
fn places_of(reason: &str) -> &'static [&'static str] {
    match reason {
        "NETFILTER_DROP" => &["nf_hook_slow", "nft_do_chain"],
        "NO_SOCKET" => &[
            "__udp4_lib_rcv",
            "__udp6_lib_rcv",
            "tcp_v4_rcv",
            "tcp_v6_rcv",
            "ping_rcv",
        ],
        "FRAG_REASM_TIMEOUT" => &["ip_expire", "ip6_frag_expire", "inet_frag_rbtree_purge"],
        "NOT_SPECIFIED" => &[""],
        "PKT_TOO_BIG" => &["ip_forward", "ip6_forward", "ip_fragment", "ip_do_fragment"],
        other => panic!("no place known for drop reason {other}"),
    }
}

/// Whether drop row `d` is for `reason`: by its name where the kernel has
/// that reason, else by the function that dropped it (with no reason, or
/// NOT_SPECIFIED where the kernel has reasons but not this one: 6.1 has no
/// FRAG_REASM_TIMEOUT).
pub fn dropped_for(d: &Value, reason: &str) -> bool {
    if kernel_reasons().is_some_and(|r| r.value(reason).is_some()) {
        return d["reason"] == reason;
    }
    let vague = if kernel_has_drop_reasons() {
        d["reason"] == "NOT_SPECIFIED"
    } else {
        d["reason"].is_null()
    };
    let location = d["location"].as_str().unwrap_or("");
    vague && places_of(reason).iter().any(|f| location.starts_with(f))
}

/// Asserts that drop row `d` is for `reason` (see [`dropped_for`]).
#[track_caller]
pub fn assert_dropped_for(d: &Value, reason: &str) {
    assert!(dropped_for(d, reason), "not a {reason} drop: {d}");
}

/// Whether this kernel gives tracer netfilter verdicts (BPF netfilter
/// links, or fentry/fexit on nft_do_chain; kprobes only with --nf-kprobes),
/// hence the hook and the rule.
#[allow(dead_code)]
pub fn has_verdicts() -> bool {
    let k = kernel();
    k.netfilter_links || k.nft_tracing
}

/// Asserts that a path's loss `l` is a netfilter drop at `hook` by `rule`,
/// where the kernel has verdicts; without (5.10), a netfilter drop with
/// neither hook nor rule.
#[allow(dead_code)]
#[track_caller]
pub fn assert_netfilter_loss(l: &Value, hook: &str, rule: &str) {
    assert_dropped_for(l, "NETFILTER_DROP");
    if has_verdicts() {
        assert_eq!(
            (&l["hook"], &l["rule"]),
            (&hook.into(), &rule.into()),
            "{l}"
        );
    } else {
        assert!(l["hook"].is_null() && l["rule"].is_null(), "{l}");
    }
}

/// What the running kernel offers tracer, as tracer itself finds out.
#[derive(Debug)]
pub struct KernelFacts {
    /// tcx links (6.6); without them TC programs are netlink filters.
    pub tcx: bool,
    /// BPF netfilter programs (6.4).
    pub netfilter_links: bool,
    /// fentry/fexit on nf_tables' nft_do_chain instead (module BTF, 5.11).
    pub nft_tracing: bool,
    /// The icmp:icmp_send tracepoint.
    pub icmp_send: bool,
}

pub fn kernel() -> &'static KernelFacts {
    static FACTS: OnceLock<KernelFacts> = OnceLock::new();
    FACTS.get_or_init(|| {
        let at_least = |major, minor| {
            aya::util::KernelVersion::current()
                .is_ok_and(|v| v >= aya::util::KernelVersion::new(major, minor, 0))
        };
        let btf = tracer::sys::btf::load(Path::new(tracer::sys::btf::VMLINUX)).expect("kernel BTF");
        // nf_tables loads on the first nftables request, as tracer makes one.
        let _ = std::process::Command::new("nft")
            .args(["list", "tables"])
            .output();
        let netfilter_links = at_least(6, 4);
        let nft_tracing = !netfilter_links && Path::new("/sys/kernel/btf/nf_tables").exists();
        KernelFacts {
            tcx: at_least(6, 6),
            netfilter_links,
            nft_tracing,
            icmp_send: tracer::sys::btf::tracepoint_args(&btf, "icmp_send").is_some(),
        }
    })
}

/// What `tc` shows on `dev`: its qdiscs and the filters of both directions.
#[allow(dead_code)]
pub fn tc_state(ns: &str, dev: &str) -> String {
    let mut all = String::new();
    for args in [
        &["qdisc", "show", "dev", dev][..],
        &["filter", "show", "dev", dev, "ingress"][..],
        &["filter", "show", "dev", dev, "egress"][..],
    ] {
        let out = xtask::cmd::run("tc", &[&["-n", ns][..], args].concat()).unwrap();
        all.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    all
}

/// No tcx program (where the kernel has tcx), clsact qdisc or tracer
/// filter is left on `dev`.
#[allow(dead_code)]
pub fn assert_nothing_attached(ns: &str, dev: &str) {
    if kernel().tcx {
        let attached = xtask::bpf::tcx_attached(ns, dev).unwrap();
        assert_eq!(attached, (vec![], vec![]), "{ns}/{dev}");
    }
    let state = tc_state(ns, dev);
    assert!(
        !state.contains("clsact") && !state.contains("tc_"),
        "{ns}/{dev}: {state}"
    );
}

/// Waits until tracer's stderr holds `what`.
pub fn wait_said(run: &TracerRun, what: &str) {
    assert!(
        wait_until(|| run.stderr_so_far().contains(what)),
        "{what:?} not in {}",
        run.stderr_so_far()
    );
}

/// Waits until tracer follows container `name`'s `dev`. Which messages say
/// so depends on timing: a namespace Docker names after tracer found it is
/// followed under its file name first (`following 7282b17bdf02 []`), its
/// devices come later (`7282b17bdf02: devices added [eth0(ov)`), then
/// `7282b17bdf02 is now named c1`; on a fast host, `following c1 [eth0`.
pub fn wait_following(run: &TracerRun, name: &str, dev: &str) {
    let follows = |ns: &str, err: &str| {
        err.contains(&format!("tracer: following {ns} [{dev}"))
            || err.contains(&format!("tracer: {ns}: devices added [{dev}"))
    };
    let ok = || {
        let err = run.stderr_so_far();
        let renamed_from = err.lines().find_map(|l| {
            l.strip_prefix("tracer: ")?
                .strip_suffix(&format!(" is now named {name}"))
        });
        follows(name, &err) || renamed_from.is_some_and(|id| follows(id, &err))
    };
    assert!(
        wait_until(ok),
        "tracer does not follow {name}'s {dev}: {}",
        run.stderr_so_far()
    );
}
