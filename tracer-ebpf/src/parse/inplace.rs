//! The flow of the common packet read where it lies: Ethernet, IPv4 without
//! options, not a fragment, TCP or UDP not to a VXLAN port. Most packets of
//! a container host are that; for them the TC programs skip the copy of the
//! packet's head, the byte-at-a-time parse and the write of a 104-byte key,
//! and keep the key's few non-zero words in registers. Everything else goes
//! through [`super::parse_ethernet`], whose result for these packets this
//! one equals (a test holds them to it).

use crate::{FAMILY_IPV4, MAX_VXLAN_PORTS, TUPLE_PORTS, Tuple};

use super::{ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP};

/// Bytes of the packet [`common`] reads: up to the TCP data offset.
pub const LEN: usize = 48;

/// Fixed-offset reads of a packet that holds at least [`LEN`] bytes.
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

const ETH_HLEN: usize = 14;
const L4: usize = ETH_HLEN + 20;

/// The flow of `w` if it is a common packet; `None` says parse it in full.
#[inline(always)]
pub fn common<W: Window>(w: &W, vxlan_ports: &[u16; MAX_VXLAN_PORTS]) -> Option<Common> {
    // Version 4 and a 20-byte header: no options to skip.
    if w.be16_at::<12>() != ETH_P_IP || w.u8_at::<ETH_HLEN>() != 0x45 {
        return None;
    }
    let frag = w.be16_at::<{ ETH_HLEN + 6 }>();
    // More fragments, or an offset: the fragment path attributes those.
    if frag & 0x3fff != 0 {
        return None;
    }
    let proto = w.u8_at::<{ ETH_HLEN + 9 }>();
    let (sport, dport) = (w.be16_at::<L4>(), w.be16_at::<{ L4 + 2 }>());
    let hdr_end = match proto {
        IPPROTO_TCP => (L4 + (w.u8_at::<{ L4 + 12 }>() >> 4) as usize * 4) as u32,
        IPPROTO_UDP => {
            let mut i = 0;
            while i < MAX_VXLAN_PORTS {
                if vxlan_ports[i] != 0 && vxlan_ports[i] == dport {
                    return None;
                }
                i += 1;
            }
            (L4 + 8) as u32
        }
        _ => return None,
    };
    Some(Common {
        src: w.le32_at::<{ ETH_HLEN + 12 }>(),
        dst: w.le32_at::<{ ETH_HLEN + 16 }>(),
        tail: sport as u64
            | (dport as u64) << 16
            | (proto as u64) << 32
            | (FAMILY_IPV4 as u64) << 40
            | (TUPLE_PORTS as u64) << 48,
        df: frag & 0x4000 != 0,
        hdr_end,
    })
}

impl Common {
    /// The outer tuple as [`super::parse_ethernet`] fills it, with the flags
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

/// A byte slice as a [`Window`], for tests; it must hold [`LEN`] bytes.
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
