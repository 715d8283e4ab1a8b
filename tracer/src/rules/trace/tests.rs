//! The trace decoder and the verdict folding against captured events.

use std::collections::HashMap;

use tracer_ebpf::{
    FAMILY_IPV4, FAMILY_IPV6, FlowId, MAX_VXLAN_PORTS, TUPLE_DF, TUPLE_FRAG_FIRST, TUPLE_PORTS,
    Tuple,
};

use super::*;
use super::{event::*, table::*};
use crate::{
    rules::Family,
    sys::netlink::build::{attr, nfnl_message},
};

/// The datagrams of fixtures/trace-events.hex (see its header for how they were made).
fn datagrams() -> Vec<Vec<u8>> {
    include_str!("../fixtures/trace-events.hex")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            (0..l.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap())
                .collect()
        })
        .collect()
}

fn events() -> Vec<TraceEvent> {
    datagrams().iter().flat_map(|d| decode(d)).collect()
}

const A: [u8; 4] = [10, 3, 1, 1];
const B: [u8; 4] = [10, 3, 1, 2];

fn udp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> FlowId {
    let mut t = Tuple {
        sport,
        dport,
        proto: 17,
        family: FAMILY_IPV4,
        flags: TUPLE_PORTS | TUPLE_DF,
        ..Tuple::default()
    };
    t.src[..4].copy_from_slice(&src);
    t.dst[..4].copy_from_slice(&dst);
    FlowId {
        outer: t,
        ..FlowId::default()
    }
}

#[test]
fn every_datagram_is_one_trace_message() {
    let d = datagrams();
    assert_eq!(d.len(), 71);
    for m in &d {
        assert_eq!(
            u32::from_ne_bytes(m[..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), NFT_TRACE_MSG_TYPE);
        assert_eq!(decode(m).len(), 1);
    }
    // Several datagrams in one buffer decode as well.
    let all: Vec<u8> = d.concat();
    assert_eq!(decode(&all), events());
}

#[test]
fn decodes_a_rule_event_with_headers() {
    let ev = &events()[0];
    assert_eq!(
        ev,
        &TraceEvent {
            id: 163328463,
            family: Some(Family::Inet),
            table: "tracer_13471".into(),
            chain: "pre".into(),
            rule_handle: Some(4),
            kind: TraceKind::Rule,
            verdict: Some(NFT_CONTINUE),
            target_chain: None,
            nfproto: 2,
            network_header: vec![
                69, 0, 0, 38, 153, 205, 64, 0, 64, 17, 138, 241, 10, 3, 1, 1, 10, 3, 1, 2
            ],
            transport_header: vec![
                156, 64, 20, 233, 0, 18, 22, 44, 90, 90, 90, 90, 90, 90, 90, 90, 90, 90
            ],
            iif: Some(2),
            oif: None,
        }
    );
    assert_eq!(ev.terminal_verdict(), None);
    assert_eq!(
        ev.flow(&[0; MAX_VXLAN_PORTS]),
        Some(udp4(A, 40000, B, 5353))
    );
}

#[test]
fn decodes_drops_accepts_jumps_and_policies() {
    let evs = events();
    let rules = |family, table: &str, chain: &str, handle, verdict| {
        evs.iter()
            .filter(|e| {
                e.kind == TraceKind::Rule
                    && e.family == Some(family)
                    && e.table == table
                    && e.chain == chain
                    && e.rule_handle == Some(handle)
                    && e.verdict == Some(verdict)
            })
            .count()
    };
    // iptables -j DROP: an nftables rule of table ip filter, with its handle.
    assert_eq!(rules(Family::Ipv4, "filter", "INPUT", 2, NF_DROP), 2);
    // iptables -j REJECT in a user chain: a drop, in that chain.
    assert_eq!(rules(Family::Ipv4, "filter", "OVERLAY", 5, NF_DROP), 2);
    // Native nft rules.
    assert_eq!(rules(Family::Inet, "fw", "input", 2, NF_DROP), 2);
    assert_eq!(rules(Family::Inet, "fw", "input", 3, NF_ACCEPT), 2);
    // Every packet of A but the nft-dropped ones jumped to OVERLAY...
    let jumps: Vec<&TraceEvent> = evs.iter().filter(|e| e.verdict == Some(NFT_JUMP)).collect();
    assert_eq!(jumps.len(), 6);
    assert!(
        jumps
            .iter()
            .all(|e| e.target_chain.as_deref() == Some("OVERLAY") && e.rule_handle == Some(4))
    );
    // ... and a chain's end shows as a rule event without handle, verdict continue.
    assert!(evs.iter().any(|e| e.chain == "OVERLAY"
        && e.kind == TraceKind::Rule
        && e.rule_handle.is_none()
        && e.verdict == Some(NFT_CONTINUE)));
    // Policies come with the policy as verdict and no handle.
    let policies: Vec<&TraceEvent> = evs.iter().filter(|e| e.kind == TraceKind::Policy).collect();
    assert!(!policies.is_empty());
    assert!(
        policies
            .iter()
            .all(|e| e.verdict == Some(NF_ACCEPT) && e.rule_handle.is_none())
    );
    // B's own datagram went through the output hook.
    let out: Vec<&TraceEvent> = evs.iter().filter(|e| e.oif.is_some()).collect();
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].chain.as_str(), out[0].oif, out[0].iif),
        ("out", Some(2), None)
    );
    assert_eq!(
        out[0].flow(&[0; MAX_VXLAN_PORTS]),
        Some(udp4(B, 40001, A, 7003))
    );
}

