//! Packet header parsing shared by every program that sees a packet.
//!
//! It is generic over [`Reader`] so that the TC programs (reading through
//! `bpf_skb_load_bytes`), the tracepoint programs (reading kernel memory) and the
//! host unit tests (reading a byte slice) run the very same code. Everything is
//! `#[inline(always)]`: eBPF has no recursion and the verifier prefers straight
//! code, which is also why the VXLAN inner headers are parsed by a second call
//! rather than a loop.

use crate::{
    FAMILY_IPV4, FAMILY_IPV6, FlowId, MAX_VXLAN_PORTS, TUPLE_DF, TUPLE_FRAG_FIRST, TUPLE_FRAG_REST,
    TUPLE_PORTS, Tuple, VNI_PRESENT,
};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_HLEN: u32 = 14;
const VLAN_HLEN: u32 = 4;
const VXLAN_HLEN: u32 = 8;
const UDP_HLEN: u32 = 8;
/// IPv6 extension headers walked before giving up on finding the L4 header.
const MAX_IPV6_EXT: usize = 6;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Source of packet bytes.
pub trait Reader {
    /// Copies `dst.len()` bytes at offset `off` of the packet into `dst`;
    /// false if they are not all there.
    fn read_into<const N: usize>(&self, off: u32, dst: &mut [u8; N]) -> bool;

    /// Reads `N` bytes at offset `off`.
    #[inline(always)]
    fn read<const N: usize>(&self, off: u32) -> Option<[u8; N]> {
        let mut b = [0u8; N];
        if self.read_into(off, &mut b) {
            Some(b)
        } else {
            None
        }
    }
}

/// What parsing learnt besides the flow id.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// IPv4 identification (or IPv6 fragment id) of the outer header.
    pub outer_ip_id: u32,
    /// Offset just past the innermost header that was read: the per-segment
    /// header length of a GSO packet.
    pub hdr_end: u32,
}

/// Parses a packet that starts with an Ethernet header into `id`, which must be zeroed.
#[inline(always)]
pub fn parse_ethernet<R: Reader>(
    r: &R,
    vxlan_ports: &[u16; MAX_VXLAN_PORTS],
    id: &mut FlowId,
) -> Parsed {
    match ethernet(r, 0) {
        Some((ethertype, l3)) => parse_from_l3(r, l3, ethertype, vxlan_ports, id),
        None => Parsed::default(),
    }
}

/// Parses a packet whose network header starts at `l3` into `id`, which must
/// be zeroed; `ethertype` says which network protocol it is.
#[inline(always)]
pub fn parse_from_l3<R: Reader>(
    r: &R,
    l3: u32,
    ethertype: u16,
    vxlan_ports: &[u16; MAX_VXLAN_PORTS],
    id: &mut FlowId,
) -> Parsed {
    let mut p = Parsed {
        outer_ip_id: 0,
        hdr_end: l3,
    };
    let Some((l4, ip_id)) = network(r, l3, ethertype, &mut id.outer) else {
        return p;
    };
    p.outer_ip_id = ip_id;
    p.hdr_end = transport(r, l4, &mut id.outer);
    if !is_vxlan(&id.outer, vxlan_ports) {
        return p;
    }
    let Some(vni) = vxlan_vni(r, l4 + UDP_HLEN) else {
        return p;
    };
    id.vni = VNI_PRESENT | vni;
    p.hdr_end = l4 + UDP_HLEN + VXLAN_HLEN;
    let Some((ethertype, l3)) = ethernet(r, p.hdr_end) else {
        return p;
    };
    p.hdr_end = l3;
    if let Some((l4, _)) = network(r, l3, ethertype, &mut id.inner) {
        p.hdr_end = transport(r, l4, &mut id.inner);
    }
    p
}

/// Returns the ethertype and the offset of the network header, skipping up to two VLAN tags.
#[inline(always)]
fn ethernet<R: Reader>(r: &R, off: u32) -> Option<(u16, u32)> {
    let mut ethertype = be16(r.read(off + 12)?);
    let mut l3 = off + ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = be16(r.read(l3 + 2)?);
        l3 += VLAN_HLEN;
        if ethertype == ETH_P_8021Q {
            ethertype = be16(r.read(l3 + 2)?);
            l3 += VLAN_HLEN;
        }
    }
    Some((ethertype, l3))
}

/// Fills the L3 part of `t`; returns the L4 offset and the IP/fragment id.
#[inline(always)]
fn network<R: Reader>(r: &R, off: u32, ethertype: u16, t: &mut Tuple) -> Option<(u32, u32)> {
    match ethertype {
        ETH_P_IP => ipv4(r, off, t),
        ETH_P_IPV6 => ipv6(r, off, t),
        _ => None,
    }
}

