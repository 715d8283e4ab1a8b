//! Giving non-first IP fragments the flow of their datagram. They carry no
//! L4 header, so without this they could only be counted by addresses; the
//! first fragment of each datagram is remembered by (src, dst, protocol, id)
//! with its ports (and, for VXLAN, the VNI and inner flow it carried).

use core::mem::MaybeUninit;

use aya_ebpf::{macros::map, maps::LruHashMap};
use tracer_ebpf::{
    FlowId, TUPLE_FRAG_FIRST, TUPLE_FRAG_REST, TUPLE_PORTS, Tuple, counter, parse::Parsed,
};

use crate::maps::{copy, count, zeroed};

#[repr(C)]
#[derive(Clone, Copy)]
struct DatagramKey {
    src: [u8; 16],
    dst: [u8; 16],
    id: u32,
    proto: u8,
    family: u8,
    _pad: [u8; 2],
}

/// What the first fragment of a datagram said.
#[repr(C)]
#[derive(Clone, Copy)]
struct FirstFragment {
    sport: u16,
    dport: u16,
    vni: u32,
    inner: Tuple,
}

/// An LRU on purpose: it is a cache of recent datagrams, not a count. A
/// fragment whose first fragment was never seen (or was forgotten) is
/// counted in `FRAG_UNMATCHED` and keeps its address-only flow.
#[map]
static FIRST_FRAGMENTS: LruHashMap<DatagramKey, FirstFragment> =
    LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn key(t: &Tuple, ip_id: u32) -> DatagramKey {
    DatagramKey {
        src: t.src,
        dst: t.dst,
        id: ip_id,
        proto: t.proto,
        family: t.family,
        _pad: [0; 2],
    }
}

/// Remembers first fragments and completes non-first ones, outer and inner.
#[inline(always)]
pub fn attribute(id: &mut FlowId, p: &Parsed) {
    let outer = id.outer.flags;
    if outer & TUPLE_FRAG_FIRST != 0 && outer & TUPLE_PORTS != 0 {
        let mut slot = MaybeUninit::uninit();
        let first: &mut FirstFragment = zeroed(&mut slot);
        (first.sport, first.dport, first.vni) = (id.outer.sport, id.outer.dport, id.vni);
        copy(&mut first.inner, &id.inner);
        let _ = FIRST_FRAGMENTS.insert(&key(&id.outer, p.outer_ip_id), first, 0);
    } else if outer & TUPLE_FRAG_REST != 0 {
        match FIRST_FRAGMENTS.get_ptr(&key(&id.outer, p.outer_ip_id)) {
            Some(first) => {
                // SAFETY: a value of an LRU map, valid during the program's run (an
                // eviction at worst makes the copy stale, not invalid).
                let first = unsafe { &*first };
                id.outer.sport = first.sport;
                id.outer.dport = first.dport;
                id.outer.flags |= TUPLE_PORTS;
                id.vni = first.vni;
                copy(&mut id.inner, &first.inner);
            }
            None => count(counter::FRAG_UNMATCHED),
        }
        // The inner packet is entirely in the first fragment's part.
        return;
    }
    let inner = id.inner.flags;
    if inner & TUPLE_FRAG_FIRST != 0 && inner & TUPLE_PORTS != 0 {
        let mut slot = MaybeUninit::uninit();
        let first: &mut FirstFragment = zeroed(&mut slot);
        (first.sport, first.dport) = (id.inner.sport, id.inner.dport);
        let _ = FIRST_FRAGMENTS.insert(&key(&id.inner, p.inner_ip_id), first, 0);
    } else if inner & TUPLE_FRAG_REST != 0 {
        match FIRST_FRAGMENTS.get_ptr(&key(&id.inner, p.inner_ip_id)) {
            Some(first) => {
                // SAFETY: a value of an LRU map, valid during the program's run (an
                // eviction at worst makes the copy stale, not invalid).
                let first = unsafe { &*first };
                id.inner.sport = first.sport;
                id.inner.dport = first.dport;
                id.inner.flags |= TUPLE_PORTS;
            }
            None => count(counter::FRAG_UNMATCHED),
        }
    }
}

/// Clears what is about one packet (fragment position, DF) from a flow key,
/// so that whole packets and fragments of a flow share one entry.
#[inline(always)]
pub fn strip_packet_flags(id: &mut FlowId) {
    id.outer.flags &= TUPLE_PORTS;
    id.inner.flags &= TUPLE_PORTS;
}
