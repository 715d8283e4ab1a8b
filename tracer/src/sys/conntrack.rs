//! Connection tracking over netlink (`NFNL_SUBSYS_CTNETLINK`): which
//! connections had their destination translated (a published port's DNAT)
//! and what they were addressed to before.

use std::net::IpAddr;

use anyhow::Result;

use crate::sys::netlink::{
    self, Nfnl, attributes,
    build::{attr, nested},
};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_GET_STATS: u16 = 5;
const CTA_STATS_GLOBAL_ENTRIES: u16 = 1;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
/// `IPS_DST_NAT`: the destination was translated.
const IPS_DST_NAT: u32 = 1 << 5;

/// One direction of a connection: protocol, source and destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub proto: u8,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

impl Tuple {
    pub fn reversed(&self) -> Tuple {
        Tuple {
            proto: self.proto,
            src: self.dst,
            sport: self.dport,
            dst: self.src,
            dport: self.sport,
        }
    }
}

/// A connection whose destination was translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dnat {
    /// As the client sent it (to the published address).
    pub original: Tuple,
    /// As it travels after the translation (to the container).
    pub translated: Tuple,
}

/// Every DNAT'd connection of `nl`'s namespace. The kernel walks its whole
/// table for this (all namespaces' buckets), whatever this one holds.
pub fn dnat(nl: &mut Nfnl) -> Result<Vec<Dnat>> {
    let mut out = Vec::new();
    nl.dump(CT_GET, CT_NEW, "conntrack dump", |msg| {
        out.extend(entry(&msg[20..]))
    })?;
    Ok(out)
}

/// How many connections `nl`'s namespace tracks: a counter the kernel
/// keeps per namespace, where a dump walks every namespace's buckets.
pub fn count(nl: &mut Nfnl) -> Result<u32> {
    let mut n = None;
    nl.get(
        CT_GET_STATS,
        0,
        &[],
        CT_GET_STATS,
        "conntrack stats",
        |msg| {
            for (t, p) in attributes(&msg[20..]) {
                if t == CTA_STATS_GLOBAL_ENTRIES {
                    n = netlink::be32(p);
                }
            }
        },
    )?;
    n.ok_or_else(|| anyhow::anyhow!("conntrack stats: no entry count"))
}

/// The connection `t` is one direction of in `nl`'s namespace, if it was
/// DNAT'd: one hash lookup in the kernel. `t` must have ports (TCP, UDP,
/// SCTP): the kernel wants other protocols' own fields.
pub fn dnat_of(nl: &mut Nfnl, t: &Tuple) -> Result<Option<Dnat>> {
    let mut out = None;
    let family = if t.src.is_ipv4() { AF_INET } else { AF_INET6 };
    nl.get(
        CT_GET,
        family,
        &[tuple_attr(CTA_TUPLE_ORIG, t)],
        CT_NEW,
        "conntrack get",
        |msg| out = out.or(entry(&msg[20..])),
    )?;
    Ok(out)
}

const CT_GET: u16 = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET;
const CT_NEW: u16 = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW;
const CT_GET_STATS: u16 = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET_STATS;
const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;

/// `t` as attribute `kind` (CTA_TUPLE_ORIG or CTA_TUPLE_REPLY).
fn tuple_attr(kind: u16, t: &Tuple) -> Vec<u8> {
    let ip = |a: IpAddr| match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let (src, dst) = if t.src.is_ipv4() {
        (CTA_IP_V4_SRC, CTA_IP_V4_DST)
    } else {
        (CTA_IP_V6_SRC, CTA_IP_V6_DST)
    };
    nested(
        kind,
        &[
            nested(
                CTA_TUPLE_IP,
                &[attr(src, &ip(t.src)), attr(dst, &ip(t.dst))],
            ),
            nested(
                CTA_TUPLE_PROTO,
                &[
                    attr(CTA_PROTO_NUM, &[t.proto]),
                    attr(CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes()),
                    attr(CTA_PROTO_DST_PORT, &t.dport.to_be_bytes()),
                ],
            ),
        ],
    )
}

