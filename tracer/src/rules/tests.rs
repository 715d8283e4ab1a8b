//! The rule readers against captured tool output.

use super::{iptables::*, nft::*, rule::*, snapshot::*};
use crate::model::Hook;

// Captured by fixtures/capture.sh: iptables (nf_tables and legacy
// backends), ip6tables and native nftables rules in one namespace after
// known traffic.
const IPTABLES_SAVE: &str = include_str!("fixtures/iptables-save.txt");
const IPTABLES_SAVE_STDERR: &str = include_str!("fixtures/iptables-save.stderr");
const IP6TABLES_SAVE: &str = include_str!("fixtures/ip6tables-save.txt");
const IPTABLES_LEGACY_SAVE: &str = include_str!("fixtures/iptables-legacy-save.txt");
const NFT_RULESET: &str = include_str!("fixtures/nft-ruleset.txt");
const NFT_RULESET_STDERR: &str = include_str!("fixtures/nft-ruleset.stderr");

fn find<'a>(rules: &'a [Rule], table: &str, chain: &str, text: &str) -> &'a Rule {
    rules
        .iter()
        .find(|r| r.table == table && r.chain == chain && r.text.contains(text))
        .unwrap_or_else(|| panic!("no rule {table}/{chain} '{text}' in {rules:#?}"))
}

/// Everything the fixtures hold, merged as `snapshot` merges it.
fn all() -> Vec<Rule> {
    let mut ipt = parse_iptables_save(IPTABLES_SAVE, Family::Ipv4);
    ipt.extend(parse_iptables_save(IPTABLES_LEGACY_SAVE, Family::Ipv4));
    ipt.extend(parse_iptables_save(IP6TABLES_SAVE, Family::Ipv6));
    let mut rules = merge(ipt, parse_nft_ruleset(NFT_RULESET, NFT_RULESET_STDERR));
    super::reach(&mut rules);
    rules
}

#[test]
fn user_chains_are_reached_from_the_base_chains_that_jump_or_go_to_them() {
    let rules = all();
    let overlay = find(
        &rules,
        "filter",
        "OVERLAY",
        "-A OVERLAY -p icmp -j REJECT --reject-with icmp-host-prohibited",
    );
    assert_eq!(
        overlay.via,
        [(Hook::Input, Some(0)), (Hook::Forward, Some(0))]
    );
    let icmp = find(
        &rules,
        "fw",
        "icmp_chk",
        "icmp type echo-request limit rate over 1000/second counter drop",
    );
    assert_eq!(icmp.via, [(Hook::Input, Some(-5))]);
}

/// A fake tool runner: the fixtures for the tools in `have`, "not
/// installed" for the others; records what was run.
fn fake(have: &[&str], calls: &mut Vec<String>) -> impl FnMut(&str, &[&str]) -> Tool {
    let have: Vec<String> = have.iter().map(|s| s.to_string()).collect();
    move |program: &str, args: &[&str]| {
        calls.push(format!("{program} {}", args.join(" ")));
        if !have.iter().any(|h| h == program) {
            return Tool::Missing;
        }
        let (out, err) = match program {
            "iptables-save" | "iptables-nft-save" => (IPTABLES_SAVE, IPTABLES_SAVE_STDERR),
            "iptables-legacy-save" => (IPTABLES_LEGACY_SAVE, ""),
            "ip6tables-save" => (IP6TABLES_SAVE, ""),
            "nft" => (NFT_RULESET, NFT_RULESET_STDERR),
            _ => ("", ""),
        };
        Tool::Ran {
            stdout: out.into(),
            stderr: err.into(),
        }
    }
}

#[test]
fn snapshot_reads_the_legacy_backend_when_told_to() {
    let mut calls = Vec::new();
    let all_tools = [
        "iptables-save",
        "iptables-legacy-save",
        "ip6tables-save",
        "nft",
    ];
    let snap = collect(&mut fake(&all_tools, &mut calls), false).unwrap();
    assert_eq!(
        calls,
        [
            "iptables-save -c",
            "iptables-legacy-save -c",
            "ip6tables-save -c",
            "nft -a list ruleset"
        ]
    );
    assert_eq!(snap.rules, all());
    assert!(snap.unavailable.is_empty());
}

