//! The flow of the common packet read where it lies: Ethernet, IPv4 without
//! options, not a fragment, TCP or UDP not to a VXLAN port; and of VXLAN
//! packets whose outer and inner headers are both that. Most packets of a
//! container host are one or the other; for them the TC programs skip the
//! copy of the packet's head, the byte-at-a-time parse and the write of a
//! 104-byte key, and keep the key's non-zero words in registers. Everything
//! else goes through [`super::parse_ethernet`], whose result for these
//! packets this one equals (tests hold them to it).

use crate::{FAMILY_IPV4, MAX_VXLAN_PORTS, TUPLE_PORTS, Tuple, VNI_PRESENT};

use super::{ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP};

/// Bytes of the packet [`common`] reads: up to the TCP data offset.
pub const LEN: usize = 48;
/// Bytes of the packet [`vxlan`] reads: up to the inner TCP data offset.
pub const VXLAN_LEN: usize = INNER_L4 + 13;

/// Fixed-offset reads of a packet that holds at least as many bytes as
/// the function reading it needs ([`LEN`], [`VXLAN_LEN`]).
pub trait Window {
    fn u8_at<const OFF: usize>(&self) -> u8;
    /// Two bytes as a big-endian number.
    fn be16_at<const OFF: usize>(&self) -> u16;
    /// Four bytes as a little-endian load reads them: an IPv4 address
    /// written back from it keeps its bytes in order.
    fn le32_at<const OFF: usize>(&self) -> u32;
}

/// A common packet's flow, as the words of a flow key hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Common {
    /// The first four bytes of [`Tuple::src`] and [`Tuple::dst`] (the rest are zero).
    pub src: u32,
    pub dst: u32,
    /// Bytes 32..40 of the [`Tuple`]: ports, protocol, family, flags, padding.
    pub tail: u64,
    /// IPv4 "don't fragment" is set.
    pub df: bool,
    /// Offset past the L4 header: the per-segment header length of GSO.
    pub hdr_end: u32,
}

/// A VXLAN packet whose outer and inner headers are both common ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vxlan {
    /// Its `df` is the packet's; its `hdr_end` is not used.
    pub outer: Common,
    /// Its `hdr_end` is the packet's (past the inner L4 header).
    pub inner: Common,
    /// [`crate::FlowId::vni`]: [`VNI_PRESENT`] and the VNI.
    pub vni: u32,
}

const ETH_HLEN: usize = 14;
const L4: usize = ETH_HLEN + 20;
/// The VXLAN header after the outer UDP header, then the inner frame.
const VXLAN_HDR: usize = L4 + 8;
const INNER_L3: usize = VXLAN_HDR + 8 + ETH_HLEN;
const INNER_L4: usize = INNER_L3 + 20;

/// IPv4 without options, not a fragment, carrying TCP or UDP, whose header
/// starts at `$l3` of window `$w`: `Some(Common)`, else `None`. A macro, not
/// a function of a const parameter: the offsets must stay constants for the
/// loads, and stable Rust has no arithmetic on const parameters.
macro_rules! ipv4 {
    ($w:expr, $l3:expr) => {{
        const L3: usize = $l3;
        const L4: usize = L3 + 20;
        let w = $w;
        // Version 4 and a 20-byte header: no options to skip.
        let frag = w.be16_at::<{ L3 + 6 }>();
        let proto = w.u8_at::<{ L3 + 9 }>();
        // More fragments, or an offset: the fragment path attributes those.
        if w.u8_at::<L3>() != 0x45 || frag & 0x3fff != 0 {
            None
        } else {
            let l4_len = match proto {
                IPPROTO_TCP => Some((w.u8_at::<{ L4 + 12 }>() >> 4) as u32 * 4),
                IPPROTO_UDP => Some(8),
                _ => None,
            };
            l4_len.map(|l4_len| Common {
                src: w.le32_at::<{ L3 + 12 }>(),
                dst: w.le32_at::<{ L3 + 16 }>(),
                tail: w.be16_at::<L4>() as u64
                    | (w.be16_at::<{ L4 + 2 }>() as u64) << 16
                    | (proto as u64) << 32
                    | (FAMILY_IPV4 as u64) << 40
                    | (TUPLE_PORTS as u64) << 48,
                df: frag & 0x4000 != 0,
                hdr_end: L4 as u32 + l4_len,
            })
        }
    }};
}

