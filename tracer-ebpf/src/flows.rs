//! Per-hop flow counters: TC programs on ingress and egress of each traced device.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    macros::{classifier, map},
    maps::{HashMap, PerCpuArray},
    programs::TcContext,
};
use tracer_ebpf::{
    DIR_EGRESS, DIR_INGRESS, DeviceInfo, FLOW_CACHE_SLOTS, FlowKey, FlowSlot, FlowStats, TUPLE_DF,
    TUPLE_FRAG_FIRST, TUPLE_FRAG_REST, counter,
    parse::{IPPROTO_ICMP, IPPROTO_ICMPV6, parse_ethernet},
};

use crate::{
    frags,
    head::{self, HeadReader},
    icmp,
    kernel::{self, Btf, Probe},
    maps::{self, Upsert, config, copy8, count_n, double_buffered, upsert, zero},
};

/// Default size of each flow map; userspace resizes it from `--flow-map-size`.
const FLOW_MAP_ENTRIES: u32 = 65536;

double_buffered!(FlowKey => FlowStats, FLOW_MAP_ENTRIES,
    FLOWS_0, FLOWS_1, FLOW_GENERATION, flow_generation, flows);
/// `struct net_device` address -> which device it is, written when a flow is first
/// seen so that userspace can name the `dev` of a [`FlowKey`].
#[map]
static DEVICES: HashMap<u64, DeviceInfo> = HashMap::with_max_entries(4096, 0);
/// The per-CPU flow cache: [`FLOW_CACHE_SLOTS`] slots for each map generation.
#[map]
static FLOW_CACHE: PerCpuArray<FlowSlot> = PerCpuArray::with_max_entries(2 * FLOW_CACHE_SLOTS, 0);
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
    let dev = if config!(kern_ctx) != 0 {
        kernel::skb_dev::<Btf>(kernel::kern_ctx(skb))
    } else {
        kernel::skb_dev::<Probe>(skb as u64)
    };
    zero(&mut key.id);
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
            netns_of(dev),
            ifindex,
            dir,
        );
    }
    frags::attribute(&mut key.id, &parsed);
    frags::strip_packet_flags(&mut key.id);
    key.dev = dev;
    set_device_word(key, ifindex, dir);
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
    // The key was written a byte or two at a time and is read below eight at
    // a time: on x86 such a load waits until the narrow stores it spans are
    // in the cache, once per load (~50 ns a packet measured). A locked
    // instruction empties the store buffer once instead.
    maps::store_fence();
    let generation = flow_generation();
    let Some(slot) = FLOW_CACHE.get_ptr_mut(cache_index(key, generation)) else {
        return;
    };
    // SAFETY: a value of this CPU's cache, which only the TC programs use and
    // which do not nest on a CPU.
    let slot = unsafe { &mut *slot };
    if slot.generation == generation && slot.stats.packets != 0 {
        if same(&slot.key, key) {
            apply(&mut slot.stats);
            return;
        }
        // Another flow had the slot: its counts go to the map of its generation.
        let old = &slot.stats;
        let add = |s: &mut FlowStats| {
            s.packets += old.packets;
            s.bytes += old.bytes;
            s.frags_first += old.frags_first;
            s.frags_rest += old.frags_rest;
            s.df += old.df;
            if old.max_len > s.max_len {
                s.max_len = old.max_len;
            }
        };
        if upsert(flows(generation), &slot.key, add) == Upsert::Full {
            count_n(counter::FLOW_MAP_FULL, old.packets);
        }
    }
    slot.generation = generation;
    copy8(&mut slot.key, key);
    zero(&mut slot.stats);
    apply(&mut slot.stats);
    name_device(dev, ifindex);
}

/// Inode of the namespace of device `dev`, read as `dev` was.
#[inline(always)]
fn netns_of(dev: u64) -> u32 {
    if config!(kern_ctx) != 0 {
        kernel::dev_netns_inode::<Btf>(dev)
    } else {
        kernel::dev_netns_inode::<Probe>(dev)
    }
}

/// Writes `ifindex`, `dir` and the padding after them with one store, so that
/// the eight-byte load of them in [`cache_index`] is served by that store.
#[inline(always)]
fn set_device_word(key: &mut FlowKey, ifindex: u32, dir: u8) {
    const { assert!(core::mem::offset_of!(FlowKey, ifindex) == 8) };
    const { assert!(core::mem::offset_of!(FlowKey, dir) == 12) };
    let word = ifindex as u64 | (dir as u64) << 32;
    // SAFETY: bytes 8..16 of the key are ifindex, dir and padding (checked
    // above); eBPF is little-endian here, so ifindex comes first.
    unsafe { (key as *mut FlowKey).cast::<u64>().add(1).write(word) };
}

/// Which slot of this CPU's cache `key` goes to: the words of the key folded
/// and mixed (Fibonacci hashing), in the half of the cache of `generation`.
#[inline(always)]
fn cache_index(key: &FlowKey, generation: u32) -> u32 {
    const WORDS: usize = size_of::<FlowKey>() / 8;
    let words = (key as *const FlowKey).cast::<u64>();
    let mut x = 0u64;
    for i in 0..WORDS {
        // SAFETY: i < WORDS and FlowKey is 8-aligned: each word is inside *key.
        x ^= unsafe { words.add(i).read() };
    }
    let slot =
        (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - FLOW_CACHE_SLOTS.trailing_zeros())) as u32;
    (generation & 1) * FLOW_CACHE_SLOTS + slot
}

/// `a == b` for flow keys, a word at a time without a branch per word (a
/// derived `==` compares the address arrays with a `memcmp` eBPF lacks).
#[inline(always)]
fn same(a: &FlowKey, b: &FlowKey) -> bool {
    const WORDS: usize = size_of::<FlowKey>() / 8;
    let (a, b) = (
        (a as *const FlowKey).cast::<u64>(),
        (b as *const FlowKey).cast::<u64>(),
    );
    let mut diff = 0u64;
    for i in 0..WORDS {
        // SAFETY: i < WORDS and FlowKey is 8-aligned: each word is inside both keys.
        diff |= unsafe { a.add(i).read() ^ b.add(i).read() };
    }
    diff == 0
}

/// Names device `dev` for userspace when a flow enters the cache on it.
/// Written only if it changed (a device moved to another namespace):
/// rewriting an entry allocates and frees one, a microsecond.
#[inline(always)]
fn name_device(dev: u64, ifindex: u32) {
    let info = DeviceInfo {
        ifindex,
        netns_inode: netns_of(dev),
    };
    // SAFETY: a value of DEVICES, valid during the program's run.
    if DEVICES.get_ptr(&dev).map(|known| unsafe { *known }) != Some(info) {
        let _ = DEVICES.insert(&dev, &info, 0);
    }
}
