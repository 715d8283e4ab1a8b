//! Per-hop flow counters: TC programs on ingress and egress of each traced device.

use core::mem::offset_of;

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    bindings::{BPF_F_MMAPABLE, BPF_NOEXIST},
    macros::{classifier, map},
    maps::{Array, HashMap, PerCpuArray, Stack},
    programs::TcContext,
};
use tracer_ebpf::{
    CacheSet, DIR_EGRESS, DIR_INGRESS, DeviceInfo, FLOW_CACHE_SLOTS, FlowId, FlowKey, FlowSlot,
    FlowStats, TUPLE_DF, TUPLE_FRAG_FIRST, TUPLE_FRAG_REST, Tuple, cache_sets, counter,
    parse::{IPPROTO_ICMP, IPPROTO_ICMPV6, inplace, parse_ethernet},
};

use crate::{
    cache::{self, Found, KeyWords},
    frags,
    head::{self, HeadReader, Linear},
    icmp,
    kernel::{self, Btf, Probe},
    maps::{self, config, count_n, zero},
};

/// Default number of flow slots; userspace resizes the maps from `--flow-map-size`.
const FLOW_MAP_ENTRIES: u32 = 65536;

// A flow keeps a slot while it is active: its counters sit at the slot's
// index in an array userspace maps into its memory, so a drain reads them in
// place and copies or deletes no map entry (a batched lookup-and-delete of a
// hash map cost a quarter of tracer's CPU at 10,000 flows).
/// Flow key -> its slot.
#[map]
static FLOW_INDEX: HashMap<FlowKey, u32> = HashMap::with_max_entries(FLOW_MAP_ENTRIES, 0);
/// Slot -> the key that holds it, written as the key takes the slot (and
/// read by userspace in place too).
#[map]
static FLOW_KEYS: Array<FlowKey> = Array::with_max_entries(FLOW_MAP_ENTRIES, BPF_F_MMAPABLE);
/// Counters by slot, one array per generation parity: the programs add to
/// the array of the generation they read; userspace, once it switched them
/// to the other, reads and zeroes this one.
#[map]
static FLOW_STATS_0: Array<FlowStats> = Array::with_max_entries(FLOW_MAP_ENTRIES, BPF_F_MMAPABLE);
#[map]
static FLOW_STATS_1: Array<FlowStats> = Array::with_max_entries(FLOW_MAP_ENTRIES, BPF_F_MMAPABLE);
/// Free slots, pushed by userspace at start and as it frees idle flows'
/// slots. A stack: freed slots are taken again first, so the slots in use
/// stay at the low end.
#[map]
static FLOW_FREE: Stack<u32> = Stack::with_max_entries(FLOW_MAP_ENTRIES, 0);
/// Per CPU: one past the highest slot its programs took, so that userspace
/// reads the arrays only up to the slots ever used. Per CPU, so a plain
/// store is exact (the TC programs do not nest on a CPU).
#[map]
static FLOW_HIGH: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
/// The generation the programs count for: a count of drains.
#[map]
static FLOW_GENERATION: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
fn flow_generation() -> u32 {
    FLOW_GENERATION.get(0).copied().unwrap_or(0)
}

/// `struct net_device` address -> which device it is, written when a flow
/// enters the cache so that userspace can name the `dev` of a [`FlowKey`].
/// Userspace takes the entries out at each report: the map holds the devices
/// of one interval, not every device ever seen (a host where containers come
/// and go makes new ones all day). Resized from `--device-map-size`.
#[map]
static DEVICES: HashMap<u64, DeviceInfo> = HashMap::with_max_entries(4096, 0);
/// The per-CPU flow cache: [`FLOW_CACHE_SLOTS`] slots for each map generation, in sets.
#[map]
static FLOW_CACHE: PerCpuArray<CacheSet<FlowSlot>> =
    PerCpuArray::with_max_entries(2 * cache_sets(FLOW_CACHE_SLOTS), 0);
/// Room for the key being built: it does not fit the 512-byte eBPF stack with the rest.
#[map]
static FLOW_SCRATCH: PerCpuArray<FlowKey> = PerCpuArray::with_max_entries(1, 0);