#[test]
fn snapshot_reads_the_nft_backend_when_iptables_save_is_legacy() {
    let mut calls = Vec::new();
    let tools = [
        "iptables-save",
        "iptables-nft-save",
        "ip6tables-save",
        "nft",
    ];
    let snap = collect(&mut fake(&tools, &mut calls), true).unwrap();
    assert_eq!(
        calls,
        [
            "iptables-save -c",
            "iptables-nft-save -c",
            "ip6tables-save -c",
            "ip6tables-nft-save -c",
            "nft -a list ruleset"
        ]
    );
    // ip6tables-nft-save is not installed: no rules there, and nothing to tell.
    assert!(snap.unavailable.is_empty());
}

#[test]
fn snapshot_without_some_tools() {
    let mut calls = Vec::new();
    let snap = collect(
        &mut fake(&["iptables-save", "iptables-legacy-save"], &mut calls),
        false,
    )
    .unwrap();
    // iptables rules only, without handles (they come from nft's listing).
    assert_eq!(snap.rules.len(), 10);
    assert!(
        snap.rules
            .iter()
            .all(|r| r.source != Source::Nft && r.handle.is_none())
    );
    let missing: Vec<(&str, &str)> = snap
        .unavailable
        .iter()
        .map(|u| (u.tool, u.reason.as_str()))
        .collect();
    assert_eq!(
        missing,
        [
            ("ip6tables-save", "not installed"),
            ("nft", "not installed")
        ]
    );

    let mut calls = Vec::new();
    let snap = collect(&mut fake(&["nft"], &mut calls), false).unwrap();
    // nft alone: the iptables-nft tables are still recognised by nft's warnings.
    assert_eq!(snap.rules.len(), 15);
    assert_eq!(snap.unavailable.len(), 2);

    let mut calls = Vec::new();
    let snap = collect(&mut fake(&[], &mut calls), false).unwrap();
    assert!(snap.rules.is_empty());
    assert_eq!(snap.unavailable.len(), 3);
}

#[test]
fn snapshot_fails_when_no_tool_could_be_read() {
    let mut denied = |program: &str, _: &[&str]| match program {
        "nft" => Tool::Missing,
        _ => Tool::Failed("exit status: 4: Permission denied (you must be root)".into()),
    };
    let e = collect(&mut denied, false).unwrap_err().to_string();
    assert_eq!(
        e,
        "cannot read any firewall rules: iptables-save: exit status: 4: Permission denied (you must be root)"
    );
}

