//! Drops: every skb the kernel frees with a drop reason, counted per
//! (namespace, device, flow, reason, location).

use aya_ebpf::{
    macros::{btf_tracepoint, map},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use tracer_ebpf::{
    CacheSet, DROP_CACHE_SLOTS, DropEvent, DropKey, DropSlot, DropStats, REASON_NONE, cache_sets,
    counter,
};

use crate::{
    cache::{self, Found},
    capture, frags, head,
    kernel::{self, Btf, Mem, parse_skb},
    maps::{self, Upsert, config, copy, count, count_n, double_buffered, traced, upsert, zero},
};

const DROP_MAP_ENTRIES: u32 = 16384;

double_buffered!(DropKey => DropStats, DROP_MAP_ENTRIES,
    DROPS_0, DROPS_1, DROP_GENERATION, drop_generation, drops);
#[map]
static DROP_SCRATCH: PerCpuArray<DropKey> = PerCpuArray::with_max_entries(1, 0);
/// The per-CPU drop cache: [`DROP_CACHE_SLOTS`] slots for each map generation, in sets.
#[map]
static DROP_CACHE: PerCpuArray<CacheSet<DropSlot>> =
    PerCpuArray::with_max_entries(2 * cache_sets(DROP_CACHE_SLOTS), 0);
/// Keys already announced on [`DROP_EVENTS`].
#[map]
static DROP_SEEN: LruHashMap<DropKey, u8> = LruHashMap::with_max_entries(DROP_MAP_ENTRIES, 0);
/// The first drop of each new key, so that userspace can show it at once.
#[map]
static DROP_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// `kfree_skb(skb, location, reason[, rx_sk])`: Linux >= 5.17.
#[btf_tracepoint(function = "kfree_skb")]
#[inline(always)]
pub fn kfree_skb(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let location: *const u8 = ctx.arg(1);
    let reason: u32 = ctx.arg(2);
    if reason != config!(reason_consumed) && reason != config!(reason_not_dropped) {
        record(skb as u64, location as u64, reason);
    }
    0
}

/// `kfree_skb(skb, location)`: kernels without drop reasons, where the
/// tracepoint has no third argument (the verifier refuses reading one).
/// Frees that are not drops go to `consume_skb` there, not to this one.
#[btf_tracepoint(function = "kfree_skb")]
#[inline(always)]
pub fn kfree_skb_noreason(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let location: *const u8 = ctx.arg(1);
    record(skb as u64, location as u64, REASON_NONE);
    0
}

#[inline(always)]
fn record(skb: u64, location: u64, reason: u32) {
    let Some((netns_inode, ifindex)) = kernel::skb_place::<Btf>(skb) else {
        return;
    };
    if !traced(netns_inode) {
        return;
    }
    let Some(key) = DROP_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the map's one slot for this CPU, used by no other program kind,
    // so nothing else refers to it during this run.
    let key = unsafe { &mut *key };
    zero(key);
    (key.location, key.netns_inode, key.ifindex, key.reason) =
        (location, netns_inode, ifindex, reason);
    let Some(buf) = head::buffer(&head::DROP_HEAD) else {
        return;
    };
    let parsed = parse_skb::<Btf>(skb, &mut key.id, buf);
    // Fragment flags stay in drop keys: whether the first or a later fragment
    // of a datagram was dropped is part of what happened.
    frags::attribute(&mut key.id, &parsed);
    let len: u32 = Btf::get(skb, config!(offsets.skb_len)).unwrap_or(0);
    // A branch on `.rodata`: the verifier removes it when capture is off.
    if config!(capture_snaplen) != 0 {
        capture::packet(skb, key);
    }
    // Written a byte or two at a time, read below eight at a time: see the
    // same fence in the TC programs.
    maps::store_fence();
    let generation = drop_generation();
    let slot = match cache::find::<_, DROP_CACHE_SLOTS>(&DROP_CACHE, &*key, generation) {
        Some(Found::Hit(slot)) => {
            slot.stats.packets += 1;
            slot.stats.bytes += len as u64;
            return;
        }
        Some(Found::Evict(slot)) => {
            // Another drop had the slot: its counts go to the map of its generation.
            let stats = slot.stats;
            if upsert(drops(generation), &slot.key, |s: &mut DropStats| {
                s.packets += stats.packets;
                s.bytes += stats.bytes;
            }) == Upsert::Full
            {
                count_n(counter::DROP_MAP_FULL, stats.packets);
            }
            slot
        }
        Some(Found::Empty(slot)) => slot,
        None => return,
    };
    slot.generation = generation;
    cache::store(&mut slot.key, &*key);
    (slot.stats.packets, slot.stats.bytes) = (1, len as u64);
    announce(key, len);
}

/// Shows the first drop of `key` at once (on [`DROP_EVENTS`]) if the run has
/// not announced it yet. Asked when the key takes a cache slot: the slots
/// and maps are emptied every interval, so they cannot tell a new key from a
/// returning one.
#[inline(always)]
fn announce(key: &DropKey, len: u32) {
    if DROP_SEEN.get_ptr(key).is_some() {
        return;
    }
    let _ = DROP_SEEN.insert(key, &1, 0);
    match DROP_EVENTS.reserve::<DropEvent>(0) {
        Some(mut e) => {
            // Field by field: a struct write becomes a byte-wise memmove.
            // SAFETY: the reserved ring buffer entry is ours until submitted.
            let ev = unsafe { &mut *e.as_mut_ptr() };
            copy(&mut ev.key, key);
            (ev.len, ev._pad) = (len, 0);
            e.submit(0);
        }
        None => count(counter::DROP_EVENTS_LOST),
    }
}