fn entry(attrs: &[u8]) -> Option<Dnat> {
    let (mut orig, mut reply, mut status) = (None, None, 0);
    for (t, p) in attributes(attrs) {
        match t {
            CTA_TUPLE_ORIG => orig = tuple(p),
            CTA_TUPLE_REPLY => reply = tuple(p),
            CTA_STATUS => status = netlink::be32(p).unwrap_or(0),
            _ => {}
        }
    }
    if status & IPS_DST_NAT == 0 {
        return None;
    }
    let (original, reply) = (orig?, reply?);
    Some(Dnat {
        original,
        // The reply comes from where the packets really went, back to
        // where they came from (after any source NAT too).
        translated: reply.reversed(),
    })
}

fn tuple(buf: &[u8]) -> Option<Tuple> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, 0, 0, 0);
    for (t, p) in attributes(buf) {
        match t {
            CTA_TUPLE_IP => {
                for (t, a) in attributes(p) {
                    let ip = match (t, a.len()) {
                        (CTA_IP_V4_SRC | CTA_IP_V4_DST, 4) => {
                            IpAddr::from(<[u8; 4]>::try_from(a).ok()?)
                        }
                        (CTA_IP_V6_SRC | CTA_IP_V6_DST, 16) => {
                            IpAddr::from(<[u8; 16]>::try_from(a).ok()?)
                        }
                        _ => continue,
                    };
                    if matches!(t, CTA_IP_V4_SRC | CTA_IP_V6_SRC) {
                        src = Some(ip);
                    } else {
                        dst = Some(ip);
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (t, a) in attributes(p) {
                    let port = || Some(u16::from_be_bytes(a.get(..2)?.try_into().ok()?));
                    match t {
                        CTA_PROTO_NUM => proto = *a.first()?,
                        CTA_PROTO_SRC_PORT => sport = port()?,
                        CTA_PROTO_DST_PORT => dport = port()?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple {
        proto,
        src: src?,
        sport,
        dst: dst?,
        dport,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::netlink::{build::nfnl_message, decode_dump};

    fn v4(a: [u8; 4]) -> IpAddr {
        IpAddr::from(a)
    }

    fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Tuple {
        Tuple {
            proto: 17,
            src: v4(src),
            sport,
            dst: v4(dst),
            dport,
        }
    }

    #[test]
    fn a_tuple_attribute_reads_back_as_itself() {
        let v6 = Tuple {
            proto: 6,
            src: "fd00::2".parse().unwrap(),
            sport: 443,
            dst: "fd00::1".parse().unwrap(),
            dport: 50000,
        };
        for t in [udp([10, 9, 1, 2], 41000, [10, 9, 1, 1], 8080), v6] {
            let a = tuple_attr(CTA_TUPLE_ORIG, &t);
            let (kind, payload) = attributes(&a).next().unwrap();
            assert_eq!(kind, CTA_TUPLE_ORIG);
            assert_eq!(tuple(payload), Some(t));
        }
    }

    #[test]
    fn a_published_port_is_told_from_plain_connections() {
        let kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW;
        // Client 10.9.1.2:41000 to the host's 10.9.1.1:8080, DNAT'd to 172.17.0.2:5001.
        let published = nfnl_message(
            kind,
            2,
            &[
                tuple_attr(
                    CTA_TUPLE_ORIG,
                    &udp([10, 9, 1, 2], 41000, [10, 9, 1, 1], 8080),
                ),
                tuple_attr(
                    CTA_TUPLE_REPLY,
                    &udp([172, 17, 0, 2], 5001, [10, 9, 1, 2], 41000),
                ),
                attr(CTA_STATUS, &(IPS_DST_NAT | 0x8).to_be_bytes()),
            ],
        );
        let plain = nfnl_message(
            kind,
            2,
            &[
                tuple_attr(
                    CTA_TUPLE_ORIG,
                    &udp([10, 9, 1, 2], 41001, [10, 9, 1, 1], 22),
                ),
                tuple_attr(
                    CTA_TUPLE_REPLY,
                    &udp([10, 9, 1, 1], 22, [10, 9, 1, 2], 41001),
                ),
                attr(CTA_STATUS, &0x8u32.to_be_bytes()),
            ],
        );
        let mut out = Vec::new();
        let mut each = |m: &[u8]| out.extend(entry(&m[20..]));
        let dump = decode_dump(&[plain, published].concat(), CT_NEW, &mut each);
        assert_eq!(dump, netlink::Dump::More);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].original,
            udp([10, 9, 1, 2], 41000, [10, 9, 1, 1], 8080)
        );
        assert_eq!(
            out[0].translated,
            udp([10, 9, 1, 2], 41000, [172, 17, 0, 2], 5001)
        );
    }
}