#[test]
fn iptables_save_tables_chains_counters_verdicts() {
    assert!(IPTABLES_SAVE_STDERR.contains("legacy tables present"));
    let rules = parse_iptables_save(IPTABLES_SAVE, Family::Ipv4);
    assert_eq!(rules.len(), 9, "{rules:#?}");
    assert!(rules.iter().all(|r| r.source == Source::Iptables
        && r.family == Family::Ipv4
        && r.counted
        && r.handle.is_none()));

    let drop = find(&rules, "filter", "INPUT", "--dport 5353");
    assert_eq!(drop.text, "-A INPUT -p udp -m udp --dport 5353 -j DROP");
    assert_eq!(
        (
            drop.hook,
            drop.priority,
            drop.verdict,
            drop.packets,
            drop.bytes
        ),
        (Some(Hook::Input), Some(0), Verdict::Drop, 5, 145)
    );
    let jump = find(&rules, "filter", "INPUT", "-j OVERLAY");
    assert_eq!(
        (jump.verdict, jump.packets, jump.bytes),
        (Verdict::Other, 13, 542)
    );
    let goto = find(&rules, "filter", "FORWARD", "-g OVERLAY");
    assert_eq!(
        (goto.hook, goto.verdict),
        (Some(Hook::Forward), Verdict::Other)
    );

    // A user chain: no hook.
    let reset = find(&rules, "filter", "OVERLAY", "tcp-reset");
    assert_eq!(
        reset.text,
        "-A OVERLAY -s 10.99.0.0/24 -p tcp -m tcp --dport 80 -j REJECT --reject-with tcp-reset"
    );
    assert_eq!(
        (reset.hook, reset.priority, reset.verdict, reset.packets),
        (None, None, Verdict::Reject, 0)
    );
    let icmp = find(&rules, "filter", "OVERLAY", "icmp-host-prohibited");
    assert_eq!(
        (icmp.verdict, icmp.packets, icmp.bytes),
        (Verdict::Reject, 3, 252)
    );
    // A quoted comment is part of the text, and does not hide the target.
    let vxlan = find(&rules, "filter", "OVERLAY", "--comment");
    assert_eq!(
        vxlan.text,
        "-A OVERLAY -p udp -m udp --dport 4789 -m comment --comment \"vxlan in\" -j ACCEPT"
    );
    assert_eq!((vxlan.verdict, vxlan.packets), (Verdict::Accept, 5));

    // Other tables: hooks from built-in chain names, standard priorities.
    let mark = find(&rules, "mangle", "PREROUTING", "MARK");
    assert_eq!(
        (mark.hook, mark.priority, mark.verdict, mark.packets),
        (Some(Hook::Prerouting), Some(-150), Verdict::Other, 5)
    );
    let notrack = find(&rules, "raw", "PREROUTING", "NOTRACK");
    assert_eq!((notrack.priority, notrack.packets), (Some(-300), 5));
    let masq = find(&rules, "nat", "POSTROUTING", "MASQUERADE");
    assert_eq!(
        (masq.hook, masq.priority),
        (Some(Hook::Postrouting), Some(100))
    );
}

#[test]
fn ip6tables_save() {
    let rules = parse_iptables_save(IP6TABLES_SAVE, Family::Ipv6);
    assert_eq!(rules.len(), 2);
    let drop = find(&rules, "filter", "INPUT", "--dport 5353");
    assert_eq!(
        (
            drop.family,
            drop.source,
            drop.verdict,
            drop.packets,
            drop.bytes
        ),
        (Family::Ipv6, Source::Iptables, Verdict::Drop, 2, 98)
    );
    let reject = find(&rules, "filter", "INPUT", "icmp6-adm-prohibited");
    assert_eq!(
        reject.text,
        "-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j REJECT --reject-with icmp6-adm-prohibited"
    );
    assert_eq!(
        (reject.verdict, reject.packets, reject.bytes),
        (Verdict::Reject, 2, 208)
    );
}

#[test]
fn iptables_legacy_save() {
    let rules = parse_iptables_save(IPTABLES_LEGACY_SAVE, Family::Ipv4);
    assert_eq!(rules.len(), 1);
    let r = &rules[0];
    assert_eq!(r.source, Source::IptablesLegacy);
    assert_eq!(r.text, "-A INPUT -p udp -m udp --dport 6000 -j DROP");
    assert_eq!(
        (r.hook, r.verdict, r.packets, r.bytes),
        (Some(Hook::Input), Verdict::Drop, 5, 145)
    );
}

#[test]
fn iptables_save_without_counters_and_odd_quoting() {
    let text = "*filter\n:INPUT DROP [0:0]\n:MY - [0:0]\n\
        -A INPUT -m comment --comment \"say \\\"-j DROP\\\" here\" -j MY\n\
        -A MY -j REJECT --reject-with icmp-port-unreachable\nCOMMIT\n";
    let rules = parse_iptables_save(text, Family::Ipv4);
    assert_eq!(rules.len(), 2);
    assert_eq!((rules[0].verdict, rules[0].packets), (Verdict::Other, 0));
    assert_eq!((rules[1].hook, rules[1].verdict), (None, Verdict::Reject));
}

