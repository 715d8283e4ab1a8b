//! The nftables trace events the kernel sends, decoded.

use tracer_ebpf::{
    FAMILY_IPV4, FAMILY_IPV6, FlowId, MAX_VXLAN_PORTS,
    parse::{Bytes, ETH_P_IP, ETH_P_IPV6, parse_from_l3},
};

use crate::{
    rules::Family,
    sys::netlink::{self, attributes, be32, be64, string},
};

/// `NFNLGRP_NFTRACE`.
pub const NFNLGRP_NFTRACE: u32 = 9;
/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_TRACE` (17 in `enum nf_tables_msg_types`).
pub const NFT_TRACE_MSG_TYPE: u16 = (10 << 8) | 17;

// Verdict codes (`NF_*` are netfilter's, `NFT_*` nftables' own).
pub const NF_DROP: i32 = 0;
pub const NF_ACCEPT: i32 = 1;
pub const NF_STOLEN: i32 = 2;
pub const NF_QUEUE: i32 = 3;
pub const NF_REPEAT: i32 = 4;
pub const NFT_CONTINUE: i32 = -1;
pub const NFT_BREAK: i32 = -2;
pub const NFT_JUMP: i32 = -3;
pub const NFT_GOTO: i32 = -4;
pub const NFT_RETURN: i32 = -5;

/// Name of a verdict code: `drop`, `accept`, `jump`, ...
pub fn verdict_name(code: i32) -> &'static str {
    match code {
        NFT_CONTINUE => "continue",
        NFT_BREAK => "break",
        NFT_JUMP => "jump",
        NFT_GOTO => "goto",
        NFT_RETURN => "return",
        c if c >= 0 => match c & 0xff {
            NF_DROP => "drop",
            NF_ACCEPT => "accept",
            NF_STOLEN => "stolen",
            NF_QUEUE => "queue",
            NF_REPEAT => "repeat",
            _ => "stop",
        },
        _ => "unknown",
    }
}

// enum nft_trace_attributes
pub(super) const NFTA_TRACE_TABLE: u16 = 1;
pub(super) const NFTA_TRACE_CHAIN: u16 = 2;
pub(super) const NFTA_TRACE_RULE_HANDLE: u16 = 3;
pub(super) const NFTA_TRACE_TYPE: u16 = 4;
pub(super) const NFTA_TRACE_VERDICT: u16 = 5;
pub(super) const NFTA_TRACE_ID: u16 = 6;
pub(super) const NFTA_TRACE_NETWORK_HEADER: u16 = 8;
pub(super) const NFTA_TRACE_TRANSPORT_HEADER: u16 = 9;
pub(super) const NFTA_TRACE_IIF: u16 = 10;
pub(super) const NFTA_TRACE_OIF: u16 = 12;
pub(super) const NFTA_TRACE_NFPROTO: u16 = 15;
pub(super) const NFTA_TRACE_POLICY: u16 = 16;
// enum nft_verdict_attributes
pub(super) const NFTA_VERDICT_CODE: u16 = 1;
pub(super) const NFTA_VERDICT_CHAIN: u16 = 2;
// enum nft_trace_types
pub(super) const NFT_TRACETYPE_POLICY: u32 = 1;
pub(super) const NFT_TRACETYPE_RETURN: u32 = 2;
pub(super) const NFT_TRACETYPE_RULE: u32 = 3;

/// What a trace event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TraceKind {
    /// A rule matched and decided something (its handle and verdict are set).
    Rule,
    /// The end of a regular chain was reached: back to the calling chain.
    Return,
    /// The end of a base chain was reached: its policy applies.
    Policy,
}

/// One nftables trace event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    /// Groups the events of one packet (see the module doc for its limits).
    pub id: u32,
    /// The family of the table (`ip filter` vs `ip6 filter`).
    pub family: Option<Family>,
    pub table: String,
    pub chain: String,
    /// The rule's nftables handle (`Rule` events).
    pub rule_handle: Option<u64>,
    pub kind: TraceKind,
    /// The verdict code: the rule's for `Rule` and `Return` events, the
    /// chain's policy (`NF_ACCEPT` or `NF_DROP`) for `Policy` events.
    pub verdict: Option<i32>,
    /// Target chain of a jump or goto verdict.
    pub target_chain: Option<String>,
    /// `NFPROTO_IPV4` (2) or `NFPROTO_IPV6` (10): the packet's protocol (0 if not given).
    pub nfproto: u8,
    /// Up to 40 bytes from the network header, on the first event of each
    /// base chain for the packet; empty on the others.
    pub network_header: Vec<u8>,
    /// Up to 20 bytes from the transport header, as `network_header`.
    pub transport_header: Vec<u8>,
    pub iif: Option<u32>,
    pub oif: Option<u32>,
}

impl TraceEvent {
    /// The verdict if it ends the base chain (accept, drop, queue, stolen),
    /// masked to the `NF_*` code; `None` for continue, jump, goto, return.
    pub fn terminal_verdict(&self) -> Option<i32> {
        match self.kind {
            TraceKind::Return => None,
            TraceKind::Rule | TraceKind::Policy => {
                self.verdict.filter(|v| *v >= 0).map(|v| v & 0xff)
            }
        }
    }

    /// The flow of the packet, from the headers this event carries (`None`
    /// if it carries none or they are not IP). `vxlan_ports` as for the TC
    /// programs: with them the VNI is filled; the inner headers are never
    /// in a trace event, so the inner tuple stays empty.
    pub fn flow(&self, vxlan_ports: &[u16; MAX_VXLAN_PORTS]) -> Option<FlowId> {
        flow_of(
            self.nfproto,
            &self.network_header,
            &self.transport_header,
            vxlan_ports,
        )
    }
}

pub(super) fn flow_of(
    nfproto: u8,
    network: &[u8],
    transport: &[u8],
    vxlan_ports: &[u16; MAX_VXLAN_PORTS],
) -> Option<FlowId> {
    let version = network.first()? >> 4;
    let ethertype = match (nfproto, version) {
        (2, 4) | (0, 4) => ETH_P_IP,
        (10, 6) | (0, 6) => ETH_P_IPV6,
        _ => return None,
    };
    // The kernel gives at most 40 bytes of network header. Only when that is
    // the whole of it does the transport header follow right after.
    let complete = match ethertype {
        ETH_P_IP => network.len() == usize::from(network[0] & 0x0f) * 4,
        _ => network.len() == 40 && !matches!(network[6], 0 | 43 | 44 | 51 | 60),
    };
    let mut id = FlowId::default();
    if complete {
        let mut buf = network.to_vec();
        buf.extend_from_slice(transport);
        parse_from_l3(&Bytes(&buf), 0, ethertype, vxlan_ports, &mut id);
    } else if ethertype == ETH_P_IPV6 && network.len() >= 40 {
        // Extension headers cut off: addresses, and the first next-header as protocol.
        id.outer.family = FAMILY_IPV6;
        id.outer.proto = network[6];
        id.outer.src.copy_from_slice(&network[8..24]);
        id.outer.dst.copy_from_slice(&network[24..40]);
    } else {
        parse_from_l3(&Bytes(network), 0, ethertype, vxlan_ports, &mut id);
    }
    (id.outer.family == FAMILY_IPV4 || id.outer.family == FAMILY_IPV6).then_some(id)
}

/// Decodes the nftables trace events in a buffer of netlink messages (what
/// one `recv` on a [`TraceReader`] socket returns). Other messages and
/// malformed parts are skipped.
pub fn decode(buf: &[u8]) -> Vec<TraceEvent> {
    netlink::messages(buf)
        // nlmsghdr (16 bytes), then nfgenmsg: family, version, resource id.
        .filter(|(ty, msg)| *ty == NFT_TRACE_MSG_TYPE && msg.len() >= 20)
        .filter_map(|(_, msg)| decode_trace(msg[16], &msg[20..]))
        .collect()
}

pub(super) fn decode_trace(family: u8, payload: &[u8]) -> Option<TraceEvent> {
    let mut ev = TraceEvent {
        id: 0,
        family: Family::from_nfproto(family),
        table: String::new(),
        chain: String::new(),
        rule_handle: None,
        kind: TraceKind::Rule,
        verdict: None,
        target_chain: None,
        nfproto: 0,
        network_header: Vec::new(),
        transport_header: Vec::new(),
        iif: None,
        oif: None,
    };
    let mut kind = None;
    let mut policy = None;
    for (ty, v) in attributes(payload) {
        match ty {
            NFTA_TRACE_TABLE => ev.table = string(v),
            NFTA_TRACE_CHAIN => ev.chain = string(v),
            NFTA_TRACE_RULE_HANDLE => ev.rule_handle = be64(v),
            NFTA_TRACE_TYPE => kind = be32(v),
            NFTA_TRACE_VERDICT => {
                for (vty, vv) in attributes(v) {
                    match vty {
                        NFTA_VERDICT_CODE => ev.verdict = be32(vv).map(|c| c as i32),
                        NFTA_VERDICT_CHAIN => ev.target_chain = Some(string(vv)),
                        _ => {}
                    }
                }
            }
            NFTA_TRACE_ID => ev.id = be32(v)?,
            NFTA_TRACE_NETWORK_HEADER => ev.network_header = v.to_vec(),
            NFTA_TRACE_TRANSPORT_HEADER => ev.transport_header = v.to_vec(),
            NFTA_TRACE_IIF => ev.iif = be32(v),
            NFTA_TRACE_OIF => ev.oif = be32(v),
            NFTA_TRACE_NFPROTO => ev.nfproto = be32(v).map(|p| p as u8).unwrap_or(0),
            NFTA_TRACE_POLICY => policy = be32(v).map(|p| p as i32),
            _ => {}
        }
    }
    ev.kind = match kind? {
        NFT_TRACETYPE_RULE => TraceKind::Rule,
        NFT_TRACETYPE_RETURN => TraceKind::Return,
        NFT_TRACETYPE_POLICY => TraceKind::Policy,
        _ => return None,
    };
    if ev.kind == TraceKind::Policy {
        ev.verdict = policy.or(ev.verdict);
    }
    Some(ev)
}