#[test]
fn trace_ids_repeat_across_packets_of_a_flow() {
    // The two datagrams to 5353 share the id: the first was dropped and
    // its skb memory reused for the second.
    let evs = events();
    let firsts: Vec<&TraceEvent> = evs
        .iter()
        .filter(|e| {
            e.chain == "pre" && e.rule_handle == Some(4) && e.transport_header[2..4] == [0x14, 0xe9]
        })
        .collect();
    assert_eq!(firsts.len(), 2);
    assert_eq!(firsts[0].id, firsts[1].id);
    assert_ne!(firsts[0].network_header, firsts[1].network_header);
}

#[test]
fn verdicts_per_flow_table_chain_and_rule() {
    let mut v = Verdicts::new([0; MAX_VXLAN_PORTS]);
    v.add(&events());
    let key = |dport, family, table: &str, chain: &str, handle, verdict| VerdictKey {
        flow: udp4(A, 40000, B, dport),
        family: Some(family),
        table: table.into(),
        chain: chain.into(),
        rule_handle: handle,
        verdict,
    };
    use Family::*;
    let want: HashMap<VerdictKey, u64> = [
        (key(5353, Inet, "fw", "input", None, NF_ACCEPT), 2),
        (key(5353, Ipv4, "filter", "INPUT", Some(2), NF_DROP), 2),
        (key(6001, Inet, "fw", "input", None, NF_ACCEPT), 2),
        (key(6001, Ipv4, "filter", "OVERLAY", Some(5), NF_DROP), 2),
        (key(7000, Inet, "fw", "input", Some(2), NF_DROP), 2),
        (key(7002, Inet, "fw", "input", Some(3), NF_ACCEPT), 2),
        (key(7002, Ipv4, "filter", "INPUT", None, NF_ACCEPT), 2),
        (key(7003, Inet, "fw", "input", None, NF_ACCEPT), 2),
        (key(7003, Ipv4, "filter", "INPUT", None, NF_ACCEPT), 2),
    ]
    .into_iter()
    .collect();
    assert_eq!(v.counts(), &want);
    assert_eq!(v.take(), want);
    assert!(v.counts().is_empty());
    // Nothing is left waiting for a verdict.
    assert!(v.open.is_empty());
}