#[test]
fn nft_ruleset_native_rules() {
    let nft = parse_nft_ruleset(NFT_RULESET, NFT_RULESET_STDERR);
    // Five iptables-nft tables are warned about; tracer_4242 is tracer's own.
    assert!(nft.native.iter().all(|r| r.source == Source::Nft));
    assert!(
        !nft.native
            .iter()
            .any(|r| r.table == "filter" || r.table.starts_with("tracer_"))
    );
    assert!(
        nft.managed
            .iter()
            .all(|r| ["filter", "nat", "mangle", "raw"].contains(&r.table.as_str()))
    );
    assert_eq!(nft.managed.len(), 11);
    let tables: Vec<(Family, &str)> = nft
        .native
        .iter()
        .map(|r| (r.family, r.table.as_str()))
        .collect();
    assert!(tables.contains(&(Family::Inet, "fw")));
    assert!(tables.contains(&(Family::Ipv6, "six")));
    assert!(tables.contains(&(Family::Bridge, "br")));
    assert!(tables.contains(&(Family::Netdev, "nd")));
    assert_eq!(nft.native.len(), 15, "{:#?}", nft.native);

    let rules = &nft.native;
    let lo = find(rules, "fw", "input", "iifname");
    assert_eq!(lo.text, "iifname \"lo\" accept");
    assert_eq!(
        (lo.hook, lo.priority, lo.verdict, lo.counted, lo.handle),
        (Some(Hook::Input), Some(-5), Verdict::Accept, false, Some(7))
    );
    let d = find(rules, "fw", "input", "udp dport 7000");
    assert_eq!(d.text, "udp dport 7000 counter drop");
    assert_eq!(
        (d.verdict, d.counted, d.packets, d.bytes, d.handle),
        (Verdict::Drop, true, 5, 145, Some(9))
    );
    let r = find(rules, "fw", "input", "udp dport 7001");
    assert_eq!(
        (r.verdict, r.packets, r.handle),
        (Verdict::Reject, 5, Some(10))
    );
    // Braces and '#' inside a quoted comment.
    let r = find(rules, "fw", "input", "tcp dport 8080");
    assert_eq!(
        r.text,
        "tcp dport 8080 counter reject with tcp reset comment \"no { proxy } here\""
    );
    assert_eq!((r.verdict, r.handle), (Verdict::Reject, Some(11)));
    let j = find(rules, "fw", "input", "jump icmp_chk");
    assert_eq!((j.verdict, j.counted), (Verdict::Other, false));
    // A verdict map's verdicts are not the rule's.
    let v = find(rules, "fw", "input", "vmap");
    assert_eq!((v.verdict, v.handle), (Verdict::Other, Some(14)));
    let a = find(rules, "fw", "input", "udp dport 7002");
    assert_eq!((a.verdict, a.packets), (Verdict::Accept, 5));

    // Regular chains have no hook.
    let icmp = find(rules, "fw", "icmp_chk", "echo-request");
    assert_eq!(
        (icmp.hook, icmp.priority, icmp.verdict),
        (None, None, Verdict::Drop)
    );
    let ret = find(rules, "fw", "tcp_chk", "return");
    assert_eq!(ret.verdict, Verdict::Other);

    // Named and numeric priorities.
    let fwd = find(rules, "fw", "fwd_c", "10.9.9.9");
    assert_eq!((fwd.hook, fwd.priority), (Some(Hook::Forward), Some(10)));
    let post = find(rules, "fw", "post", "masquerade");
    assert_eq!(
        (post.hook, post.priority, post.verdict),
        (Some(Hook::Postrouting), Some(105), Verdict::Other)
    );
    let six = find(rules, "six", "in", "7003");
    assert_eq!(
        (
            six.family,
            six.hook,
            six.priority,
            six.verdict,
            six.packets,
            six.bytes
        ),
        (
            Family::Ipv6,
            Some(Hook::Input),
            Some(-300),
            Verdict::Drop,
            1,
            49
        )
    );
    let br = find(rules, "br", "fwd_c", "arp");
    assert_eq!(
        (br.family, br.hook, br.priority),
        (Family::Bridge, Some(Hook::Forward), Some(-200))
    );
    let nd = find(rules, "nd", "ing", "udp dport 9");
    assert_eq!(
        (nd.family, nd.hook, nd.priority, nd.verdict, nd.packets),
        (
            Family::Netdev,
            Some(Hook::Ingress),
            Some(-500),
            Verdict::Drop,
            5
        )
    );
    // The set's elements, spread over lines, are no rules.
    assert!(!rules.iter().any(|r| r.text.contains("10.201.0.0")));
}

