//! Where netfilter can decide anything in a namespace: the base chains of
//! nftables (iptables-nft's included), read over netlink, and the tables of
//! iptables-legacy, from /proc. The verdict observers go only around those,
//! so namespaces without a firewall pay nothing for them.

use anyhow::Result;

use crate::{
    model::{Hook, IpFamily, NFPROTO_INET, NFPROTO_IPV4, NFPROTO_IPV6, Table},
    sys::netlink::{self, attributes, be32},
};

/// A chain attached to a netfilter hook of the IP families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BaseChain {
    /// `NFPROTO_*` of its table.
    pub family: u8,
    pub hook: Hook,
    pub priority: i32,
}

impl BaseChain {
    /// Runs for packets of `family`.
    pub fn sees(&self, family: IpFamily) -> bool {
        self.family == family.nfproto() || self.family == NFPROTO_INET
    }
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;

/// Base chains of the calling thread's namespace.
pub fn base_chains() -> Result<Vec<BaseChain>> {
    let mut chains = nft_base_chains()?;
    chains.extend(legacy_base_chains());
    Ok(chains)
}

fn nft_base_chains() -> Result<Vec<BaseChain>> {
    let mut chains = Vec::new();
    netlink::netfilter_dump(
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETCHAIN,
        NEWCHAIN,
        "nftables chain dump",
        |msg| chains.extend(base_chain(msg)),
    )?;
    Ok(chains)
}

const NEWCHAIN: u16 = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN;

/// The base chain a chain message describes, if it is one of an IP family.
fn base_chain(msg: &[u8]) -> Option<BaseChain> {
    let family = *msg.get(16)?;
    let (_, hook_attrs) = attributes(msg.get(20..)?).find(|(t, _)| *t == NFTA_CHAIN_HOOK)?;
    let (mut num, mut priority) = (None, None);
    for (t, p) in attributes(hook_attrs) {
        match t {
            NFTA_HOOK_HOOKNUM => num = be32(p),
            NFTA_HOOK_PRIORITY => priority = be32(p).map(|v| v as i32),
            _ => {}
        }
    }
    // Only the IP families' hooks: arp, bridge and netdev number theirs apart.
    if ![NFPROTO_INET, NFPROTO_IPV4, NFPROTO_IPV6].contains(&family) {
        return None;
    }
    Some(BaseChain {
        family,
        hook: Hook::from_raw(num? as u8)?,
        priority: priority?,
    })
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
        for table in names.lines().filter_map(|n| Table::from_name(n.trim())) {
            chains.extend(table.iptables_hooks().iter().map(|&hook| BaseChain {
                family,
                hook,
                priority: table.priority(hook),
            }));
        }
    }
    chains
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::netlink::{
        Dump, NLMSG_DONE, NLMSG_ERROR,
        build::{attr, nfnl_message as message},
        decode_dump,
    };

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
        let mut each = |m: &[u8]| chains.extend(base_chain(m));
        assert_eq!(decode_dump(&buf, NEWCHAIN, &mut each), Dump::Done);
        assert_eq!(
            chains,
            [
                BaseChain {
                    family: NFPROTO_IPV4,
                    hook: Hook::Input,
                    priority: 0
                },
                BaseChain {
                    family: NFPROTO_INET,
                    hook: Hook::Prerouting,
                    priority: -350
                },
            ]
        );
        assert!(chains[1].sees(IpFamily::Ipv6) && chains[1].sees(IpFamily::Ipv4));
        assert!(!chains[0].sees(IpFamily::Ipv6));
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
        let mut each = |m: &[u8]| chains.extend(base_chain(m));
        assert_eq!(decode_dump(&err, NEWCHAIN, &mut each), Dump::Error(-1));
        assert_eq!(
            decode_dump(&chain(2, 1, 0)[..10], NEWCHAIN, &mut each),
            Dump::More
        );
        assert!(chains.is_empty());
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
                .any(|c| c.hook == Hook::Input && c.priority == 0 && c.sees(IpFamily::Ipv4)),
            "{chains:?}"
        );
        let other = crate::sys::netns::resolve(std::slice::from_ref(&p.b.ns)).unwrap();
        let none = crate::sys::netns::run_in(&other[0].path, base_chains)
            .unwrap()
            .unwrap();
        assert!(none.is_empty(), "{none:?}");
    }
}