/// The flow of `w` if it is a common packet; `None` says try [`vxlan`], or
/// parse it in full.
#[inline(always)]
pub fn common<W: Window>(w: &W, vxlan_ports: &[u16; MAX_VXLAN_PORTS]) -> Option<Common> {
    if w.be16_at::<12>() != ETH_P_IP {
        return None;
    }
    let c = ipv4!(w, ETH_HLEN)?;
    if c.is_udp_to(vxlan_ports) {
        return None;
    }
    Some(c)
}

/// The flow of `w` if it is VXLAN with a valid VNI, both of whose headers
/// are common (the inner without VLAN tags); `None` says parse it in full.
#[inline(always)]
pub fn vxlan<W: Window>(w: &W, vxlan_ports: &[u16; MAX_VXLAN_PORTS]) -> Option<Vxlan> {
    if w.be16_at::<12>() != ETH_P_IP {
        return None;
    }
    let outer = ipv4!(w, ETH_HLEN)?;
    // The "VNI valid" flag, and an inner IPv4 frame.
    if !outer.is_udp_to(vxlan_ports)
        || w.u8_at::<VXLAN_HDR>() & 0x08 == 0
        || w.be16_at::<{ INNER_L3 - 2 }>() != ETH_P_IP
    {
        return None;
    }
    let inner = ipv4!(w, INNER_L3)?;
    let vni =
        (w.be16_at::<{ VXLAN_HDR + 4 }>() as u32) << 8 | w.u8_at::<{ VXLAN_HDR + 6 }>() as u32;
    Some(Vxlan {
        outer,
        inner,
        vni: VNI_PRESENT | vni,
    })
}

impl Common {
    /// No tuple: the inner one of a packet that is not VXLAN (all zero).
    pub const NONE: Common = Common {
        src: 0,
        dst: 0,
        tail: 0,
        df: false,
        hdr_end: 0,
    };

    /// UDP to one of `ports`.
    #[inline(always)]
    fn is_udp_to(&self, ports: &[u16; MAX_VXLAN_PORTS]) -> bool {
        (self.tail >> 32) as u8 == IPPROTO_UDP
            && super::is_vxlan_port((self.tail >> 16) as u16, ports)
    }

    /// The tuple as [`super::parse_ethernet`] fills it (outer, or a VXLAN
    /// packet's inner), with the flags
    /// that are about one packet (DF) cleared as flow keys have them.
    pub fn tuple(&self) -> Tuple {
        let mut t = Tuple::default();
        t.src[..4].copy_from_slice(&self.src.to_le_bytes());
        t.dst[..4].copy_from_slice(&self.dst.to_le_bytes());
        let tail = self.tail.to_le_bytes();
        t.sport = u16::from_le_bytes([tail[0], tail[1]]);
        t.dport = u16::from_le_bytes([tail[2], tail[3]]);
        (t.proto, t.family, t.flags, t._pad) = (tail[4], tail[5], tail[6], tail[7]);
        t
    }
}

/// A byte slice as a [`Window`], for tests; it must hold the bytes read.
pub struct Slice<'a>(pub &'a [u8]);

impl Window for Slice<'_> {
    fn u8_at<const OFF: usize>(&self) -> u8 {
        self.0[OFF]
    }
    fn be16_at<const OFF: usize>(&self) -> u16 {
        u16::from_be_bytes([self.0[OFF], self.0[OFF + 1]])
    }
    fn le32_at<const OFF: usize>(&self) -> u32 {
        u32::from_le_bytes([
            self.0[OFF],
            self.0[OFF + 1],
            self.0[OFF + 2],
            self.0[OFF + 3],
        ])
    }
}