#[test]
fn nft_warnings_on_stdout_too() {
    // Newer nft versions print the warning before the table, on stdout.
    let out = "# Warning: table ip filter is managed by iptables-nft, do not touch!\n\
        table ip filter { # handle 1\n\tchain INPUT { # handle 1\n\
        \t\ttype filter hook input priority filter; policy accept;\n\
        \t\tcounter packets 1 bytes 2 # handle 2\n\t}\n}\n\
        table inet t { # handle 2\n\tchain c { # handle 1\n\
        \t\ttype filter hook output priority 0; policy drop;\n\t}\n}\n";
    let nft = parse_nft_ruleset(out, "");
    assert!(nft.native.is_empty());
    assert_eq!(nft.managed.len(), 1);
}

#[test]
fn merge_gives_iptables_nft_rules_their_handles() {
    let rules = all();
    // 9 + 2 iptables-nft, 1 legacy, 15 native nft.
    assert_eq!(rules.len(), 27);
    let by = |src, fam, table: &str, chain: &str, text: &str| {
        rules
            .iter()
            .find(|r| {
                r.source == src
                    && r.family == fam
                    && r.table == table
                    && r.chain == chain
                    && r.text.contains(text)
            })
            .unwrap_or_else(|| panic!("no {table}/{chain} {text}"))
    };
    let handle = |src, fam, table, chain, text| by(src, fam, table, chain, text).handle;
    use Family::*;
    use Source::*;
    assert_eq!(handle(Iptables, Ipv4, "filter", "INPUT", "5353"), Some(2));
    assert_eq!(
        handle(Iptables, Ipv4, "filter", "INPUT", "OVERLAY"),
        Some(4)
    );
    assert_eq!(
        handle(Iptables, Ipv4, "filter", "OVERLAY", "tcp-reset"),
        Some(5)
    );
    assert_eq!(
        handle(Iptables, Ipv4, "filter", "OVERLAY", "icmp-host"),
        Some(6)
    );
    assert_eq!(
        handle(Iptables, Ipv4, "filter", "OVERLAY", "vxlan in"),
        Some(7)
    );
    assert_eq!(handle(Iptables, Ipv4, "filter", "FORWARD", "-g"), Some(9));
    assert_eq!(
        handle(Iptables, Ipv4, "nat", "POSTROUTING", "MASQ"),
        Some(2)
    );
    assert_eq!(handle(Iptables, Ipv6, "filter", "INPUT", "5353"), Some(2));
    assert_eq!(handle(Iptables, Ipv6, "filter", "INPUT", "REJECT"), Some(3));
    assert_eq!(
        handle(IptablesLegacy, Ipv4, "filter", "INPUT", "6000"),
        None
    );
    // The text stays iptables', and lookup by what a trace event says finds it.
    let r = lookup(&rules, Ipv4, "filter", "OVERLAY", 6).unwrap();
    assert_eq!(
        r.text,
        "-A OVERLAY -p icmp -j REJECT --reject-with icmp-host-prohibited"
    );
    assert_eq!(
        lookup(&rules, Inet, "fw", "input", 9).unwrap().text,
        "udp dport 7000 counter drop"
    );
    assert!(lookup(&rules, Ipv6, "filter", "INPUT", 9).is_none());
}

#[test]
fn unwarned_iptables_nft_tables_are_still_iptables() {
    // nft warns only about tables with xtables expressions: this one has none.
    let ipt = parse_iptables_save(
        "# Generated by iptables-save v1.8.9 (nf_tables) on Sun Nov 22 02:28:18 2026\n*filter\n\
         :INPUT ACCEPT [0:0]\n[4:116] -A INPUT -p udp -m udp --dport 5353 -j DROP\nCOMMIT\n",
        Family::Ipv4,
    );
    let nft = parse_nft_ruleset(
        "table ip filter { # handle 1\n\tchain INPUT { # handle 1\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tudp dport 5353 counter packets 4 bytes 116 drop # handle 2\n\t}\n}\n",
        "",
    );
    assert_eq!(nft.native.len(), 1);
    let rules = merge(ipt, nft);
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].source, Source::Iptables);
    assert_eq!(rules[0].handle, Some(2));
}