#[test]
fn verdicts_fill_the_vni_of_vxlan_packets() {
    // A VXLAN packet's outer headers, as a trace event carries them (the
    // transport header's 20 bytes hold UDP and VXLAN, not the inner frame).
    let mut nh = vec![0x45, 0, 0, 100, 0, 1, 0, 0, 64, 17, 0, 0];
    nh.extend_from_slice(&A);
    nh.extend_from_slice(&B);
    let mut th = vec![0x9c, 0x40, 0x12, 0xb5, 0, 80, 0, 0];
    th.extend_from_slice(&[0x08, 0, 0, 0, 0, 0x10, 0x92, 0, 2, 0, 0, 0]);
    let mut ports = [0; MAX_VXLAN_PORTS];
    ports[0] = 4789;
    let id = flow_of(2, &nh, &th, &ports).unwrap();
    assert_eq!(id.vni, tracer_ebpf::VNI_PRESENT | 4242);
    assert_eq!((id.outer.dport, id.inner), (4789, Tuple::default()));
}

#[test]
fn flows_from_cut_headers() {
    let none = [0; MAX_VXLAN_PORTS];
    // IPv6 first fragment: the fragment header is past the 40 bytes given.
    let mut v6 = vec![0x60, 0, 0, 0, 0, 0, 44, 64];
    v6.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    v6.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    let id = flow_of(10, &v6, &[0x13, 0x88, 0x13, 0x89], &none).unwrap();
    assert_eq!(
        (id.outer.family, id.outer.proto, id.outer.flags),
        (FAMILY_IPV6, 44, 0)
    );
    assert_eq!(id.outer.dst[15], 2);
    // Plain IPv6 UDP: ports too.
    v6[6] = 17;
    let id = flow_of(10, &v6, &[0x13, 0x88, 0x13, 0x89, 0, 8, 0, 0], &none).unwrap();
    assert_eq!(
        (id.outer.proto, id.outer.sport, id.outer.dport),
        (17, 5000, 5001)
    );
    // IPv4 with 40 bytes of options: only 40 bytes of the 60 given, no ports.
    let mut v4 = vec![0x4f, 0, 0, 0, 0, 1, 0x20, 0, 64, 6, 0, 0];
    v4.extend_from_slice(&A);
    v4.extend_from_slice(&B);
    v4.resize(40, 1);
    let id = flow_of(2, &v4, &[0x13, 0x88, 0x13, 0x89], &none).unwrap();
    assert_eq!(
        (id.outer.proto, id.outer.flags, id.outer.dport),
        (6, TUPLE_FRAG_FIRST, 0)
    );
    // Not IP (ARP in a bridge table, or no header).
    assert_eq!(flow_of(3, &[0, 1, 8, 0], &[], &none), None);
    assert_eq!(flow_of(2, &[], &[], &none), None);
}

/// A trace message made by hand: `attrs` are (type, payload).
fn message(family: u8, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let attrs: Vec<Vec<u8>> = attrs.iter().map(|(ty, v)| attr(*ty, v)).collect();
    nfnl_message(NFT_TRACE_MSG_TYPE, family, &attrs)
}

#[test]
fn decode_policy_drop_nested_flag_and_junk() {
    let verdict = {
        let mut v = Vec::new();
        v.extend_from_slice(&8u16.to_ne_bytes());
        v.extend_from_slice(&NFTA_VERDICT_CODE.to_ne_bytes());
        v.extend_from_slice(&(NF_DROP as u32).to_be_bytes());
        v
    };
    let m = message(
        10,
        &[
            (NFTA_TRACE_TABLE, b"filter\0".to_vec()),
            (NFTA_TRACE_CHAIN, b"INPUT\0".to_vec()),
            (NFTA_TRACE_TYPE, NFT_TRACETYPE_POLICY.to_be_bytes().to_vec()),
            (NFTA_TRACE_POLICY, (NF_DROP as u32).to_be_bytes().to_vec()),
            (NFTA_TRACE_ID, 7u32.to_be_bytes().to_vec()),
        ],
    );
    let ev = &decode(&m)[0];
    assert_eq!(
        (ev.family, ev.kind, ev.verdict, ev.terminal_verdict(), ev.id),
        (
            Some(Family::Ipv6),
            TraceKind::Policy,
            Some(NF_DROP),
            Some(NF_DROP),
            7
        )
    );
    // Nested attribute with NLA_F_NESTED set; a queue verdict with its queue number.
    let queue = ((5u32 << 16) | NF_QUEUE as u32).to_be_bytes();
    let mut nested = verdict.clone();
    nested[4..8].copy_from_slice(&queue);
    let m = message(
        2,
        &[
            (NFTA_TRACE_TYPE, NFT_TRACETYPE_RULE.to_be_bytes().to_vec()),
            (NFTA_TRACE_VERDICT | 0x8000, nested),
            (NFTA_TRACE_RULE_HANDLE, 9u64.to_be_bytes().to_vec()),
            (NFTA_TRACE_ID, 8u32.to_be_bytes().to_vec()),
        ],
    );
    let ev = &decode(&m)[0];
    assert_eq!(
        (ev.rule_handle, ev.terminal_verdict()),
        (Some(9), Some(NF_QUEUE))
    );
    assert_eq!(verdict_name(ev.verdict.unwrap()), "queue");
    // Truncated, another message type, no type attribute: skipped.
    assert!(decode(&m[..m.len() - 3]).is_empty());
    let mut other = m.clone();
    other[4] = 0x12;
    assert!(decode(&other).is_empty());
    assert!(decode(&message(2, &[(NFTA_TRACE_ID, 1u32.to_be_bytes().to_vec())])).is_empty());
    assert!(decode(&[1, 2, 3]).is_empty());
}

