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

pub mod inplace;

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

    /// `off`, with what the verifier knows of it forgotten: it then checks
    /// the code that follows once for every offset, rather than once per
    /// path that led to a different one. A no-op outside the kernel.
    #[inline(always)]
    fn opaque(&self, off: u32) -> u32 {
        off
    }

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

/// Packet bytes in memory (decoded netlink messages, tests); reads past the
/// end fail as `bpf_skb_load_bytes` does past the end of an skb.
pub struct Bytes<'a>(pub &'a [u8]);

impl Reader for Bytes<'_> {
    fn read_into<const N: usize>(&self, off: u32, dst: &mut [u8; N]) -> bool {
        let off = off as usize;
        match self.0.get(off..off + N) {
            Some(b) => {
                dst.copy_from_slice(b);
                true
            }
            None => false,
        }
    }
}

/// What parsing learnt besides the flow id.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// IPv4 identification (or IPv6 fragment id) of the outer header.
    pub outer_ip_id: u32,
    /// The same for the inner header of a VXLAN packet.
    pub inner_ip_id: u32,
    /// Offset of the outer L4 header (0 if there is none).
    pub outer_l4: u32,
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
        hdr_end: l3,
        ..Parsed::default()
    };
    let Some((l4, ip_id)) = network(r, l3, ethertype, &mut id.outer) else {
        return p;
    };
    p.outer_ip_id = ip_id;
    p.outer_l4 = l4;
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
    if let Some((l4, ip_id)) = network(r, l3, ethertype, &mut id.inner) {
        p.inner_ip_id = ip_id;
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
    t.proto == IPPROTO_UDP && t.flags & TUPLE_PORTS != 0 && is_vxlan_port(t.dport, ports)
}