#[test]
fn counter_values_are_not_rule_text() {
    for (raw, want) in [
        (
            "udp dport 7000 counter packets 5 bytes 145 drop",
            "udp dport 7000 counter drop",
        ),
        ("counter packets 0 bytes 0 jump X", "counter jump X"),
        (
            "udp dport 4789  counter packets 5 bytes 145 accept",
            "udp dport 4789  counter accept",
        ),
        (
            "counter packets 1 bytes 2 log prefix \"counter packets 3 bytes 4 \" drop",
            "counter log prefix \"counter packets 3 bytes 4 \" drop",
        ),
        ("counter name \"cnt\" accept", "counter name \"cnt\" accept"),
    ] {
        assert_eq!(strip_counter_values(raw), want);
    }
}

#[test]
fn priorities() {
    for (p, fam, want) in [
        ("-350", Family::Inet, Some(-350)),
        ("filter", Family::Inet, Some(0)),
        ("filter-5", Family::Ipv4, Some(-5)),
        ("srcnat+5", Family::Ipv4, Some(105)),
        ("dstnat", Family::Ipv4, Some(-100)),
        ("security", Family::Ipv6, Some(50)),
        ("filter", Family::Bridge, Some(-200)),
        ("out", Family::Bridge, Some(100)),
        ("out", Family::Ipv4, None),
        ("bogus", Family::Ipv4, None),
    ] {
        assert_eq!(parse_priority(p, fam), want, "{p} {fam:?}");
    }
}

#[test]
fn moved_reports_drop_and_reject_deltas() {
    let before = all();
    let mut after = before.clone();
    let bump = |rules: &mut Vec<Rule>, src: Source, table: &str, text: &str, n: u64| {
        let r = rules
            .iter_mut()
            .find(|r| r.source == src && r.table == table && r.text.contains(text))
            .unwrap();
        r.packets += n;
        r.bytes += n * 29;
    };
    bump(&mut after, Source::Iptables, "filter", "--dport 5353", 7);
    bump(
        &mut after,
        Source::IptablesLegacy,
        "filter",
        "--dport 6000",
        2,
    );
    bump(
        &mut after,
        Source::Iptables,
        "filter",
        "icmp-host-prohibited",
        1,
    );
    bump(&mut after, Source::Nft, "fw", "udp dport 7000", 3);
    // Accepts and jumps moving are not drops.
    bump(&mut after, Source::Nft, "fw", "udp dport 7002", 3);
    bump(&mut after, Source::Iptables, "filter", "-j OVERLAY", 3);
    // A new rule inserted at the top of a chain shifts positions but not identities.
    let mut new = after[0].clone();
    new.text = "-A PREROUTING -s 192.0.2.1/32 -j DROP".into();
    new.verdict = Verdict::Drop;
    new.packets = 4;
    after.insert(0, new);

    let mut got: Vec<(String, u64)> = moved(&before, &after)
        .into_iter()
        .map(|(r, d)| (r.text, d))
        .collect();
    got.sort();
    let mut want = vec![
        ("-A INPUT -p udp -m udp --dport 5353 -j DROP".to_string(), 7),
        ("-A INPUT -p udp -m udp --dport 6000 -j DROP".to_string(), 2),
        (
            "-A OVERLAY -p icmp -j REJECT --reject-with icmp-host-prohibited".to_string(),
            1,
        ),
        ("-A PREROUTING -s 192.0.2.1/32 -j DROP".to_string(), 4),
        ("udp dport 7000 counter drop".to_string(), 3),
    ];
    want.sort();
    assert_eq!(got, want);
    assert!(moved(&before, &before).is_empty());
}

#[test]
fn moved_treats_a_counter_that_went_down_as_reset() {
    let before = all();
    let mut after = before.clone();
    let r = after
        .iter_mut()
        .find(|r| r.text.contains("--dport 5353") && r.family == Family::Ipv4)
        .unwrap();
    r.packets = 2;
    r.handle = Some(40); // iptables-restore recreated it
    let got = moved(&before, &after);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, 2);
}
