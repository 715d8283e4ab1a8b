//! Connection tracking over netlink (`NFNL_SUBSYS_CTNETLINK`): which
//! connections had their destination translated (a published port's DNAT)
//! and what they were addressed to before.

use std::net::IpAddr;

use anyhow::Result;

use crate::sys::netlink::{self, attributes};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;

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

/// The DNAT'd connections of the calling thread's namespace.
pub fn dnat() -> Result<Vec<Dnat>> {
    let mut out = Vec::new();
    netlink::netfilter_dump(
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
        CT_NEW,
        "conntrack dump",
        |msg| out.extend(entry(&msg[20..])),
    )?;
    Ok(out)
}

const CT_NEW: u16 = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW;

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
    use crate::sys::netlink::{
        build::{attr, nfnl_message},
        decode_dump,
    };

    fn nested(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        attr(kind | 0x8000, &parts.concat())
    }

    fn tuple_attr(kind: u16, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        nested(
            kind,
            &[
                nested(
                    CTA_TUPLE_IP,
                    &[attr(CTA_IP_V4_SRC, &src), attr(CTA_IP_V4_DST, &dst)],
                ),
                nested(
                    CTA_TUPLE_PROTO,
                    &[
                        attr(CTA_PROTO_NUM, &[17]),
                        attr(CTA_PROTO_SRC_PORT, &sport.to_be_bytes()),
                        attr(CTA_PROTO_DST_PORT, &dport.to_be_bytes()),
                    ],
                ),
            ],
        )
    }

    #[test]
    fn a_published_port_is_told_from_plain_connections() {
        let kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW;
        // Client 10.9.1.2:41000 to the host's 10.9.1.1:8080, DNAT'd to 172.17.0.2:5001.
        let published = nfnl_message(
            kind,
            2,
            &[
                tuple_attr(CTA_TUPLE_ORIG, [10, 9, 1, 2], [10, 9, 1, 1], 41000, 8080),
                tuple_attr(CTA_TUPLE_REPLY, [172, 17, 0, 2], [10, 9, 1, 2], 5001, 41000),
                attr(CTA_STATUS, &(IPS_DST_NAT | 0x8).to_be_bytes()),
            ],
        );
        let plain = nfnl_message(
            kind,
            2,
            &[
                tuple_attr(CTA_TUPLE_ORIG, [10, 9, 1, 2], [10, 9, 1, 1], 41001, 22),
                tuple_attr(CTA_TUPLE_REPLY, [10, 9, 1, 1], [10, 9, 1, 2], 22, 41001),
                attr(CTA_STATUS, &0x8u32.to_be_bytes()),
            ],
        );
        let mut out = Vec::new();
        let mut each = |m: &[u8]| out.extend(entry(&m[20..]));
        let dump = decode_dump(&[plain, published].concat(), CT_NEW, &mut each);
        assert_eq!(dump, netlink::Dump::More);
        assert_eq!(out.len(), 1);
        let ip = |a: [u8; 4]| IpAddr::from(a);
        assert_eq!(
            out[0].original,
            Tuple {
                proto: 17,
                src: ip([10, 9, 1, 2]),
                sport: 41000,
                dst: ip([10, 9, 1, 1]),
                dport: 8080
            }
        );
        assert_eq!(
            out[0].translated,
            Tuple {
                proto: 17,
                src: ip([10, 9, 1, 2]),
                sport: 41000,
                dst: ip([172, 17, 0, 2]),
                dport: 5001
            }
        );
    }
}