#[classifier]
#[inline(always)]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    record(&ctx, DIR_INGRESS);
    TC_ACT_UNSPEC
}

#[classifier]
#[inline(always)]
pub fn tc_egress(ctx: TcContext) -> i32 {
    record(&ctx, DIR_EGRESS);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn record(ctx: &TcContext, dir: u8) {
    let skb = ctx.skb.skb;
    let (ifindex, gso_segs, gso_size) =
        // SAFETY: the context of a TC program is a valid `__sk_buff`.
        unsafe { ((*skb).ifindex, (*skb).gso_segs, (*skb).gso_size) };
    let dev = if config!(kern_ctx) != 0 {
        kernel::skb_dev::<Btf>(kernel::kern_ctx(skb))
    } else {
        kernel::skb_dev::<Probe>(skb as u64)
    };
    let len = ctx.len() as u64;
    // A GSO skb is `gso_segs` packets on the wire, each with its own copy of the headers.
    let packet = |hdr_end: u32, frag: u8, df: bool| {
        let hdr = hdr_end as u64;
        let (packets, bytes, seg_len) = if gso_segs > 1 {
            let segs = gso_segs as u64;
            (segs, len + (segs - 1) * hdr, hdr + gso_size as u64)
        } else {
            (1, len, len)
        };
        Packet {
            packets,
            bytes,
            seg_len: seg_len as u32,
            frag,
            df,
        }
    };
    let device = device_word(ifindex, dir);
    // Hashed with the other words: it must be a number (with the kfunc, a BTF pointer).
    let dev_word = || {
        if config!(kern_ctx) != 0 {
            maps::as_scalar(dev)
        } else {
            dev
        }
    };
    let ports = &config!(vxlan_ports);
    if let Some(c) = Linear::<{ inplace::LEN }>::of(ctx).and_then(|w| inplace::common(&w, ports)) {
        let key = InPlace {
            dev: dev_word(),
            device,
            outer: c,
            inner: inplace::Common::NONE,
            vni: 0,
        };
        count(&key, &packet(c.hdr_end, 0, c.df), dev, ifindex);
        return;
    }
    if let Some(v) =
        Linear::<{ inplace::VXLAN_LEN }>::of(ctx).and_then(|w| inplace::vxlan(&w, ports))
    {
        let key = InPlace {
            dev: dev_word(),
            device,
            outer: v.outer,
            inner: v.inner,
            vni: v.vni,
        };
        count(&key, &packet(v.inner.hdr_end, 0, v.outer.df), dev, ifindex);
        return;
    }

    let Some(key) = FLOW_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the map's one slot for this CPU, used by no other program kind,
    // so nothing else refers to it during this run.
    let key = unsafe { &mut *key };
    zero(&mut key.id);
    let Some(head) = head::buffer(&head::TC_HEAD) else {
        return;
    };
    let bytes = HeadReader::from_skb(ctx, head);
    let parsed = parse_ethernet(&bytes, &config!(vxlan_ports), &mut key.id);
    if key.id.outer.family == 0 {
        // Not IP (ARP, LLDP...): not a flow.
        return;
    }
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
            &bytes,
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
    set_device_word(key, device);
    // The key was written a byte or two at a time and is read below eight at
    // a time: on x86 such a load waits until the narrow stores it spans are
    // in the cache, once per load (~50 ns a packet measured). A locked
    // instruction empties the store buffer once instead.
    maps::store_fence();
    count(key, &packet(parsed.hdr_end, frag, df), dev, ifindex);
}

/// What one packet (or GSO skb) adds to its flow's counters.
struct Packet {
    packets: u64,
    bytes: u64,
    /// Length of one segment on the wire.
    seg_len: u32,
    /// Its fragment flags ([`TUPLE_FRAG_FIRST`], [`TUPLE_FRAG_REST`]).
    frag: u8,
    df: bool,
}

impl Packet {
    #[inline(always)]
    fn apply(&self, s: &mut FlowStats) {
        s.packets += self.packets;
        s.bytes += self.bytes;
        if self.frag & TUPLE_FRAG_FIRST != 0 {
            s.frags_first += self.packets;
        }
        if self.frag & TUPLE_FRAG_REST != 0 {
            s.frags_rest += self.packets;
        }
        if self.df {
            s.df += self.packets;
        }
        if self.seg_len > s.max_len {
            s.max_len = self.seg_len;
        }
    }
}

/// The key of a packet read in place ([`inplace::common`], or
/// [`inplace::vxlan`] with its inner tuple and VNI), never written out
/// whole: most of its words are zero, and the rest stay in registers. A
/// common packet's inner words are zero constants, which the compiler folds.
struct InPlace {
    dev: u64,
    device: u64,
    outer: inplace::Common,
    inner: inplace::Common,
    vni: u32,
}

// The words InPlace fills: the device, each tuple's addresses and tail, the
// VNI (with the padding after it).
const SRC_WORD: usize = (offset_of!(FlowKey, id) + offset_of!(FlowId, outer)) / 8;
const DST_WORD: usize = SRC_WORD + offset_of!(Tuple, dst) / 8;
const TAIL_WORD: usize = SRC_WORD + offset_of!(Tuple, sport) / 8;
const INNER_SRC_WORD: usize = (offset_of!(FlowKey, id) + offset_of!(FlowId, inner)) / 8;
const INNER_DST_WORD: usize = INNER_SRC_WORD + offset_of!(Tuple, dst) / 8;
const INNER_TAIL_WORD: usize = INNER_SRC_WORD + offset_of!(Tuple, sport) / 8;
const VNI_WORD: usize = (offset_of!(FlowKey, id) + offset_of!(FlowId, vni)) / 8;
const _: () = assert!(offset_of!(FlowKey, dev) == 0 && offset_of!(Tuple, src) == 0);
const _: () = assert!(SRC_WORD == 2 && DST_WORD == 4 && TAIL_WORD == 6);
const _: () = assert!(INNER_SRC_WORD == 7 && INNER_DST_WORD == 9 && INNER_TAIL_WORD == 11);
const _: () = assert!(VNI_WORD == 12 && offset_of!(FlowId, _pad) == offset_of!(FlowId, vni) + 4);

impl KeyWords for InPlace {
    const WORDS: usize = FlowKey::WORDS;
    #[inline(always)]
    fn word(&self, i: usize) -> u64 {
        match i {
            0 => self.dev,
            1 => self.device,
            SRC_WORD => self.outer.src as u64,
            DST_WORD => self.outer.dst as u64,
            TAIL_WORD => self.outer.tail,
            INNER_SRC_WORD => self.inner.src as u64,
            INNER_DST_WORD => self.inner.dst as u64,
            INNER_TAIL_WORD => self.inner.tail,
            VNI_WORD => self.vni as u64,
            _ => 0,
        }
    }
}

/// Counts `p` for `key` in this CPU's flow cache, pushing out to the flow
/// map the flow whose slot it takes.
#[inline(always)]
fn count(key: &impl KeyWords, p: &Packet, dev: u64, ifindex: u32) {
    let generation = flow_generation();
    let slot = match cache::find::<_, FLOW_CACHE_SLOTS>(&FLOW_CACHE, key, generation) {
        Some(Found::Hit(slot)) => {
            p.apply(&mut slot.stats);
            return;
        }
        Some(Found::Evict(slot)) => {
            // Another flow had the slot: its counts go to its flow slot.
            evict(&slot.key, &slot.stats, generation);
            slot
        }
        Some(Found::Empty(slot)) => slot,
        None => return,
    };
    slot.generation = generation;
    cache::store(&mut slot.key, key);
    zero(&mut slot.stats);
    p.apply(&mut slot.stats);
    name_device(dev, ifindex);
}

/// Adds what the cache held for `key` to the counters of its flow slot,
/// taking a free slot for a new flow.
#[inline(always)]
fn evict(key: &FlowKey, s: &FlowStats, generation: u32) {
    let Some(index) = flow_slot(key) else {
        count_n(counter::FLOW_MAP_FULL, s.packets);
        return;
    };
    let counters = if generation & 1 == 1 {
        &FLOW_STATS_1
    } else {
        &FLOW_STATS_0
    };
    if let Some(v) = counters.get_ptr_mut(index) {
        add_atomic(v, s);
    }
}

/// The slot of `key`: its own, or a free one it takes. `None`: no slot is free.
#[inline(always)]
fn flow_slot(key: &FlowKey) -> Option<u32> {
    if let Some(index) = FLOW_INDEX.get_ptr(key) {
        // SAFETY: a value of FLOW_INDEX, valid during the program's run.
        return Some(unsafe { *index });
    }
    let free = FLOW_FREE.pop().ok().flatten()?;
    if let Some(high) = FLOW_HIGH.get_ptr_mut(0) {
        // SAFETY: this CPU's value, which no other program run touches meanwhile.
        unsafe {
            if free >= *high {
                *high = free + 1;
            }
        }
    }
    // The key first: userspace reads it once the slot counts something,
    // which it can only after the insert below.
    if let Some(k) = FLOW_KEYS.get_ptr_mut(free) {
        // SAFETY: a value of FLOW_KEYS; the slot is this program's alone
        // until the insert publishes it.
        cache::store(unsafe { &mut *k }, key);
    }
    if FLOW_INDEX.insert(key, &free, BPF_NOEXIST as u64).is_ok() {
        return Some(free);
    }
    // Another CPU gave the key a slot meanwhile (or the index is full): the
    // slot taken goes back.
    let _ = FLOW_FREE.push(free, 0);
    // SAFETY: as above.
    FLOW_INDEX.get_ptr(key).map(|index| unsafe { *index })
}

/// Adds `s` to the map's counters at `v`, which other CPUs may add to at
/// the same time. The adds are atomic: XADD, which every kernel from 5.10 on
/// takes (core's atomics need compare-and-swap on eBPF, which 5.10 lacks).
/// The largest length is not a sum: it is compared and stored, and of two
/// CPUs pushing out the same flow within the same few instructions, one's
/// larger value may be lost.
#[inline(always)]
fn add_atomic(v: *mut FlowStats, s: &FlowStats) {
    // SAFETY: `v` is a value of a flow counter array, valid during the program's run
    // and 8-aligned; other CPUs reach it only through atomic adds and the
    // plain stores of `max_len`.
    unsafe {
        for (field, n) in [
            (&raw mut (*v).packets, s.packets),
            (&raw mut (*v).bytes, s.bytes),
            (&raw mut (*v).frags_first, s.frags_first),
            (&raw mut (*v).frags_rest, s.frags_rest),
            (&raw mut (*v).df, s.df),
        ] {
            core::arch::asm!("lock *(u64 *)({p} + 0) += {n}", p = in(reg) field, n = in(reg) n,
                options(nostack));
        }
        let max = &raw mut (*v).max_len;
        if s.max_len > max.read_volatile() {
            max.write_volatile(s.max_len);
        }
    }
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

/// `ifindex`, `dir` and the padding after them as the key's second word.
#[inline(always)]
fn device_word(ifindex: u32, dir: u8) -> u64 {
    const { assert!(offset_of!(FlowKey, ifindex) == 8) };
    const { assert!(offset_of!(FlowKey, dir) == 12) };
    // eBPF is little-endian here, so ifindex comes first.
    ifindex as u64 | (dir as u64) << 32
}

/// Writes the key's second word with one store, so that the eight-byte load
/// of it in [`cache::slot_index`] is served by that store.
#[inline(always)]
fn set_device_word(key: &mut FlowKey, word: u64) {
    // SAFETY: bytes 8..16 of the key are ifindex, dir and padding (see device_word).
    unsafe { (key as *mut FlowKey).cast::<u64>().add(1).write(word) };
}

/// Names device `dev` for userspace when a flow enters the cache on it.
/// Written only if it changed (userspace took it, or the device moved to
/// another namespace): rewriting an entry allocates and frees one, a
/// microsecond.
#[inline(always)]
fn name_device(dev: u64, ifindex: u32) {
    let info = DeviceInfo {
        ifindex,
        netns_inode: netns_of(dev),
    };
    // SAFETY: a value of DEVICES, valid during the program's run.
    if DEVICES.get_ptr(&dev).map(|known| unsafe { *known }) != Some(info)
        && DEVICES.insert(&dev, &info, 0).is_err()
    {
        count_n(counter::DEVICE_MAP_FULL, 1);
    }
}
