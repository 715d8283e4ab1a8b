//! Per-hop flow counters: TC programs on ingress and egress of each traced device.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    macros::{classifier, map},
    maps::{HashMap, PerCpuArray},
    programs::TcContext,
};
use tracer_ebpf::{
    DIR_EGRESS, DIR_INGRESS, DeviceInfo, FlowKey, FlowStats, TUPLE_DF, TUPLE_FRAG_FIRST,
    TUPLE_FRAG_REST, counter,
    parse::{IPPROTO_ICMP, IPPROTO_ICMPV6, parse_ethernet},
};

use crate::{
    frags,
    head::{self, HeadReader},
    icmp,
    kernel::{self, Probe},
    maps::{Upsert, config, count, double_buffered, upsert, zero},
};

/// Default size of each flow map; userspace resizes it from `--flow-map-size`.
const FLOW_MAP_ENTRIES: u32 = 65536;

double_buffered!(FlowKey => FlowStats, FLOW_MAP_ENTRIES,
    FLOWS_0, FLOWS_1, FLOW_GENERATION, flow_generation, flows);
/// `struct net_device` address -> which device it is, written when a flow is first
/// seen so that userspace can name the `dev` of a [`FlowKey`].
#[map]
static DEVICES: HashMap<u64, DeviceInfo> = HashMap::with_max_entries(4096, 0);
/// Room for the key being built: it does not fit the 512-byte eBPF stack with the rest.
#[map]
static FLOW_SCRATCH: PerCpuArray<FlowKey> = PerCpuArray::with_max_entries(1, 0);

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    record(&ctx, DIR_INGRESS);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    record(&ctx, DIR_EGRESS);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn record(ctx: &TcContext, dir: u8) {
    let Some(key) = FLOW_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the map's one slot for this CPU, used by no other program kind,
    // so nothing else refers to it during this run.
    let key = unsafe { &mut *key };
    let skb = ctx.skb.skb;
    let (ifindex, gso_segs, gso_size) =
        // SAFETY: the context of a TC program is a valid `__sk_buff`.
        unsafe { ((*skb).ifindex, (*skb).gso_segs, (*skb).gso_size) };
    // The context of a TC program is the kernel's `struct sk_buff`: read its
    // device pointer, which names the device across namespaces.
    let dev = kernel::skb_dev::<Probe>(skb as u64);
    zero(key);
    (key.dev, key.ifindex, key.dir) = (dev, ifindex, dir);
    let Some(head) = head::buffer(&head::TC_HEAD) else {
        return;
    };
    let packet = HeadReader::from_skb(ctx, head);
    let parsed = parse_ethernet(&packet, &config!(vxlan_ports), &mut key.id);
    if key.id.outer.family == 0 {
        // Not IP (ARP, LLDP...): not a flow.
        return;
    }
    // A GSO skb is `gso_segs` packets on the wire, each with its own copy of the headers.
    let len = ctx.len() as u64;
    let (packets, bytes, seg_len) = if gso_segs > 1 {
        let hdr = parsed.hdr_end as u64;
        (
            gso_segs as u64,
            len + (gso_segs as u64 - 1) * hdr,
            hdr + gso_size as u64,
        )
    } else {
        (1, len, len)
    };
    // Counters are about this packet; the key is about its flow.
    let outer = key.id.outer.flags;
    let frag = if outer & (TUPLE_FRAG_FIRST | TUPLE_FRAG_REST) != 0 {
        outer
    } else {
        key.id.inner.flags
    };
    let df = outer & TUPLE_DF != 0;
    if key.id.outer.proto == IPPROTO_ICMP || key.id.outer.proto == IPPROTO_ICMPV6 {
        icmp::seen(
            &packet,
            &parsed,
            key.id.outer.proto,
            key.id.outer.family,
            outer,
            kernel::dev_netns_inode::<Probe>(dev),
            ifindex,
            dir,
        );
    }
    frags::attribute(&mut key.id, &parsed);
    frags::strip_packet_flags(&mut key.id);
    let apply = |s: &mut FlowStats| {
        s.packets += packets;
        s.bytes += bytes;
        if frag & TUPLE_FRAG_FIRST != 0 {
            s.frags_first += packets;
        }
        if frag & TUPLE_FRAG_REST != 0 {
            s.frags_rest += packets;
        }
        if df {
            s.df += packets;
        }
        if seg_len as u32 > s.max_len {
            s.max_len = seg_len as u32;
        }
    };
    let map = flows(flow_generation());
    match upsert(map, key, apply) {
        // Name the device for userspace when a flow starts on it. Written only
        // if it changed (a device moved to another namespace): rewriting an
        // entry allocates and frees one, a microsecond for every new flow.
        Upsert::Inserted => {
            let info = DeviceInfo {
                ifindex,
                netns_inode: kernel::dev_netns_inode::<Probe>(dev),
            };
            // SAFETY: a value of DEVICES, valid during the program's run.
            if DEVICES.get_ptr(&dev).map(|known| unsafe { *known }) != Some(info) {
                let _ = DEVICES.insert(&dev, &info, 0);
            }
        }
        Upsert::Full => count(counter::FLOW_MAP_FULL),
        Upsert::Updated => {}
    }
}
