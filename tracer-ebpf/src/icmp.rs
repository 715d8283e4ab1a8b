//! ICMP errors ("fragmentation needed", "packet too big", unreachable, time
//! exceeded) with the flow they are about, read from the header they quote.
//! Two sources: errors seen as packets on a traced device (which includes
//! those a VXLAN device sends back to an inner sender, which bypass
//! icmp_send) and errors the stack sends (the icmp_send tracepoint).

use aya_ebpf::{
    macros::{btf_tracepoint, map},
    maps::PerCpuArray,
    programs::BtfTracePointContext,
};
use tracer_ebpf::{
    DIR_SENT, FAMILY_IPV4, FAMILY_IPV6, IcmpKey, TUPLE_FRAG_REST, counter,
    parse::{ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, Parsed, Reader, parse_from_l3},
};

use crate::{
    head,
    kernel::{self, Btf, parse_skb},
    maps::{Upsert, config, count, double_buffered, traced, upsert, zero},
};

const ICMP_MAP_ENTRIES: u32 = 4096;

double_buffered!(IcmpKey => u64, ICMP_MAP_ENTRIES,
    ICMPS_0, ICMPS_1, ICMP_GENERATION, icmp_generation, icmps);
#[map]
static ICMP_SCRATCH: PerCpuArray<IcmpKey> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn add(key: &IcmpKey) {
    let map = icmps(icmp_generation());
    if upsert(map, key, |c: &mut u64| *c += 1) == Upsert::Full {
        count(counter::ICMP_MAP_FULL);
    }
}

/// If the packet a TC program just parsed is an ICMP error, counts it.
/// `outer` is its own L3/L4: protocol, family and fragment flags.
#[inline(always)]
// Inlined into the TC programs: the arguments are registers, not a call.
#[allow(clippy::too_many_arguments)]
pub fn seen<R: Reader>(
    r: &R,
    p: &Parsed,
    proto: u8,
    family: u8,
    flags: u8,
    netns_inode: u32,
    ifindex: u32,
    dir: u8,
) {
    if p.outer_l4 == 0 || flags & TUPLE_FRAG_REST != 0 {
        return;
    }
    let (error, quoted) = match (proto, family) {
        (IPPROTO_ICMP, FAMILY_IPV4) => (true, ETH_P_IP),
        (IPPROTO_ICMPV6, FAMILY_IPV6) => (true, ETH_P_IPV6),
        _ => (false, 0),
    };
    if !error {
        return;
    }
    let Some(h) = r.read::<8>(p.outer_l4) else {
        return;
    };
    let (icmp_type, code) = (h[0], h[1]);
    let mtu = match (family, icmp_type, code) {
        // Destination unreachable / fragmentation needed: next-hop MTU in bytes 6-7.
        (FAMILY_IPV4, 3, 4) => u16::from_be_bytes([h[6], h[7]]) as u32,
        (FAMILY_IPV4, 3 | 11 | 12, _) => 0,
        // Packet too big: MTU in bytes 4-7.
        (FAMILY_IPV6, 2, _) => u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        (FAMILY_IPV6, 1 | 3 | 4, _) => 0,
        // Echo, router advertisements...: not errors.
        _ => return,
    };
    let Some(key) = ICMP_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the map's one slot for this CPU, used by no other program kind,
    // so nothing else refers to it during this run.
    let key = unsafe { &mut *key };
    zero(key);
    (key.netns_inode, key.ifindex, key.dir, key.family) = (netns_inode, ifindex, dir, family);
    (key.icmp_type, key.icmp_code, key.mtu) = (icmp_type, code, mtu);
    // Forgotten by the verifier, or it checks the quoted packet's parsing
    // once per way of reaching it (VLAN tags, IP options...): 150k instructions.
    let start = r.opaque(p.outer_l4 + 8);
    parse_from_l3(r, start, quoted, &config!(vxlan_ports), &mut key.id);
    add(key);
}

/// `icmp_send(skb_in, type, code)`: an ICMPv4 error the stack sends about `skb_in`.
#[btf_tracepoint(function = "icmp_send")]
#[inline(always)]
pub fn icmp_send(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let icmp_type: i32 = ctx.arg(1);
    let code: i32 = ctx.arg(2);
    let skb = skb as u64;
    let Some((netns_inode, ifindex)) = kernel::skb_place::<Btf>(skb) else {
        return 0;
    };
    if !traced(netns_inode) {
        return 0;
    }
    let Some(key) = ICMP_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: the map's one slot for this CPU, used by no other program kind,
    // so nothing else refers to it during this run.
    let key = unsafe { &mut *key };
    zero(key);
    (key.netns_inode, key.ifindex, key.dir, key.family) =
        (netns_inode, ifindex, DIR_SENT, FAMILY_IPV4);
    (key.icmp_type, key.icmp_code) = (icmp_type as u8, code as u8);
    // `mtu` stays 0: not in the tracepoint's arguments; the error itself,
    // seen on a traced device, carries it.
    let Some(buf) = head::buffer(&head::ICMP_HEAD) else {
        return 0;
    };
    parse_skb::<Btf>(skb, &mut key.id, buf);
    add(key);
    0
}
