//! Where netfilter can decide anything in a namespace: the base chains of
//! nftables (iptables-nft's included), read over netlink, and the tables of
//! iptables-legacy, from /proc. The verdict observers go only around those,
//! so namespaces without a firewall pay nothing for them.

use std::io::ErrorKind;

use anyhow::{Context as _, Result, bail};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use tracer_ebpf::hook;

use crate::collectors::verdicts::bands::{NFPROTO_IPV4, NFPROTO_IPV6};

/// `NFPROTO_INET`: a chain of an `inet` table sees IPv4 and IPv6.
pub const NFPROTO_INET: u8 = 1;

/// A chain attached to a netfilter hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BaseChain {
    /// `NFPROTO_*` of its table.
    pub family: u8,
    pub hook: u8,
    pub priority: i32,
}

impl BaseChain {
    /// Runs for packets of `NFPROTO_IPV4`/`NFPROTO_IPV6` family `pf`.
    pub fn sees(&self, pf: u8) -> bool {
        self.family == pf || self.family == NFPROTO_INET
    }
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Base chains of the calling thread's namespace.
pub fn base_chains() -> Result<Vec<BaseChain>> {
    let mut chains = nft_base_chains()?;
    chains.extend(legacy_base_chains());
    Ok(chains)
}

fn nft_base_chains() -> Result<Vec<BaseChain>> {
    let mut socket = Socket::new(NETLINK_NETFILTER).context("netfilter netlink socket")?;
    socket.bind_auto().context("netlink bind")?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("netlink connect")?;
    // nlmsghdr + nfgenmsg (family AF_UNSPEC: every family, version 0, res_id 0).
    let mut req = Vec::with_capacity(20);
    req.extend(20u32.to_ne_bytes());
    req.extend(((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETCHAIN).to_ne_bytes());
    req.extend((NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend(1u32.to_ne_bytes());
    req.extend(0u32.to_ne_bytes());
    req.extend([0u8, 0, 0, 0]);
    socket.send(&req, 0).context("netlink send")?;
    let mut chains = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("netlink recv"),
        };
        match decode(&buf[..n], &mut chains) {
            Decoded::More => {}
            Decoded::Done => return Ok(chains),
            Decoded::Error(code) => {
                bail!(
                    "nftables chain dump: {}",
                    std::io::Error::from_raw_os_error(-code)
                )
            }
        }
    }
}

enum Decoded {
    More,
    Done,
    Error(i32),
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// Netlink attributes of `b`: (type, payload).
fn attributes(b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        let len = u16_at(b, off)? as usize;
        let kind = u16_at(b, off + 2)? & NLA_TYPE_MASK;
        let payload = b.get(off + 4..off + len)?;
        off += len.div_ceil(4) * 4;
        Some((kind, payload))
    })
}

/// Adds the base chains of the messages in `buf` to `chains`.
fn decode(buf: &[u8], chains: &mut Vec<BaseChain>) -> Decoded {
    let mut off = 0;
    while let (Some(len), Some(kind)) = (u32_at(buf, off), u16_at(buf, off + 4)) {
        let len = len as usize;
        if len < 16 || off + len > buf.len() {
            break;
        }
        let msg = &buf[off..off + len];
        match kind {
            NLMSG_DONE => return Decoded::Done,
            NLMSG_ERROR => {
                let code = u32_at(msg, 16).unwrap_or(0) as i32;
                if code != 0 {
                    return Decoded::Error(code);
                }
            }
            k if k == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN && msg.len() >= 20 => {
                let family = msg[16];
                let hook = attributes(&msg[20..])
                    .find(|(t, _)| *t == NFTA_CHAIN_HOOK)
                    .map(|(_, p)| p);
                if let Some(hook_attrs) = hook {
                    let mut num = None;
                    let mut priority = None;
                    for (t, p) in attributes(hook_attrs) {
                        let v = p
                            .get(..4)
                            .map(|b| u32::from_be_bytes(b.try_into().expect("4")));
                        match t {
                            NFTA_HOOK_HOOKNUM => num = v,
                            NFTA_HOOK_PRIORITY => priority = v.map(|v| v as i32),
                            _ => {}
                        }
                    }
                    if let (Some(hook), Some(priority)) = (num, priority) {
                        chains.push(BaseChain {
                            family,
                            hook: hook as u8,
                            priority,
                        });
                    }
                }
            }
            _ => {}
        }
        off += len.div_ceil(4) * 4;
    }
    Decoded::More
}

/// iptables-legacy tables of the calling thread's namespace, as the base
/// chains they register.
fn legacy_base_chains() -> Vec<BaseChain> {
    let mut chains = Vec::new();
    for (file, family) in [
        ("ip_tables_names", NFPROTO_IPV4),
        ("ip6_tables_names", NFPROTO_IPV6),
    ] {
        let Ok(names) = std::fs::read_to_string(format!("/proc/thread-self/net/{file}")) else {
            continue;
        };
        for table in names.lines() {
            chains.extend(
                legacy_table(table.trim())
                    .iter()
                    .map(|&(hook, priority)| BaseChain {
                        family,
                        hook,
                        priority,
                    }),
            );
        }
    }
    chains
}

/// The hooks and priority of an iptables-legacy table.
fn legacy_table(name: &str) -> &'static [(u8, i32)] {
    use hook::*;
    match name {
        "filter" => &[(LOCAL_IN, 0), (FORWARD, 0), (LOCAL_OUT, 0)],
        "raw" => &[(PRE_ROUTING, -300), (LOCAL_OUT, -300)],
        "mangle" => &[
            (PRE_ROUTING, -150),
            (LOCAL_IN, -150),
            (FORWARD, -150),
            (LOCAL_OUT, -150),
            (POST_ROUTING, -150),
        ],
        "nat" => &[
            (PRE_ROUTING, -100),
            (LOCAL_OUT, -100),
            (LOCAL_IN, 100),
            (POST_ROUTING, 100),
        ],
        "security" => &[(LOCAL_IN, 50), (FORWARD, 50), (LOCAL_OUT, 50)],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend(((4 + payload.len()) as u16).to_ne_bytes());
        a.extend(kind.to_ne_bytes());
        a.extend(payload);
        a.resize(a.len().div_ceil(4) * 4, 0);
        a
    }