#[test]
fn verdict_names() {
    for (c, n) in [
        (NF_DROP, "drop"),
        (NF_ACCEPT, "accept"),
        (NFT_CONTINUE, "continue"),
        (NFT_JUMP, "jump"),
        (NFT_GOTO, "goto"),
        (NFT_RETURN, "return"),
        (NFT_BREAK, "break"),
    ] {
        assert_eq!(verdict_name(c), n);
    }
}

#[test]
fn ruleset_of_the_trace_table() {
    assert_eq!(
        trace_ruleset("tracer_42", "udp dport 4789"),
        "table inet tracer_42\n\
         delete table inet tracer_42\n\
         table inet tracer_42 {\n\
         \tchain pre {\n\
         \t\ttype filter hook prerouting priority -350; policy accept;\n\
         \t\tudp dport 4789 meta nftrace set 1\n\
         \t}\n\
         \tchain out {\n\
         \t\ttype filter hook output priority -350; policy accept;\n\
         \t\tudp dport 4789 meta nftrace set 1\n\
         \t}\n\
         }\n"
    );
    assert!(trace_ruleset("t", "").contains("\t\tmeta nftrace set 1\n"));
}

#[test]
fn filters_that_would_escape_the_rule_are_refused() {
    assert!(check_filter("udp dport { 53, 5353 } ip saddr 10.0.0.1").is_ok());
    for bad in [
        "udp dport 53; flush ruleset",
        "tcp dport 1 }\n}\nflush ruleset",
        "udp dport 53 # x",
        "udp dport { 53",
    ] {
        let e = check_filter(bad).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("bad --explain filter '{bad}': ")),
            "{e}"
        );
    }
}

#[test]
fn nft_errors_without_their_location() {
    let stderr = "/dev/stdin:6:7-12: Error: syntax error, unexpected string\n\
        \t\tudp dportt 53 meta nftrace set 1\n\t\t    ^^^^^^\n";
    assert_eq!(first_error(stderr), "syntax error, unexpected string");
    assert_eq!(
        first_error("Error: Could not process rule: Operation not permitted\n"),
        "Could not process rule: Operation not permitted"
    );
    assert_eq!(first_error("something else\n"), "something else");
}

#[test]
fn stale_tables_are_dead_pids_of_inet_tracer_tables() {
    let me = std::process::id();
    let list = format!(
        "table ip filter\ntable inet tracer_999999\ntable inet tracer_1\n\
         table ip tracer_999998\ntable inet tracer_x1\ntable inet tracer_\n\
         table inet tracer_{me}\ntable inet fw\ntable inet tracer_999997\n"
    );
    // Pid 1 is alive; the others are not.
    let got = stale_tables(&list, |pid| pid == 1);
    assert_eq!(got, ["tracer_999999", "tracer_999997"]);
}
