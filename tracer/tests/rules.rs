//! Rule snapshots and nftables tracing on real namespaces: these need root,
//! build lab namespaces (`xtask::lab`), install iptables and nftables rules
//! there and send real traffic.

use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use xtask::{
    cmd::in_ns,
    lab::{Pair, iptables},
    traffic::{in_netns, send_udp},
};

use tracer::{
    model::Hook,
    rules::{
        self, Family, Source, Verdict,
        trace::{self, NF_DROP, TraceReader, TraceTable, Verdicts},
    },
};

fn require_root() {
    // SAFETY: plain syscall.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
}

fn nft(ns: &str, args: &[&str]) -> String {
    let out = in_ns(ns, "nft", args).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads trace events into `v` until `done` holds, for up to 5 s.
fn read_until(reader: &mut TraceReader, v: &mut Verdicts, done: impl Fn(&Verdicts) -> bool) {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end && !done(v) {
        v.add(&reader.read().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Anything late would show as an extra count.
    std::thread::sleep(Duration::from_millis(100));
    v.add(&reader.read().unwrap());
}

/// The scenario of the brief: an iptables DROP and a native nft counter+drop
/// rule on the server side, N datagrams to each; rule counters, `moved` and
/// the trace all say N, at the right place.
#[test]
fn counters_moved_and_trace_agree_on_drops() {
    require_root();
    const N: u64 = 7;
    let pair = Pair::new(1500).unwrap();
    let b = &pair.b.ns;
    iptables(
        b,
        &["-A", "INPUT", "-p", "udp", "--dport", "5353", "-j", "DROP"],
    )
    .unwrap();
    nft(b, &["add", "table", "inet", "fw"]);
    nft(
        b,
        &[
            "add",
            "chain",
            "inet",
            "fw",
            "input",
            "{ type filter hook input priority filter - 5; policy accept; }",
        ],
    );
    nft(
        b,
        &[
            "add", "rule", "inet", "fw", "input", "udp", "dport", "5354", "counter", "drop",
        ],
    );

    let before = in_netns(b, rules::snapshot_report).unwrap().unwrap();
    assert!(before.unavailable.is_empty(), "{:?}", before.unavailable);
    let (table, mut reader) = in_netns(b, || {
        (
            TraceTable::create("udp dport 5353").unwrap(),
            TraceReader::open().unwrap(),
        )
    })
    .unwrap();
    assert!(nft(b, &["list", "tables"]).contains(&format!("table inet {}", table.name())));

    let from = SocketAddrV4::new(pair.a.ip, 40000);
    for port in [5353, 5354] {
        send_udp(
            &pair.a.ns,
            from,
            SocketAddrV4::new(pair.b.ip, port),
            N as u32,
            32,
        )
        .unwrap();
    }
    let mut verdicts = Verdicts::new([0; tracer_ebpf::MAX_VXLAN_PORTS]);
    let drops = |v: &Verdicts| -> u64 {
        v.counts()
            .iter()
            .filter(|(k, _)| k.verdict == NF_DROP)
            .map(|(_, n)| n)
            .sum()
    };
    read_until(&mut reader, &mut verdicts, |v| drops(v) >= N);
    let after = in_netns(b, rules::snapshot).unwrap().unwrap();

    // Counters.
    let ipt = after
        .iter()
        .find(|r| r.source == Source::Iptables && r.text.contains("--dport 5353"))
        .expect("iptables rule in the snapshot");
    assert_eq!(ipt.text, "-A INPUT -p udp -m udp --dport 5353 -j DROP");
    assert_eq!(
        (
            ipt.family,
            ipt.table.as_str(),
            ipt.chain.as_str(),
            ipt.hook,
            ipt.priority
        ),
        (Family::Ipv4, "filter", "INPUT", Some(Hook::Input), Some(0))
    );
    assert_eq!((ipt.verdict, ipt.packets), (Verdict::Drop, N));
    let native = after
        .iter()
        .find(|r| r.source == Source::Nft && r.table == "fw")
        .expect("nft rule in the snapshot");
    assert_eq!(native.text, "udp dport 5354 counter drop");
    assert_eq!(
        (
            native.family,
            native.chain.as_str(),
            native.hook,
            native.priority
        ),
        (Family::Inet, "input", Some(Hook::Input), Some(-5))
    );
    assert_eq!(
        (native.verdict, native.counted, native.packets),
        (Verdict::Drop, true, N)
    );
    // tracer's own table is never listed.
    assert!(!after.iter().any(|r| r.table.starts_with("tracer_")));

    // Deltas.
    let mut moved: Vec<(String, u64)> = rules::moved(&before.rules, &after)
        .into_iter()
        .map(|(r, d)| (r.text, d))
        .collect();
    moved.sort();
    assert_eq!(
        moved,
        [
            ("-A INPUT -p udp -m udp --dport 5353 -j DROP".to_string(), N),
            ("udp dport 5354 counter drop".to_string(), N),
        ]
    );

    // The trace: N drops of the 5353 flow, by the iptables rule's handle.
    let drop_rows: Vec<_> = verdicts
        .counts()
        .iter()
        .filter(|(k, _)| k.verdict == NF_DROP)
        .collect();
    assert_eq!(drop_rows.len(), 1, "{drop_rows:#?}");
    let (key, &count) = drop_rows[0];
    assert_eq!(count, N);
    assert_eq!(
        (
            key.family,
            key.table.as_str(),
            key.chain.as_str(),
            key.rule_handle
        ),
        (Some(Family::Ipv4), "filter", "INPUT", ipt.handle)
    );
    assert!(ipt.handle.is_some());
    assert_eq!(
        (
            key.flow.outer.proto,
            key.flow.outer.sport,
            key.flow.outer.dport
        ),
        (17, 40000, 5353)
    );
    let rule = rules::lookup(
        &after,
        Family::Ipv4,
        "filter",
        "INPUT",
        key.rule_handle.unwrap(),
    )
    .unwrap();
    assert_eq!(rule.text, "-A INPUT -p udp -m udp --dport 5353 -j DROP");
    // The 5354 datagrams were not traced at all.
    assert!(verdicts.counts().keys().all(|k| k.flow.outer.dport == 5353));
    assert_eq!(reader.overruns(), 0);

    drop(table);
    assert!(!nft(b, &["list", "tables"]).contains("tracer_"));
}

#[test]
fn trace_table_goes_on_panic_and_bad_filters_are_one_line_errors() {
    require_root();
    let pair = Pair::new(1500).unwrap();
    let b = &pair.b.ns;

    let e = in_netns(b, || TraceTable::create("udp dportt 53"))
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("bad --explain filter 'udp dportt 53': "),
        "{e}"
    );
    assert!(e.contains("syntax error") && !e.contains('\n'), "{e}");

    let panicked = in_netns(b, || {
        std::panic::catch_unwind(|| {
            let _t = TraceTable::create("udp dport 53").unwrap();
            assert!(nft(b, &["list", "tables"]).contains("tracer_"));
            panic!("on purpose");
        })
        .is_err()
    })
    .unwrap();
    assert!(panicked);
    assert_eq!(nft(b, &["list", "tables"]), "");
}

#[test]
fn remove_stale_removes_only_tables_of_dead_tracers() {
    require_root();
    let pair = Pair::new(1500).unwrap();
    let b = &pair.b.ns;
    // SAFETY: signal 0 only checks for the process.
    assert_ne!(unsafe { libc::kill(999999, 0) }, 0, "pid 999999 is alive");
    for (family, name) in [
        ("inet", "tracer_999999"),
        ("inet", "keepme"),
        ("ip", "tracer_999998"),
    ] {
        nft(b, &["add", "table", family, name]);
    }
    let (removed, live) = in_netns(b, || {
        let live = TraceTable::create("udp dport 9").unwrap();
        (trace::remove_stale().unwrap(), live)
    })
    .unwrap();
    assert_eq!(removed, ["tracer_999999"]);
    let tables = nft(b, &["list", "tables"]);
    for kept in [
        "table inet keepme",
        "table ip tracer_999998",
        &format!("table inet {}", live.name()),
    ] {
        assert!(tables.contains(kept), "{kept} is gone: {tables}");
    }
    assert!(!tables.contains("tracer_999999"));
}

/// Not a test: regenerates fixtures/trace-events.hex (its header says what
/// it holds). Run `cargo test -p tracer capture_trace_fixture -- --ignored
/// --nocapture` and paste the hex lines.
#[test]
#[ignore]
fn capture_trace_fixture() {
    require_root();
    let pair = Pair::new(1500).unwrap();
    let b = &pair.b.ns;
    iptables(
        b,
        &["-A", "INPUT", "-p", "udp", "--dport", "5353", "-j", "DROP"],
    )
    .unwrap();
    iptables(b, &["-N", "OVERLAY"]).unwrap();
    iptables(b, &["-A", "INPUT", "-j", "OVERLAY"]).unwrap();
    iptables(
        b,
        &[
            "-A",
            "OVERLAY",
            "-p",
            "udp",
            "--dport",
            "6001",
            "-j",
            "REJECT",
            "--reject-with",
            "icmp-port-unreachable",
        ],
    )
    .unwrap();
    nft(b, &["add", "table", "inet", "fw"]);
    nft(
        b,
        &[
            "add",
            "chain",
            "inet",
            "fw",
            "input",
            "{ type filter hook input priority filter - 5; policy accept; }",
        ],
    );
    nft(
        b,
        &[
            "add", "rule", "inet", "fw", "input", "udp", "dport", "7000", "counter", "drop",
        ],
    );
    nft(
        b,
        &[
            "add", "rule", "inet", "fw", "input", "udp", "dport", "7002", "counter", "accept",
        ],
    );
    let (table, mut reader) = in_netns(b, || {
        (
            TraceTable::create("udp dport { 5353, 6001, 7000, 7002, 7003 }").unwrap(),
            TraceReader::open().unwrap(),
        )
    })
    .unwrap();
    let from = SocketAddrV4::new(pair.a.ip, 40000);
    for port in [5353, 6001, 7000, 7002, 7003] {
        send_udp(&pair.a.ns, from, SocketAddrV4::new(pair.b.ip, port), 2, 10).unwrap();
    }
    // And one from B, through B's output hook.
    let from_b = SocketAddrV4::new(pair.b.ip, 40001);
    send_udp(b, from_b, SocketAddrV4::new(pair.a.ip, 7003), 1, 10).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let raw = reader.read_raw().unwrap();
    println!("# {} datagrams, table {}", raw.len(), table.name());
    for d in &raw {
        println!(
            "{}",
            d.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
    }
}
