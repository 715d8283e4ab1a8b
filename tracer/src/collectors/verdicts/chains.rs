//! Where netfilter can decide anything in a namespace: the base chains of
//! nftables (iptables-nft's included), read over netlink, and the tables of
//! iptables-legacy, from /proc. The verdict observers go only around those,
//! so namespaces without a firewall pay nothing for them.

use std::{
    fs::File,
    io::{Read as _, Seek as _, SeekFrom},
    path::Path,
};

use anyhow::Result;

use crate::{
    model::{Hook, IpFamily, NFPROTO_INET, NFPROTO_IPV4, NFPROTO_IPV6, Table},
    sys::netlink::{Nfnl, attributes, be32},
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

/// Base chains of the calling thread's namespace, asked once.
pub fn base_chains() -> Result<Vec<BaseChain>> {
    ChainReader::open()?.base_chains()
}

/// Reads one namespace's base chains from any thread: a netfilter socket and
/// the iptables-legacy table lists, opened inside the namespace, stay bound to
/// it. Asking again every interval then costs no thread entering it.
pub struct ChainReader {
    nfnl: Nfnl,
    /// `ip_tables_names` and `ip6_tables_names`, if their module was loaded
    /// when the reader was opened.
    legacy: [Option<File>; 2],
}

/// The iptables-legacy table lists under a namespace's /proc/net.
const LEGACY: [(&str, u8); 2] = [
    ("ip_tables_names", NFPROTO_IPV4),
    ("ip6_tables_names", NFPROTO_IPV6),
];

impl ChainReader {
    /// A reader of the calling thread's namespace.
    pub fn open() -> Result<Self> {
        Ok(ChainReader {
            nfnl: Nfnl::open()?,
            legacy: LEGACY
                .map(|(file, _)| File::open(format!("/proc/thread-self/net/{file}")).ok()),
        })
    }

    /// Whether a table list missing when it was opened exists now: its module
    /// was loaded since (modules are global, so tracer's own namespace says),
    /// and the reader must be opened again inside the namespace to see it.
    pub fn stale(&self) -> bool {
        self.legacy.iter().zip(LEGACY).any(|(kept, (file, _))| {
            kept.is_none() && Path::new("/proc/self/net").join(file).exists()
        })
    }

    pub fn base_chains(&mut self) -> Result<Vec<BaseChain>> {
        let mut chains = Vec::new();
        self.nfnl.dump(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETCHAIN,
            NEWCHAIN,
            "nftables chain dump",
            |msg| chains.extend(base_chain(msg)),
        )?;
        for (kept, (_, family)) in self.legacy.iter_mut().zip(LEGACY) {
            if let Some(names) = kept.as_mut().and_then(|f| read_again(f).ok()) {
                chains.extend(legacy_base_chains(&names, family));
            }
        }
        Ok(chains)
    }
}

/// A /proc file's contents now: it is generated afresh on each read from the start.
fn read_again(f: &mut File) -> std::io::Result<String> {
    f.seek(SeekFrom::Start(0))?;
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    Ok(text)
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

/// The base chains that the iptables-legacy tables listed in `names` register.
fn legacy_base_chains(names: &str, family: u8) -> impl Iterator<Item = BaseChain> + '_ {
    names
        .lines()
        .filter_map(|n| Table::from_name(n.trim()))
        .flat_map(move |table| {
            table.iptables_hooks().iter().map(move |&hook| BaseChain {
                family,
                hook,
                priority: table.priority(hook),
            })
        })
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

    /// Readers opened inside the lab's namespaces and asked from this
    /// thread see each its own namespace's firewall, as it changes.
    #[test]
    fn readers_follow_their_namespace_from_outside() {
        let p = xtask::lab::Pair::new(1500).unwrap();
        let open = |ns: &str| {
            let ns = crate::sys::netns::resolve(&[ns.to_string()]).unwrap();
            crate::sys::netns::run_in(&ns[0].path, ChainReader::open)
                .unwrap()
                .unwrap()
        };
        let (mut a, mut b) = (open(&p.a.ns), open(&p.b.ns));
        assert!(a.base_chains().unwrap().is_empty());
        xtask::lab::iptables(
            &p.a.ns,
            &["-A", "INPUT", "-p", "udp", "--dport", "1", "-j", "DROP"],
        )
        .unwrap();
        let input = |c: &BaseChain| c.hook == Hook::Input && c.priority == 0;
        let chains = a.base_chains().unwrap();
        assert!(
            chains.iter().any(|c| input(c) && c.sees(IpFamily::Ipv4)),
            "{chains:?}"
        );
        assert!(b.base_chains().unwrap().is_empty());

        // iptables-legacy: its table list under /proc, which its module
        // (loaded now if it was not) fills.
        xtask::cmd::in_ns(
            &p.b.ns,
            "iptables-legacy",
            &[
                "-t",
                "mangle",
                "-A",
                "PREROUTING",
                "-p",
                "udp",
                "-j",
                "ACCEPT",
            ],
        )
        .unwrap();
        if b.stale() {
            b = open(&p.b.ns);
        }
        let chains = b.base_chains().unwrap();
        let mangle = BaseChain {
            family: NFPROTO_IPV4,
            hook: Hook::Prerouting,
            priority: Table::Mangle.priority(Hook::Prerouting),
        };
        assert!(chains.contains(&mangle), "{chains:?}");
        assert!(!a.base_chains().unwrap().contains(&mangle));
    }
}