    fn message(kind: u16, family: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = attrs.concat();
        let mut m = Vec::new();
        m.extend(((20 + body.len()) as u32).to_ne_bytes());
        m.extend(kind.to_ne_bytes());
        m.extend(2u16.to_ne_bytes());
        m.extend(1u32.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m.extend([family, 0, 0, 0]);
        m.extend(body);
        m
    }

    fn chain(family: u8, hook: u32, priority: i32) -> Vec<u8> {
        let hook_attrs = [
            attr(NFTA_HOOK_HOOKNUM, &hook.to_be_bytes()),
            attr(NFTA_HOOK_PRIORITY, &priority.to_be_bytes()),
        ]
        .concat();
        message(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN,
            family,
            &[
                attr(1, b"filter\0"),
                attr(3, b"INPUT\0"),
                // Nested, as the kernel marks it.
                attr(NFTA_CHAIN_HOOK | 0x8000, &hook_attrs),
            ],
        )
    }

    #[test]
    fn base_chains_are_decoded_and_regular_chains_skipped() {
        let regular = message(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN,
            NFPROTO_IPV4,
            &[attr(1, b"filter\0"), attr(3, b"DOCKER\0")],
        );
        let buf = [
            chain(NFPROTO_IPV4, 1, 0),
            regular,
            chain(NFPROTO_INET, 0, -350),
            message(NLMSG_DONE, 0, &[]),
        ]
        .concat();
        let mut chains = Vec::new();
        assert!(matches!(decode(&buf, &mut chains), Decoded::Done));
        assert_eq!(
            chains,
            [
                BaseChain {
                    family: NFPROTO_IPV4,
                    hook: 1,
                    priority: 0
                },
                BaseChain {
                    family: NFPROTO_INET,
                    hook: 0,
                    priority: -350
                },
            ]
        );
        assert!(chains[1].sees(NFPROTO_IPV6) && chains[1].sees(NFPROTO_IPV4));
        assert!(!chains[0].sees(NFPROTO_IPV6));
    }

    #[test]
    fn errors_and_partial_buffers() {
        // nlmsghdr, then the error code and the request's header.
        let mut err = Vec::new();
        err.extend(36u32.to_ne_bytes());
        err.extend(NLMSG_ERROR.to_ne_bytes());
        err.extend(0u16.to_ne_bytes());
        err.extend(1u32.to_ne_bytes());
        err.extend(0u32.to_ne_bytes());
        err.extend((-1i32).to_ne_bytes());
        err.extend([0u8; 16]);
        let mut chains = Vec::new();
        assert!(matches!(decode(&err, &mut chains), Decoded::Error(-1)));
        assert!(matches!(
            decode(&chain(2, 1, 0)[..10], &mut chains),
            Decoded::More
        ));
        assert!(chains.is_empty());
    }

    #[test]
    fn legacy_tables() {
        assert_eq!(legacy_table("filter").len(), 3);
        assert!(legacy_table("nat").contains(&(hook::POST_ROUTING, 100)));
        assert!(legacy_table("broute").is_empty());
    }

    /// The lab's own firewall, read both ways.
    #[test]
    fn running_kernel_sees_an_iptables_nft_chain() {
        let p = xtask::lab::Pair::new(1500).unwrap();
        xtask::lab::iptables(
            &p.a.ns,
            &["-A", "INPUT", "-p", "udp", "--dport", "1", "-j", "DROP"],
        )
        .unwrap();
        let ns = crate::sys::netns::resolve(std::slice::from_ref(&p.a.ns)).unwrap();
        let chains = crate::sys::netns::run_in(&ns[0].path, base_chains)
            .unwrap()
            .unwrap();
        assert!(
            chains
                .iter()
                .any(|c| c.hook == hook::LOCAL_IN && c.priority == 0 && c.sees(NFPROTO_IPV4)),
            "{chains:?}"
        );
        let other = crate::sys::netns::resolve(std::slice::from_ref(&p.b.ns)).unwrap();
        let none = crate::sys::netns::run_in(&other[0].path, base_chains)
            .unwrap()
            .unwrap();
        assert!(none.is_empty(), "{none:?}");
    }
}