#[inline(always)]
fn ipv4<R: Reader>(r: &R, off: u32, t: &mut Tuple) -> Option<(u32, u32)> {
    let h: [u8; 20] = r.read(off)?;
    let ihl = ((h[0] & 0x0f) as u32) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return None;
    }
    t.family = FAMILY_IPV4;
    t.proto = h[9];
    t.src[0] = h[12];
    t.src[1] = h[13];
    t.src[2] = h[14];
    t.src[3] = h[15];
    t.dst[0] = h[16];
    t.dst[1] = h[17];
    t.dst[2] = h[18];
    t.dst[3] = h[19];
    let frag = be16([h[6], h[7]]);
    if frag & 0x4000 != 0 {
        t.flags |= TUPLE_DF;
    }
    if frag & 0x1fff != 0 {
        t.flags |= TUPLE_FRAG_REST;
    } else if frag & 0x2000 != 0 {
        t.flags |= TUPLE_FRAG_FIRST;
    }
    Some((off + ihl, be16([h[4], h[5]]) as u32))
}

#[inline(always)]
fn ipv6<R: Reader>(r: &R, off: u32, t: &mut Tuple) -> Option<(u32, u32)> {
    let h: [u8; 8] = r.read(off)?;
    if h[0] >> 4 != 6 || !r.read_into(off + 8, &mut t.src) || !r.read_into(off + 24, &mut t.dst) {
        return None;
    }
    t.family = FAMILY_IPV6;
    let mut next = h[6];
    let mut off = off + 40;
    let mut frag_id = 0;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-byte units, minus one.
            0 | 43 | 60 => {
                let e: [u8; 2] = r.read(off)?;
                next = e[0];
                off += (e[1] as u32 + 1) * 8;
            }
            // Authentication header: length in 4-byte units, minus two.
            51 => {
                let e: [u8; 2] = r.read(off)?;
                next = e[0];
                off += (e[1] as u32 + 2) * 4;
            }
            44 => {
                let f: [u8; 8] = r.read(off)?;
                next = f[0];
                let frag = be16([f[2], f[3]]);
                frag_id = u32::from_be_bytes([f[4], f[5], f[6], f[7]]);
                if frag & 0xfff8 != 0 {
                    t.flags |= TUPLE_FRAG_REST;
                } else if frag & 1 != 0 {
                    t.flags |= TUPLE_FRAG_FIRST;
                }
                off += 8;
            }
            _ => break,
        }
    }
    t.proto = next;
    Some((off, frag_id))
}

/// Fills the ports of `t` where the L4 header is there; returns the offset past it.
#[inline(always)]
fn transport<R: Reader>(r: &R, off: u32, t: &mut Tuple) -> u32 {
    if t.flags & TUPLE_FRAG_REST != 0 {
        return off;
    }
    match t.proto {
        IPPROTO_TCP => {
            let Some(h) = r.read::<13>(off) else {
                return off;
            };
            set_ports(t, &h);
            off + ((h[12] >> 4) as u32) * 4
        }
        IPPROTO_UDP => {
            let Some(h) = r.read::<4>(off) else {
                return off;
            };
            set_ports(t, &h);
            off + UDP_HLEN
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => off + 8,
        _ => off,
    }
}

#[inline(always)]
fn set_ports<const N: usize>(t: &mut Tuple, h: &[u8; N]) {
    t.sport = be16([h[0], h[1]]);
    t.dport = be16([h[2], h[3]]);
    t.flags |= TUPLE_PORTS;
}

#[inline(always)]
fn is_vxlan(t: &Tuple, ports: &[u16; MAX_VXLAN_PORTS]) -> bool {
    if t.proto != IPPROTO_UDP || t.flags & TUPLE_PORTS == 0 {
        return false;
    }
    let mut i = 0;
    while i < MAX_VXLAN_PORTS {
        if ports[i] != 0 && ports[i] == t.dport {
            return true;
        }
        i += 1;
    }
    false
}

/// Reads the VNI of a VXLAN header whose "VNI valid" flag is set.
#[inline(always)]
fn vxlan_vni<R: Reader>(r: &R, off: u32) -> Option<u32> {
    let h: [u8; 8] = r.read(off)?;
    if h[0] & 0x08 == 0 {
        return None;
    }
    Some(u32::from_be_bytes([0, h[4], h[5], h[6]]))
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}
