//! The bytes of dropped packets (`--pcap-drops`): up to the snap length of
//! each, from its MAC header if it has one, else from its network header,
//! through a ring buffer, at most `capture_rate` packets a second per CPU.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, generated::bpf_probe_read_kernel},
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use tracer_ebpf::{CAPTURE_MAX, CaptureEvent, DropKey, LINK_ETHERNET, LINK_RAW_IP, counter};

use crate::{
    kernel::{Btf, Mem},
    maps::{config, copy, count},
};

/// One page while capture is off; userspace sizes it at load time when on.
#[map]
pub static CAPTURE_EVENTS: RingBuf = RingBuf::with_byte_size(4096, 0);

/// The rate limit's window: packets captured in the current second.
#[repr(C)]
pub struct Window {
    second: u64,
    taken: u64,
}

/// Per CPU: no atomics (which not every verifier has) and no races; the
/// limit holds for each CPU.
#[map]
static CAPTURE_WINDOW: PerCpuArray<Window> = PerCpuArray::with_max_entries(1, 0);

/// Whether one more packet may be captured on this CPU this second.
#[inline(always)]
fn admit() -> bool {
    let limit = config!(capture_rate) as u64;
    if limit == 0 {
        return true;
    }
    let Some(w) = CAPTURE_WINDOW.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: the map's value for this CPU, which only this program kind
    // writes, valid during the program's run.
    let w = unsafe { &mut *w };
    // SAFETY: the helper has no preconditions.
    let second = unsafe { bpf_ktime_get_ns() } / 1_000_000_000;
    if w.second != second {
        (w.second, w.taken) = (second, 0);
    }
    if w.taken >= limit {
        return false;
    }
    w.taken += 1;
    true
}

/// Captures `skb` (a BTF pointer) for drop `key`; counts what it cannot.
#[inline(always)]
pub fn packet(skb: u64, key: &DropKey) {
    let snaplen = config!(capture_snaplen);
    if snaplen == 0 {
        return;
    }
    let head: u64 = Btf::get(skb, config!(offsets.skb_head)).unwrap_or(0);
    let data: u64 = Btf::get(skb, config!(offsets.skb_data)).unwrap_or(0);
    let len: u32 = Btf::get(skb, config!(offsets.skb_len)).unwrap_or(0);
    let data_len: u32 = Btf::get(skb, config!(offsets.skb_data_len)).unwrap_or(0);
    if head == 0 || data < head || data_len > len {
        return;
    }
    let network: u16 = Btf::get(skb, config!(offsets.skb_network_header)).unwrap_or(0);
    let mac: u16 = Btf::get(skb, config!(offsets.skb_mac_header)).unwrap_or(u16::MAX);
    let network_set = network != 0 && network != u16::MAX;
    // The MAC header is an Ethernet one only if it ends at or before the
    // network header: after decapsulation it may equal the network header.
    let (start, link) = if mac != u16::MAX && (!network_set || network as u32 >= mac as u32 + 14) {
        (head + mac as u64, LINK_ETHERNET)
    } else if network_set {
        (head + network as u64, LINK_RAW_IP)
    } else {
        return;
    };
    // Only the linear part is in reach; paged bytes past it are not copied.
    let linear_end = data + (len - data_len) as u64;
    let end = data + len as u64;
    if start >= linear_end {
        return;
    }
    if !admit() {
        count(counter::CAPTURE_RATE_LIMITED);
        return;
    }
    let cap = (linear_end - start).min(snaplen as u64) as u32;
    let Some(mut entry) = CAPTURE_EVENTS.reserve::<CaptureEvent>(0) else {
        count(counter::CAPTURE_LOST);
        return;
    };
    // SAFETY: the reserved entry is ours until submitted or discarded.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    // Opaque, so the mask is not folded away: old verifiers check the very
    // register passed as the size. 1..=CAPTURE_MAX, as cap >= 1 here.
    let size = ((core::hint::black_box(cap) - 1) & (CAPTURE_MAX as u32 - 1)) + 1;
    // SAFETY: writes `size` <= CAPTURE_MAX bytes into `ev.data`; the helper
    // checks the source address and fails instead of faulting.
    let rc = unsafe {
        bpf_probe_read_kernel(
            ev.data.as_mut_ptr().cast(),
            size,
            start as *const core::ffi::c_void,
        )
    };
    if rc != 0 {
        entry.discard(0);
        count(counter::CAPTURE_LOST);
        return;
    }
    copy(&mut ev.key, key);
    // SAFETY: the helper has no preconditions.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.orig_len = (end - start) as u32;
    ev.cap_len = size;
    ev.link = link;
    ev._pad = 0;
    entry.submit(0);
}