/// `dport` is one of the configured VXLAN ports (0: an unused slot).
#[inline(always)]
fn is_vxlan_port(dport: u16, ports: &[u16; MAX_VXLAN_PORTS]) -> bool {
    let mut i = 0;
    while i < MAX_VXLAN_PORTS {
        if ports[i] != 0 && ports[i] == dport {
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

#[cfg(test)]
mod tests {
    extern crate std;

    use std::{vec, vec::Vec};

    use super::*;
    use crate::FAMILY_NONE;

    // ---- Packet builders -------------------------------------------------

    const ETH: u32 = 14;
    const VLAN: u32 = 4;
    const IP4: u32 = 20;
    const IP6: u32 = 40;
    const UDP: u32 = 8;
    const TCP: u32 = 20;
    const VXLAN: u32 = 8;

    const ETH_P_ARP: u16 = 0x0806;
    const DF: u16 = 0x4000;
    const MF: u16 = 0x2000;

    const A4: [u8; 4] = [10, 0, 0, 1];
    const B4: [u8; 4] = [10, 0, 0, 2];
    const A6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const B6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    /// Ethernet header; each entry of `tpids` adds a VLAN tag (802.1Q or
    /// 802.1ad) with VLAN id 100, 101, ... before the final ethertype.
    fn eth(tpids: &[u16], ethertype: u16) -> Vec<u8> {
        let mut b = vec![0x02, 0, 0, 0, 0, 0xbb, 0x02, 0, 0, 0, 0, 0xaa];
        for (i, tpid) in tpids.iter().enumerate() {
            b.extend_from_slice(&tpid.to_be_bytes());
            b.extend_from_slice(&(100 + i as u16).to_be_bytes());
        }
        b.extend_from_slice(&ethertype.to_be_bytes());
        b
    }

    /// The IPv4 header fields the parser looks at. Total length, TTL and
    /// checksum are not read by it, so they are left as placeholders.
    #[derive(Clone, Copy)]
    struct Ip4 {
        src: [u8; 4],
        dst: [u8; 4],
        proto: u8,
        id: u16,
        /// Flags (DF, MF) and fragment offset in 8-byte units.
        frag: u16,
        /// Must be a multiple of 4 bytes long.
        options: &'static [u8],
        /// First byte; `None` means version 4 and the IHL matching `options`.
        ver_ihl: Option<u8>,
    }

    fn ip4(proto: u8) -> Ip4 {
        Ip4 {
            src: A4,
            dst: B4,
            proto,
            id: 0x1234,
            frag: 0,
            options: &[],
            ver_ihl: None,
        }
    }

    impl Ip4 {
        fn bytes(&self) -> Vec<u8> {
            let ihl = 5 + self.options.len() as u8 / 4;
            let mut b = vec![self.ver_ihl.unwrap_or(0x40 | ihl), 0, 0, 0];
            b.extend_from_slice(&self.id.to_be_bytes());
            b.extend_from_slice(&self.frag.to_be_bytes());
            b.extend_from_slice(&[64, self.proto, 0, 0]);
            b.extend_from_slice(&self.src);
            b.extend_from_slice(&self.dst);
            b.extend_from_slice(self.options);
            b
        }
    }

    /// IPv6 header from `src` to `dst` whose next header is `next`.
    fn ip6_addrs(next: u8, src: [u8; 16], dst: [u8; 16]) -> Vec<u8> {
        let mut b = vec![0x60, 0, 0, 0, 0, 0, next, 64];
        b.extend_from_slice(&src);
        b.extend_from_slice(&dst);
        b
    }

    fn ip6(next: u8) -> Vec<u8> {
        ip6_addrs(next, A6, B6)
    }

    const IPV6_HOPOPTS: u8 = 0;
    const IPV6_ROUTING: u8 = 43;
    const IPV6_FRAGMENT: u8 = 44;
    const IPV6_AH: u8 = 51;
    const IPV6_DSTOPTS: u8 = 60;

    /// Hop-by-hop, routing or destination options header: `(len + 1) * 8`
    /// bytes, padded with Pad1 options.
    fn ext6(next: u8, len: u8) -> Vec<u8> {
        let mut b = vec![0; (len as usize + 1) * 8];
        b[0] = next;
        b[1] = len;
        b
    }

    /// Authentication header: `(len + 2) * 4` bytes.
    fn ah6(next: u8, len: u8) -> Vec<u8> {
        let mut b = vec![0xaa; (len as usize + 2) * 4];
        b[0] = next;
        b[1] = len;
        b[2] = 0;
        b[3] = 0;
        b
    }

    /// Fragment header; `offset` is in 8-byte units, `more` is the M flag.
    fn frag6(next: u8, offset: u16, more: bool, id: u32) -> Vec<u8> {
        let mut b = vec![next, 0];
        b.extend_from_slice(&(offset << 3 | more as u16).to_be_bytes());
        b.extend_from_slice(&id.to_be_bytes());
        b
    }

    /// TCP header of `doff` 32-bit words (options filled with NOPs).
    fn tcp(sport: u16, dport: u16, doff: u8) -> Vec<u8> {
        let mut b = vec![1; doff as usize * 4];
        b[..4].copy_from_slice(&[sport.to_be_bytes(), dport.to_be_bytes()].concat());
        b[4..12].fill(0);
        b[12] = doff << 4;
        b[13] = 0x18; // PSH|ACK
        b[14..20].fill(0);
        b
    }

    fn udp(sport: u16, dport: u16) -> Vec<u8> {
        [sport.to_be_bytes(), dport.to_be_bytes(), [0, 0], [0, 0]].concat()
    }

    /// ICMP (or ICMPv6) echo request header.
    fn icmp() -> Vec<u8> {
        vec![8, 0, 0, 0, 0, 1, 0, 1]
    }

    /// VXLAN header: `flags` is 0x08 when the VNI is valid.
    fn vxlan(flags: u8, vni: u32) -> Vec<u8> {
        let v = vni.to_be_bytes();
        vec![flags, 0, 0, 0, v[1], v[2], v[3], 0]
    }

    // ---- Parsing and expected values ---------------------------------------

    const PORTS: [u16; MAX_VXLAN_PORTS] = [4789, 0, 0, 0, 0, 0, 0, 0];

    fn parse_ports(pkt: &[u8], ports: &[u16; MAX_VXLAN_PORTS]) -> (FlowId, Parsed) {
        let mut id = FlowId::default();
        let p = parse_ethernet(&Bytes(pkt), ports, &mut id);
        (id, p)
    }

    fn parse(pkt: &[u8]) -> (FlowId, Parsed) {
        parse_ports(pkt, &PORTS)
    }

    /// IPv4 tuple without ports or flags.
    fn v4(src: [u8; 4], dst: [u8; 4], proto: u8) -> Tuple {
        let mut t = Tuple {
            family: FAMILY_IPV4,
            proto,
            ..Tuple::default()
        };
        t.src[..4].copy_from_slice(&src);
        t.dst[..4].copy_from_slice(&dst);
        t
    }

    /// IPv6 tuple without ports or flags.
    fn v6(src: [u8; 16], dst: [u8; 16], proto: u8) -> Tuple {
        Tuple {
            src,
            dst,
            proto,
            family: FAMILY_IPV6,
            ..Tuple::default()
        }
    }

    fn ports(t: Tuple, sport: u16, dport: u16) -> Tuple {
        Tuple {
            sport,
            dport,
            flags: t.flags | TUPLE_PORTS,
            ..t
        }
    }

    fn flags(t: Tuple, flags: u8) -> Tuple {
        Tuple {
            flags: t.flags | flags,
            ..t
        }
    }

    /// A packet that is not VXLAN.
    fn plain(outer: Tuple) -> FlowId {
        FlowId {
            outer,
            ..FlowId::default()
        }
    }

    fn vxlan_id(outer: Tuple, vni: u32, inner: Tuple) -> FlowId {
        FlowId {
            outer,
            inner,
            vni: VNI_PRESENT | vni,
            _pad: 0,
        }
    }

    /// The fields of [`Parsed`] every test checks: (outer_ip_id, hdr_end).
    fn parsed(outer_ip_id: u32, hdr_end: u32) -> (u32, u32) {
        (outer_ip_id, hdr_end)
    }

    fn ids(p: &Parsed) -> (u32, u32) {
        (p.outer_ip_id, p.hdr_end)
    }

    // ---- IPv4 ---------------------------------------------------------------

    #[test]
    fn ipv4_udp() {
        let pkt = [eth(&[], ETH_P_IP), ip4(IPPROTO_UDP).bytes(), udp(40000, 53)].concat();
        let (id, p) = parse(&pkt);
        assert_eq!(id, plain(ports(v4(A4, B4, IPPROTO_UDP), 40000, 53)));
        assert_eq!(ids(&p), parsed(0x1234, ETH + IP4 + UDP));
    }

    // hdr_end must cover the TCP options: it is the per-segment header length of GSO.
    #[test]
    fn ipv4_tcp_hdr_end_includes_tcp_options() {
        let pkt = [
            eth(&[], ETH_P_IP),
            ip4(IPPROTO_TCP).bytes(),
            tcp(443, 51000, 8),
            vec![0xee; 100],
        ]
        .concat();
        let (id, p) = parse(&pkt);
        assert_eq!(id, plain(ports(v4(A4, B4, IPPROTO_TCP), 443, 51000)));
        assert_eq!(ids(&p), parsed(0x1234, ETH + IP4 + 32));
    }

    #[test]
    fn ipv4_icmp_has_no_ports() {
        let pkt = [eth(&[], ETH_P_IP), ip4(IPPROTO_ICMP).bytes(), icmp()].concat();
        let (id, p) = parse(&pkt);
        assert_eq!(id, plain(v4(A4, B4, IPPROTO_ICMP)));
        assert_eq!(ids(&p), parsed(0x1234, ETH + IP4 + 8));
    }

    // An unknown L4 protocol (GRE) has no ports and hdr_end stops at its start.
    #[test]
    fn ipv4_unknown_l4_protocol() {
        let pkt = [eth(&[], ETH_P_IP), ip4(47).bytes(), vec![0; 16]].concat();
        let (id, p) = parse(&pkt);
        assert_eq!(id, plain(v4(A4, B4, 47)));
        assert_eq!(ids(&p), parsed(0x1234, ETH + IP4));
    }

    // With IHL 7 the UDP header starts 8 bytes later; reading ports at
    // offset 20 would return option bytes.
    #[test]
    fn ipv4_options_move_the_l4_header() {
        let ip = Ip4 {
            options: &[0x94, 0x04, 0, 0, 1, 1, 1, 0], // router alert, NOPs, EOL
            ..ip4(IPPROTO_UDP)
        };
        let pkt = [eth(&[], ETH_P_IP), ip.bytes(), udp(1111, 2222)].concat();
        let (id, p) = parse(&pkt);
        assert_eq!(id, plain(ports(v4(A4, B4, IPPROTO_UDP), 1111, 2222)));
        assert_eq!(ids(&p), parsed(0x1234, ETH + IP4 + 8 + UDP));
    }

    #[test]
    fn ipv4_df() {
        let ip = Ip4 {
            frag: DF,
            ..ip4(IPPROTO_TCP)
        };
        let pkt = [eth(&[], ETH_P_IP), ip.bytes(), tcp(22, 60000, 5)].concat();
        let (id, p) = parse(&pkt);
        let t = flags(ports(v4(A4, B4, IPPROTO_TCP), 22, 60000), TUPLE_DF);
        assert_eq!(id, plain(t));
        assert_eq!(ids(&p), parsed(0x1234, ETH + IP4 + TCP));
    }

    // MF set at offset 0: the L4 header is there, so ports are read.
    #[test]
    fn ipv4_first_fragment() {
        let ip = Ip4 {
            id: 0xbeef,
            frag: MF,
            ..ip4(IPPROTO_UDP)
        };
        let pkt = [eth(&[], ETH_P_IP), ip.bytes(), udp(5000, 6000), vec![0; 64]].concat();
        let (id, p) = parse(&pkt);
        let t = flags(ports(v4(A4, B4, IPPROTO_UDP), 5000, 6000), TUPLE_FRAG_FIRST);
        assert_eq!(id, plain(t));
        assert_eq!(ids(&p), parsed(0xbeef, ETH + IP4 + UDP));
    }

    // A middle fragment (MF set, offset > 0) carries payload, not an L4
    // header: bytes that look like a UDP header must not become ports, and it
    // is FRAG_REST only, not FRAG_FIRST.
    #[test]
    fn ipv4_middle_fragment_has_no_ports() {
        let ip = Ip4 {
            id: 0xbeef,
            frag: MF | 185,
            ..ip4(IPPROTO_UDP)
        };
        let pkt = [eth(&[], ETH_P_IP), ip.bytes(), udp(5000, 6000), vec![0; 64]].concat();
        let (id, p) = parse(&pkt);
        assert_eq!(id, plain(flags(v4(A4, B4, IPPROTO_UDP), TUPLE_FRAG_REST)));
        assert_eq!(ids(&p), parsed(0xbeef, ETH + IP4));
    }

    // The last fragment has MF clear but a non-zero offset.
    #[test]
    fn ipv4_last_fragment_has_no_ports() {
        let ip = Ip4 {
            id: 0xbeef,
            frag: 370,
            ..ip4(IPPROTO_TCP)
        };
        let pkt = [eth(&[], ETH_P_IP), ip.bytes(), tcp(80, 8080, 5)].concat();
        let (id, p) = parse(&pkt);
        assert_eq!(id, plain(flags(v4(A4, B4, IPPROTO_TCP), TUPLE_FRAG_REST)));
        assert_eq!(ids(&p), parsed(0xbeef, ETH + IP4));
    }

    #[test]
    fn ipv4_df_and_fragment_flags_combine() {
        let ip = Ip4 {
            frag: DF | 1,
            ..ip4(IPPROTO_UDP)
        };
        let pkt = [eth(&[], ETH_P_IP), ip.bytes(), udp(1, 2)].concat();
        let (id, _) = parse(&pkt);
        let t = flags(v4(A4, B4, IPPROTO_UDP), TUPLE_DF | TUPLE_FRAG_REST);
        assert_eq!(id, plain(t));
    }

    #[test]
    fn ipv4_bad_version_is_not_ip() {
        let ip = Ip4 {
            ver_ihl: Some(0x65),
            ..ip4(IPPROTO_UDP)
        };
        let pkt = [eth(&[], ETH_P_IP), ip.bytes(), udp(1, 2)].concat();
        let (id, p) = parse(&pkt);
        assert_eq!(id, FlowId::default());
        assert_eq!(id.outer.family, FAMILY_NONE);
        assert_eq!(ids(&p), parsed(0, ETH));
    }

    #[test]
    fn ipv4_ihl_below_5_is_not_ip() {
        for ihl in 0..5 {
            let ip = Ip4 {
                ver_ihl: Some(0x40 | ihl),
                ..ip4(IPPROTO_UDP)
            };
            let pkt = [eth(&[], ETH_P_IP), ip.bytes(), udp(1, 2)].concat();
            let (id, p) = parse(&pkt);
            assert_eq!(id, FlowId::default(), "ihl {ihl}");
            assert_eq!(ids(&p), parsed(0, ETH), "ihl {ihl}");
        }
    }

    // parse_from_l3 serves callers that already know where the IP header is.
    #[test]
    fn parse_from_l3_without_ethernet() {
        let pkt = [ip4(IPPROTO_UDP).bytes(), udp(7, 9)].concat();
        let mut id = FlowId::default();
        let p = parse_from_l3(&Bytes(&pkt), 0, ETH_P_IP, &PORTS, &mut id);
        assert_eq!(id, plain(ports(v4(A4, B4, IPPROTO_UDP), 7, 9)));
        assert_eq!(ids(&p), parsed(0x1234, IP4 + UDP));
    }

    // ---- IPv6 ---------------------------------------------------------------

    #[test]
    fn ipv6_udp() {
        let pkt = [eth(&[], ETH_P_IPV6), ip6(IPPROTO_UDP), udp(546, 547)].concat();
        let (id, p) = parse(&pkt);
        assert_eq!(id, plain(ports(v6(A6, B6, IPPROTO_UDP), 546, 547)));
        assert_eq!(ids(&p), parsed(0, ETH + IP6 + UDP));
    }

    #[test]
    fn ipv6_icmpv6_has_no_ports() {
        let pkt = [eth(&[], ETH_P_IPV6), ip6(IPPROTO_ICMPV6), icmp()].concat();
        let (id, p) = parse(&pkt);
        assert_eq!(id, plain(v6(A6, B6, IPPROTO_ICMPV6)));
        assert_eq!(ids(&p), parsed(0, ETH + IP6 + 8));
    }

    // proto is the L4 protocol found after the extension headers, not the
    // IPv6 header's next header.
    #[test]
    fn ipv6_hop_by_hop_and_destination_options_before_tcp() {
        let pkt = [
            eth(&[], ETH_P_IPV6),
            ip6(IPV6_HOPOPTS),
            ext6(IPV6_DSTOPTS, 0), // 8 bytes
            ext6(IPPROTO_TCP, 2),  // 24 bytes
            tcp(443, 50000, 5),
        ]
        .concat();
        let (id, p) = parse(&pkt);
        assert_eq!(id, plain(ports(v6(A6, B6, IPPROTO_TCP), 443, 50000)));
        assert_eq!(ids(&p), parsed(0, ETH + IP6 + 8 + 24 + TCP));
    }

    // AH counts its length in 4-byte units minus two, unlike the others.
    #[test]
    fn ipv6_routing_and_authentication_headers_before_udp() {
        let pkt = [
            eth(&[], ETH_P_IPV6),
            ip6(IPV6_ROUTING),
            ext6(IPV6_AH, 2),    // 24 bytes
            ah6(IPPROTO_UDP, 4), // 24 bytes
            udp(500, 4500),
        ]
        .concat();
        let (id, p) = parse(&pkt);
        assert_eq!(id, plain(ports(v6(A6, B6, IPPROTO_UDP), 500, 4500)));
        assert_eq!(ids(&p), parsed(0, ETH + IP6 + 24 + 24 + UDP));
    }

    #[test]
    fn ipv6_first_fragment() {
        let pkt = [
            eth(&[], ETH_P_IPV6),
            ip6(IPV6_FRAGMENT),
            frag6(IPPROTO_UDP, 0, true, 0xdeadbeef),
            udp(3000, 4000),
            vec![0; 64],
        ]
        .concat();
        let (id, p) = parse(&pkt);
        let t = flags(ports(v6(A6, B6, IPPROTO_UDP), 3000, 4000), TUPLE_FRAG_FIRST);
        assert_eq!(id, plain(t));
        assert_eq!(ids(&p), parsed(0xdeadbeef, ETH + IP6 + 8 + UDP));
    }

    // As for IPv4: bytes after the fragment header are payload, not ports.
    #[test]
    fn ipv6_non_first_fragment_has_no_ports() {
        let pkt = [
            eth(&[], ETH_P_IPV6),
            ip6(IPV6_FRAGMENT),
            frag6(IPPROTO_UDP, 181, true, 0xdeadbeef),
            udp(3000, 4000),
        ]
        .concat();
        let (id, p) = parse(&pkt);
        assert_eq!(id, plain(flags(v6(A6, B6, IPPROTO_UDP), TUPLE_FRAG_REST)));
        assert_eq!(ids(&p), parsed(0xdeadbeef, ETH + IP6 + 8));
    }

    #[test]
    fn ipv6_last_fragment_has_no_ports() {
        let pkt = [
            eth(&[], ETH_P_IPV6),
            ip6(IPV6_FRAGMENT),
            frag6(IPPROTO_TCP, 362, false, 7),
            tcp(1, 2, 5),
        ]
        .concat();
        let (id, p) = parse(&pkt);
        assert_eq!(id, plain(flags(v6(A6, B6, IPPROTO_TCP), TUPLE_FRAG_REST)));
        assert_eq!(ids(&p), parsed(7, ETH + IP6 + 8));
    }

    // An "atomic" fragment (offset 0, M clear) is a whole packet: no fragment
    // flag, but the id is still reported.
    #[test]
    fn ipv6_atomic_fragment() {
        let pkt = [
            eth(&[], ETH_P_IPV6),
            ip6(IPV6_FRAGMENT),
            frag6(IPPROTO_UDP, 0, false, 0x01020304),
            udp(10, 20),
        ]
        .concat();
        let (id, p) = parse(&pkt);
        assert_eq!(id, plain(ports(v6(A6, B6, IPPROTO_UDP), 10, 20)));
        assert_eq!(ids(&p), parsed(0x01020304, ETH + IP6 + 8 + UDP));
    }

    // The walk is bounded (verifier); past MAX_IPV6_EXT headers the
    // unwalked header's type is reported as the protocol, without ports.
    #[test]
    fn ipv6_too_many_extension_headers() {
        let mut pkt = [eth(&[], ETH_P_IPV6), ip6(IPV6_DSTOPTS)].concat();
        for _ in 0..MAX_IPV6_EXT {
            pkt.extend(ext6(IPV6_DSTOPTS, 0));
        }
        pkt.extend(ext6(IPPROTO_UDP, 0));
        pkt.extend(udp(1, 2));
        let (id, p) = parse(&pkt);
        assert_eq!(id, plain(v6(A6, B6, IPV6_DSTOPTS)));
        assert_eq!(ids(&p), parsed(0, ETH + IP6 + MAX_IPV6_EXT as u32 * 8));
    }

    #[test]
    fn ipv6_bad_version_is_not_ip() {
        let mut ip = ip6(IPPROTO_UDP);
        ip[0] = 0x40;
        let pkt = [eth(&[], ETH_P_IPV6), ip, udp(1, 2)].concat();
        let (id, p) = parse(&pkt);
        assert_eq!(id, FlowId::default());
        assert_eq!(ids(&p), parsed(0, ETH));
    }

    // ---- Ethernet -------------------------------------------------------------

    #[test]
    fn vlan_single_tag() {
        let pkt = [
            eth(&[0x8100], ETH_P_IP),
            ip4(IPPROTO_UDP).bytes(),
            udp(1, 2),
        ]
        .concat();
        let (id, p) = parse(&pkt);
        assert_eq!(id, plain(ports(v4(A4, B4, IPPROTO_UDP), 1, 2)));
        assert_eq!(ids(&p), parsed(0x1234, ETH + VLAN + IP4 + UDP));
    }

    #[test]
    fn vlan_double_tag_8021ad() {
        let pkt = [
            eth(&[0x88a8, 0x8100], ETH_P_IPV6),
            ip6(IPPROTO_TCP),
            tcp(1, 2, 5),
        ]
        .concat();
        let (id, p) = parse(&pkt);
        assert_eq!(id, plain(ports(v6(A6, B6, IPPROTO_TCP), 1, 2)));
        assert_eq!(ids(&p), parsed(0, ETH + 2 * VLAN + IP6 + TCP));
    }

    // Older QinQ stacks use 0x8100 for both tags.
    #[test]
    fn vlan_double_tag_8021q() {
        let pkt = [
            eth(&[0x8100, 0x8100], ETH_P_IP),
            ip4(IPPROTO_TCP).bytes(),
            tcp(1, 2, 5),
        ]
        .concat();
        let (id, p) = parse(&pkt);
        assert_eq!(id, plain(ports(v4(A4, B4, IPPROTO_TCP), 1, 2)));
        assert_eq!(ids(&p), parsed(0x1234, ETH + 2 * VLAN + IP4 + TCP));
    }

    #[test]
    fn arp_is_not_ip() {
        let pkt = [
            eth(&[], ETH_P_ARP),
            vec![0, 1, 8, 0, 6, 4, 0, 1],
            vec![0; 20],
        ]
        .concat();
        let (id, p) = parse(&pkt);
        assert_eq!(id, FlowId::default());
        assert_eq!(id.outer.family, FAMILY_NONE);
        assert_eq!(ids(&p), parsed(0, ETH));
    }

    #[test]
    fn arp_behind_vlan_tag_is_not_ip() {
        let pkt = [eth(&[0x8100], ETH_P_ARP), vec![0; 28]].concat();
        let (id, p) = parse(&pkt);
        assert_eq!(id, FlowId::default());
        assert_eq!(ids(&p), parsed(0, ETH + VLAN));
    }

    // ---- VXLAN ----------------------------------------------------------------

    const A4_IN: [u8; 4] = [192, 168, 1, 1];
    const B4_IN: [u8; 4] = [192, 168, 1, 2];

    /// Outer Ethernet/IPv4/UDP to `dport`, VXLAN header, inner Ethernet/IPv4/TCP.
    fn vxlan_ipv4_tcp(dport: u16, vxlan_flags: u8) -> Vec<u8> {
        let inner_ip = Ip4 {
            src: A4_IN,
            dst: B4_IN,
            id: 0x5555,
            ..ip4(IPPROTO_TCP)
        };
        [
            eth(&[], ETH_P_IP),
            ip4(IPPROTO_UDP).bytes(),
            udp(54321, dport),
            vxlan(vxlan_flags, 0x123456),
            eth(&[], ETH_P_IP),
            inner_ip.bytes(),
            tcp(8080, 33000, 8),
            vec![0xee; 50],
        ]
        .concat()
    }

    const VX_OUTER_UDP_END: u32 = ETH + IP4 + UDP;
    const VX_INNER_L3: u32 = VX_OUTER_UDP_END + VXLAN + ETH;

    fn vx_inner_tcp() -> Tuple {
        ports(v4(A4_IN, B4_IN, IPPROTO_TCP), 8080, 33000)
    }

    // outer_ip_id is the outer header's id (0x1234), not the inner one (0x5555).
    #[test]
    fn vxlan_ipv4_tcp_is_decoded() {
        let (id, p) = parse(&vxlan_ipv4_tcp(4789, 0x08));
        let outer = ports(v4(A4, B4, IPPROTO_UDP), 54321, 4789);
        assert_eq!(id, vxlan_id(outer, 0x123456, vx_inner_tcp()));
        assert_eq!(id.vni, VNI_PRESENT | 0x123456);
        assert_eq!(ids(&p), parsed(0x1234, VX_INNER_L3 + IP4 + 32));
        // The inner id, for matching inner fragments; the outer L4 offset, for ICMP.
        assert_eq!((p.inner_ip_id, p.outer_l4), (0x5555, ETH + IP4));
    }

    #[test]
    fn vxlan_on_unconfigured_port_is_not_decoded() {
        let (id, p) = parse(&vxlan_ipv4_tcp(8472, 0x08));
        assert_eq!(id, plain(ports(v4(A4, B4, IPPROTO_UDP), 54321, 8472)));
        assert_eq!(ids(&p), parsed(0x1234, VX_OUTER_UDP_END));
    }

    #[test]
    fn vxlan_on_configured_non_default_port_is_decoded() {
        let ports_cfg = [4789, 0, 0, 8472, 0, 0, 0, 0];
        let (id, p) = parse_ports(&vxlan_ipv4_tcp(8472, 0x08), &ports_cfg);
        let outer = ports(v4(A4, B4, IPPROTO_UDP), 54321, 8472);
        assert_eq!(id, vxlan_id(outer, 0x123456, vx_inner_tcp()));
        assert_eq!(ids(&p), parsed(0x1234, VX_INNER_L3 + IP4 + 32));
    }

    // The last slot of the list counts too.
    #[test]
    fn vxlan_port_in_last_slot_is_decoded() {
        let mut ports_cfg = [0; MAX_VXLAN_PORTS];
        ports_cfg[MAX_VXLAN_PORTS - 1] = 4789;
        let (id, _) = parse_ports(&vxlan_ipv4_tcp(4789, 0x08), &ports_cfg);
        assert_eq!(id.vni, VNI_PRESENT | 0x123456);
        assert_eq!(id.inner, vx_inner_tcp());
    }

    // 0 marks an unused slot: it must not match UDP destination port 0.
    #[test]
    fn vxlan_unused_slots_do_not_match_port_0() {
        let (id, p) = parse_ports(&vxlan_ipv4_tcp(0, 0x08), &[0; MAX_VXLAN_PORTS]);
        assert_eq!(id, plain(ports(v4(A4, B4, IPPROTO_UDP), 54321, 0)));
        assert_eq!(ids(&p), parsed(0x1234, VX_OUTER_UDP_END));
    }

    #[test]
    fn vxlan_without_vni_flag_is_not_decoded() {
        // 0x04 is a reserved bit, not the I flag.
        for f in [0x00, 0x04] {
            let (id, p) = parse(&vxlan_ipv4_tcp(4789, f));
            assert_eq!(id, plain(ports(v4(A4, B4, IPPROTO_UDP), 54321, 4789)));
            assert_eq!(ids(&p), parsed(0x1234, VX_OUTER_UDP_END));
        }
    }

    // Byte 7 of the VXLAN header is reserved and not part of the VNI.
    #[test]
    fn vxlan_vni_ignores_reserved_bytes() {
        let mut pkt = vxlan_ipv4_tcp(4789, 0x08);
        let vx = VX_OUTER_UDP_END as usize;
        pkt[vx + 1..vx + 4].fill(0xff);
        pkt[vx + 7] = 0xff;
        let (id, _) = parse(&pkt);
        assert_eq!(id.vni, VNI_PRESENT | 0x123456);
    }

    #[test]
    fn vxlan_inner_ipv6() {
        let inner_a: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa];
        let inner_b: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xb];
        let pkt = [
            eth(&[], ETH_P_IP),
            ip4(IPPROTO_UDP).bytes(),
            udp(1000, 4789),
            vxlan(0x08, 42),
            eth(&[], ETH_P_IPV6),
            ip6_addrs(IPPROTO_UDP, inner_a, inner_b),
            udp(5353, 5353),
        ]
        .concat();
        let (id, p) = parse(&pkt);
        let outer = ports(v4(A4, B4, IPPROTO_UDP), 1000, 4789);
        let inner = ports(v6(inner_a, inner_b, IPPROTO_UDP), 5353, 5353);
        assert_eq!(id, vxlan_id(outer, 42, inner));
        assert_eq!(ids(&p), parsed(0x1234, VX_INNER_L3 + IP6 + UDP));
    }

    #[test]
    fn vxlan_over_ipv6_with_inner_vlan() {
        let pkt = [
            eth(&[], ETH_P_IPV6),
            ip6(IPPROTO_UDP),
            udp(1000, 4789),
            vxlan(0x08, 0xffffff),
            eth(&[0x8100], ETH_P_IP),
            Ip4 {
                src: A4_IN,
                dst: B4_IN,
                ..ip4(IPPROTO_ICMP)
            }
            .bytes(),
            icmp(),
        ]
        .concat();
        let (id, p) = parse(&pkt);
        let outer = ports(v6(A6, B6, IPPROTO_UDP), 1000, 4789);
        let inner = v4(A4_IN, B4_IN, IPPROTO_ICMP);
        assert_eq!(id, vxlan_id(outer, 0xffffff, inner));
        assert_eq!(
            ids(&p),
            parsed(0, ETH + IP6 + UDP + VXLAN + ETH + VLAN + IP4 + 8)
        );
    }

    // A non-first fragment to port 4789 has no ports, so it is not VXLAN.
    #[test]
    fn vxlan_port_in_non_first_fragment_is_not_decoded() {
        let mut pkt = vxlan_ipv4_tcp(4789, 0x08);
        pkt[ETH as usize + 6..ETH as usize + 8].copy_from_slice(&100u16.to_be_bytes());
        let (id, p) = parse(&pkt);
        assert_eq!(id, plain(flags(v4(A4, B4, IPPROTO_UDP), TUPLE_FRAG_REST)));
        assert_eq!(ids(&p), parsed(0x1234, ETH + IP4));
    }

    // A TCP packet to port 4789 is not VXLAN.
    #[test]
    fn vxlan_port_over_tcp_is_not_decoded() {
        let pkt = [
            eth(&[], ETH_P_IP),
            ip4(IPPROTO_TCP).bytes(),
            tcp(1000, 4789, 5),
            vxlan(0x08, 1),
            eth(&[], ETH_P_IP),
            ip4(IPPROTO_UDP).bytes(),
        ]
        .concat();
        let (id, p) = parse(&pkt);
        assert_eq!(id, plain(ports(v4(A4, B4, IPPROTO_TCP), 1000, 4789)));
        assert_eq!(ids(&p), parsed(0x1234, ETH + IP4 + TCP));
    }

    // ---- Truncated packets ------------------------------------------------------

    // Every prefix of an IPv4/TCP packet: each field appears once the bytes it
    // is read from are all there, and stays zero before.
    #[test]
    fn truncated_ipv4_tcp() {
        let ip = Ip4 {
            frag: DF,
            ..ip4(IPPROTO_TCP)
        };
        let pkt = [eth(&[], ETH_P_IP), ip.bytes(), tcp(443, 50000, 6)].concat();
        let l3 = ETH;
        let l4 = ETH + IP4;
        for len in 0..=pkt.len() as u32 {
            let (id, p) = parse(&pkt[..len as usize]);
            let l3_tuple = flags(v4(A4, B4, IPPROTO_TCP), TUPLE_DF);
            let (outer, want) = if len < ETH {
                (Tuple::default(), parsed(0, 0))
            } else if len < l3 + IP4 {
                (Tuple::default(), parsed(0, l3))
            } else if len < l4 + 13 {
                // TCP needs 13 bytes: the ports and the data offset.
                (l3_tuple, parsed(0x1234, l4))
            } else {
                (ports(l3_tuple, 443, 50000), parsed(0x1234, l4 + 24))
            };
            assert_eq!(id, plain(outer), "len {len}");
            assert_eq!(ids(&p), want, "len {len}");
        }
    }

    // UDP needs only the 4 bytes of ports; until they are there, no ports.
    #[test]
    fn truncated_ipv4_udp_ports() {
        let pkt = [
            eth(&[], ETH_P_IP),
            ip4(IPPROTO_UDP).bytes(),
            udp(1234, 5678),
        ]
        .concat();
        let l4 = ETH + IP4;
        for len in l4..=pkt.len() as u32 {
            let (id, p) = parse(&pkt[..len as usize]);
            let t = v4(A4, B4, IPPROTO_UDP);
            if len < l4 + 4 {
                assert_eq!(id, plain(t), "len {len}");
                assert_eq!(ids(&p), parsed(0x1234, l4), "len {len}");
            } else {
                assert_eq!(id, plain(ports(t, 1234, 5678)), "len {len}");
                assert_eq!(ids(&p), parsed(0x1234, l4 + UDP), "len {len}");
            }
        }
    }

    // Cut inside the IPv4 options: the fixed header is read, the L4 header is not.
    #[test]
    fn truncated_inside_ipv4_options() {
        let ip = Ip4 {
            options: &[1, 1, 1, 1, 1, 1, 1, 0],
            ..ip4(IPPROTO_UDP)
        };
        let pkt = [eth(&[], ETH_P_IP), ip.bytes(), udp(1, 2)].concat();
        let (id, p) = parse(&pkt[..(ETH + IP4 + 4) as usize]);
        assert_eq!(id, plain(v4(A4, B4, IPPROTO_UDP)));
        assert_eq!(ids(&p), parsed(0x1234, ETH + IP4 + 8));
    }

    #[test]
    fn truncated_inside_vlan_tag() {
        let pkt = [eth(&[0x88a8, 0x8100], ETH_P_IP), ip4(IPPROTO_UDP).bytes()].concat();
        // Cut inside the first and inside the second tag.
        for len in [ETH + 2, ETH + VLAN + 2] {
            let (id, p) = parse(&pkt[..len as usize]);
            assert_eq!(id, FlowId::default(), "len {len}");
            assert_eq!(p, Parsed::default(), "len {len}");
        }
        // Both tags there, IP header cut.
        let (id, p) = parse(&pkt[..(ETH + 2 * VLAN + 10) as usize]);
        assert_eq!(id, FlowId::default());
        assert_eq!(ids(&p), parsed(0, ETH + 2 * VLAN));
    }

    // Every prefix of an IPv6 packet with extension headers.
    #[test]
    fn truncated_ipv6_with_extension_headers() {
        let pkt = [
            eth(&[], ETH_P_IPV6),
            ip6(IPV6_HOPOPTS),
            ext6(IPPROTO_UDP, 0),
            udp(1234, 5678),
        ]
        .concat();
        let l3 = ETH;
        let l4 = ETH + IP6 + 8;
        for len in 0..=pkt.len() as u32 {
            let (id, p) = parse(&pkt[..len as usize]);
            if len < l3 + IP6 {
                // Not an IPv6 flow yet. The source address is copied as soon
                // as it is there (from len 38), before the destination check
                // fails; callers drop family-0 results, so only the other
                // fields are checked.
                let rest = Tuple {
                    src: [0; 16],
                    ..id.outer
                };
                assert_eq!(rest, Tuple::default(), "len {len}");
                assert_eq!(id.outer.family, FAMILY_NONE, "len {len}");
                assert_eq!((id.inner, id.vni), (Tuple::default(), 0), "len {len}");
                let want = if len < ETH { 0 } else { l3 };
                assert_eq!(ids(&p), parsed(0, want), "len {len}");
            } else if len < l3 + IP6 + 2 {
                // Addresses known; the protocol is behind the cut extension header.
                assert_eq!(id, plain(v6(A6, B6, 0)), "len {len}");
                assert_eq!(ids(&p), parsed(0, l3), "len {len}");
            } else if len < l4 + 4 {
                assert_eq!(id, plain(v6(A6, B6, IPPROTO_UDP)), "len {len}");
                assert_eq!(ids(&p), parsed(0, l4), "len {len}");
            } else {
                let t = ports(v6(A6, B6, IPPROTO_UDP), 1234, 5678);
                assert_eq!(id, plain(t), "len {len}");
                assert_eq!(ids(&p), parsed(0, l4 + UDP), "len {len}");
            }
        }
    }

    // IPv6 cut inside the fragment header: the fragment id is not read.
    #[test]
    fn truncated_inside_ipv6_fragment_header() {
        let pkt = [
            eth(&[], ETH_P_IPV6),
            ip6(IPV6_FRAGMENT),
            frag6(IPPROTO_UDP, 0, true, 0xdeadbeef),
            udp(1, 2),
        ]
        .concat();
        let (id, p) = parse(&pkt[..(ETH + IP6 + 6) as usize]);
        assert_eq!(id, plain(v6(A6, B6, 0)));
        assert_eq!(ids(&p), parsed(0, ETH));
    }

    // Every prefix of a VXLAN packet: the inner part appears layer by layer.
    #[test]
    fn truncated_vxlan() {
        let pkt = vxlan_ipv4_tcp(4789, 0x08);
        let outer_l4 = ETH + IP4;
        let vx_end = VX_OUTER_UDP_END + VXLAN;
        let inner_l4 = VX_INNER_L3 + IP4;
        let outer = ports(v4(A4, B4, IPPROTO_UDP), 54321, 4789);
        let inner_l3_tuple = v4(A4_IN, B4_IN, IPPROTO_TCP);
        for len in outer_l4 + 4..=pkt.len() as u32 {
            let (id, p) = parse(&pkt[..len as usize]);
            let (want_id, want_end) = if len < vx_end {
                (plain(outer), VX_OUTER_UDP_END)
            } else if len < vx_end + ETH {
                (vxlan_id(outer, 0x123456, Tuple::default()), vx_end)
            } else if len < VX_INNER_L3 + IP4 {
                (vxlan_id(outer, 0x123456, Tuple::default()), VX_INNER_L3)
            } else if len < inner_l4 + 13 {
                (vxlan_id(outer, 0x123456, inner_l3_tuple), inner_l4)
            } else {
                (vxlan_id(outer, 0x123456, vx_inner_tcp()), inner_l4 + 32)
            };
            assert_eq!(id, want_id, "len {len}");
            assert_eq!(ids(&p), parsed(0x1234, want_end), "len {len}");
        }
    }

    // Garbage of every length must not panic, whatever its ethertype.
    /// Pseudo-random bytes from `seed`: the same every run.
    fn bytes(mut seed: u32) -> impl FnMut() -> u8 {
        move || {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (seed >> 16) as u8
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut byte = bytes(0x1234_5678);
        let all_ports = [4789, 8472, 1, 2, 3, 4, 5, 6];
        for ethertype in [ETH_P_IP, ETH_P_IPV6, 0x8100, 0x88a8, ETH_P_ARP] {
            for len in 0..200 {
                let mut pkt: Vec<u8> = (0..len).map(|_| byte()).collect();
                if len >= 15 {
                    pkt[12..14].copy_from_slice(&ethertype.to_be_bytes());
                    // Valid version nibbles, so that the IP paths run deeper.
                    pkt[14] = match ethertype {
                        ETH_P_IP => 0x40 | (pkt[14] & 0x0f),
                        ETH_P_IPV6 => 0x60,
                        _ => pkt[14],
                    };
                }
                let (id, _) = parse_ports(&pkt, &all_ports);
                let family = id.outer.family;
                assert!(
                    matches!(family, FAMILY_NONE | FAMILY_IPV4 | FAMILY_IPV6),
                    "len {len}"
                );
            }
        }
    }

    // ---- In place -------------------------------------------------------------

    /// What the TC programs count a packet as: its flow with the packet's
    /// own flags cleared, DF, and hdr_end.
    type Counted = (FlowId, bool, u32);

    /// A packet as counted by the full parse, and in place.
    fn both(pkt: &[u8], ports: &[u16; MAX_VXLAN_PORTS]) -> (Counted, Option<Counted>) {
        let (mut id, p) = parse_ports(pkt, ports);
        let df = id.outer.flags & TUPLE_DF != 0;
        id.outer.flags &= TUPLE_PORTS;
        id.inner.flags &= TUPLE_PORTS;
        let w = inplace::Slice(pkt);
        let common = (pkt.len() >= inplace::LEN)
            .then(|| inplace::common(&w, ports))
            .flatten()
            .map(|c| (plain(c.tuple()), c.df, c.hdr_end));
        // As the TC programs do: VXLAN in place only if not common.
        let vxlan = || {
            (pkt.len() >= inplace::VXLAN_LEN)
                .then(|| inplace::vxlan(&w, ports))
                .flatten()
                .map(|v| {
                    let id = FlowId {
                        outer: v.outer.tuple(),
                        inner: v.inner.tuple(),
                        vni: v.vni,
                        _pad: 0,
                    };
                    (id, v.outer.df, v.inner.hdr_end)
                })
        };
        ((id, df, p.hdr_end), common.or_else(vxlan))
    }

    /// A VXLAN packet to 4789 around `inner` (an IPv4 header and what follows).
    fn in_vxlan(outer_frag: u16, vxlan_flags: u8, vni: u32, inner: &[Vec<u8>]) -> Vec<u8> {
        let outer = Ip4 {
            frag: outer_frag,
            ..ip4(IPPROTO_UDP)
        };
        let mut parts = vec![
            eth(&[], ETH_P_IP),
            outer.bytes(),
            udp(54321, 4789),
            vxlan(vxlan_flags, vni),
            eth(&[], ETH_P_IP),
        ];
        parts.extend(inner.iter().cloned());
        let mut pkt = parts.concat();
        pkt.resize(pkt.len().max(inplace::VXLAN_LEN + 10), 0xee);
        pkt
    }

    fn padded(parts: &[Vec<u8>]) -> Vec<u8> {
        let mut pkt = parts.concat();
        pkt.resize(pkt.len().max(inplace::LEN + 10), 0xee);
        pkt
    }

    #[test]
    fn in_place_equals_the_full_parse_for_common_packets() {
        let mut cases = Vec::new();
        for frag in [0, DF] {
            for doff in [5, 8, 15] {
                let ip = Ip4 {
                    frag,
                    ..ip4(IPPROTO_TCP)
                };
                cases.push(padded(&[
                    eth(&[], ETH_P_IP),
                    ip.bytes(),
                    tcp(443, 51000, doff),
                ]));
            }
            for dport in [53, 4790, 8472] {
                let ip = Ip4 {
                    frag,
                    ..ip4(IPPROTO_UDP)
                };
                cases.push(padded(&[eth(&[], ETH_P_IP), ip.bytes(), udp(40000, dport)]));
            }
        }
        let addrs = Ip4 {
            src: [192, 168, 255, 1],
            dst: [172, 31, 0, 254],
            ..ip4(IPPROTO_UDP)
        };
        cases.push(padded(&[eth(&[], ETH_P_IP), addrs.bytes(), udp(65535, 1)]));
        let inner = |proto, frag| {
            Ip4 {
                src: A4_IN,
                dst: B4_IN,
                frag,
                ..ip4(proto)
            }
            .bytes()
        };
        for (outer_frag, inner_frag) in [(0, 0), (DF, 0), (0, DF), (DF, DF)] {
            for vni in [0, 1, 0x123456, 0xff_ffff] {
                for doff in [5, 15] {
                    cases.push(in_vxlan(
                        outer_frag,
                        0x08,
                        vni,
                        &[inner(IPPROTO_TCP, inner_frag), tcp(8080, 33000, doff)],
                    ));
                }
                cases.push(in_vxlan(
                    outer_frag,
                    0x0c,
                    vni,
                    &[inner(IPPROTO_UDP, inner_frag), udp(53, 4789)],
                ));
            }
        }
        for pkt in &cases {
            let (full, fast) = both(pkt, &PORTS);
            assert_eq!(fast, Some(full), "{pkt:02x?}");
        }
    }

    #[test]
    fn in_place_leaves_every_other_packet_to_the_full_parse() {
        let frag = |frag| Ip4 {
            frag,
            ..ip4(IPPROTO_UDP)
        };
        let inner = |ip: Ip4| {
            Ip4 {
                src: A4_IN,
                dst: B4_IN,
                ..ip
            }
            .bytes()
        };
        let cases = [
            // VXLAN around something not IPv4 (padding), or too short for
            // its inner header, or whose headers are not common.
            padded(&[
                eth(&[], ETH_P_IP),
                ip4(IPPROTO_UDP).bytes(),
                udp(50000, 4789),
                vxlan(8, 42),
            ]),
            [
                eth(&[], ETH_P_IP),
                ip4(IPPROTO_UDP).bytes(),
                udp(50000, 4789),
                vxlan(8, 42),
                eth(&[], ETH_P_IP),
                inner(ip4(IPPROTO_UDP)),
                udp(1, 2),
            ]
            .concat(),
            in_vxlan(0, 0, 42, &[inner(ip4(IPPROTO_UDP)), udp(1, 2)]),
            in_vxlan(MF, 8, 42, &[inner(ip4(IPPROTO_UDP)), udp(1, 2)]),
            in_vxlan(0, 8, 42, &[inner(frag(MF)), udp(1, 2)]),
            in_vxlan(0, 8, 42, &[inner(frag(DF | 3)), udp(1, 2)]),
            in_vxlan(0, 8, 42, &[inner(ip4(IPPROTO_ICMP)), icmp()]),
            in_vxlan(
                0,
                8,
                42,
                &[
                    inner(Ip4 {
                        options: &[1, 1, 1, 1],
                        ..ip4(IPPROTO_TCP)
                    }),
                    tcp(1, 2, 5),
                ],
            ),
            // Fragments: first, middle, last.
            padded(&[eth(&[], ETH_P_IP), frag(MF).bytes(), udp(1, 2)]),
            padded(&[eth(&[], ETH_P_IP), frag(MF | 3).bytes()]),
            padded(&[eth(&[], ETH_P_IP), frag(DF | 3).bytes()]),
            // Options, ICMP, other protocols, VLAN tags, IPv6, not IP.
            padded(&[
                eth(&[], ETH_P_IP),
                Ip4 {
                    options: &[1, 1, 1, 1],
                    ..ip4(IPPROTO_TCP)
                }
                .bytes(),
                tcp(1, 2, 5),
            ]),
            padded(&[eth(&[], ETH_P_IP), ip4(IPPROTO_ICMP).bytes(), icmp()]),
            padded(&[eth(&[], ETH_P_IP), ip4(47).bytes()]),
            padded(&[
                eth(&[0x8100], ETH_P_IP),
                ip4(IPPROTO_UDP).bytes(),
                udp(1, 2),
            ]),
            padded(&[eth(&[], ETH_P_IPV6), ip6(IPPROTO_UDP), udp(1, 2)]),
            padded(&[eth(&[], ETH_P_ARP)]),
            padded(&[
                eth(&[], ETH_P_IP),
                Ip4 {
                    ver_ihl: Some(0x65),
                    ..ip4(IPPROTO_UDP)
                }
                .bytes(),
                udp(1, 2),
            ]),
        ];
        for pkt in &cases {
            assert_eq!(both(pkt, &PORTS).1, None, "{pkt:02x?}");
        }
        let other = [8472, 0, 0, 0, 0, 0, 0, 0];
        let pkt = padded(&[
            eth(&[], ETH_P_IP),
            ip4(IPPROTO_UDP).bytes(),
            udp(1, 8472),
            vxlan(8, 1),
        ]);
        assert_eq!(both(&pkt, &other).1, None);
        // Not a VXLAN port here: common, and equal to the full parse.
        let (full, fast) = both(&pkt, &PORTS);
        assert_eq!(fast, Some(full));
    }

    /// Random headers with the fields the in-place path looks at set to
    /// the values it takes: whenever it answers, it answers as the full parse.
    #[test]
    fn in_place_agrees_with_the_full_parse_on_random_headers() {
        let mut byte = bytes(0x9e37_79b9);
        let mut taken = 0;
        for i in 0..20_000 {
            let mut pkt: Vec<u8> = (0..inplace::LEN + (i % 40)).map(|_| byte()).collect();
            pkt[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
            if i % 4 != 0 {
                pkt[14] = 0x45;
                // Mostly not fragments (DF or not), some anything.
                if (i / 3) % 4 != 0 {
                    pkt[20] &= 0x40;
                    pkt[21] = 0;
                }
                pkt[23] = [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP][i % 3];
            }
            let (full, fast) = both(&pkt, &PORTS);
            if let Some(fast) = fast {
                assert_eq!(fast, full, "{pkt:02x?}");
                taken += 1;
            }
        }
        assert!(taken > 5_000, "only {taken} packets were common");
    }

    /// The same for VXLAN: random outer and inner headers, mostly with the
    /// fields the in-place path looks at set to the values it takes.
    #[test]
    fn vxlan_in_place_agrees_with_the_full_parse_on_random_headers() {
        let mut byte = bytes(0x7f4a_7c15);
        let mut taken = 0;
        for i in 0..20_000 {
            let mut pkt: Vec<u8> = (0..inplace::VXLAN_LEN + (i % 40)).map(|_| byte()).collect();
            pkt[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
            pkt[14] = 0x45;
            pkt[20] &= 0x40;
            pkt[21] = 0;
            pkt[23] = IPPROTO_UDP;
            pkt[36..38].copy_from_slice(&4789u16.to_be_bytes());
            if i % 5 != 0 {
                pkt[42] |= 0x08;
                pkt[62..64].copy_from_slice(&ETH_P_IP.to_be_bytes());
                pkt[64] = 0x45;
                if (i / 5) % 4 != 0 {
                    pkt[70] &= 0x40;
                    pkt[71] = 0;
                }
                pkt[73] = [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP][i % 3];
            }
            let (full, fast) = both(&pkt, &PORTS);
            if let Some(fast) = fast {
                assert_eq!(fast, full, "{pkt:02x?}");
                taken += 1;
            }
        }
        assert!(taken > 5_000, "only {taken} packets were VXLAN in place");
    }
}
