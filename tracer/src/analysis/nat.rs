//! Flows after a destination NAT (a published port) tied to what their
//! client addressed: rows after the translation carry `orig`, the address
//! and port before it, from the connection tracking of the traced
//! namespaces.

use std::{
    net::{IpAddr, SocketAddr},
    rc::Rc,
};

// Every row's conversation is checked every interval: FxHash, as for the
// counters' totals (the keys come from the kernel, not an attacker).
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use tracer_ebpf::{
    FlowId,
    parse::{IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    analysis::paths,
    output::Endpoints,
    sys::{
        conntrack::{self, Tuple},
        netlink::Nfnl,
        netns::{self, Netns},
    },
};

/// Translated conversations (both directions) -> the address the client used.
pub type Ties = HashMap<Tuple, SocketAddr>;

/// The connection tracking of the traced namespaces, read when a report
/// has a conversation it has not looked up yet.
pub struct Nat {
    namespaces: Vec<Netns>,
    /// A netfilter socket in each namespace (by inode), opened on first use so
    /// that asking again needs no thread in the namespace; `None`: it has none
    /// (gone, or no netlink).
    sockets: HashMap<u64, Option<Nfnl>>,
    /// Every tie seen in the run: the run's totals keep those whose entries
    /// expired. Shared with the reports, which outlive no more than one
    /// interval: copied only if one still holds them when a tie is added.
    ties: Rc<Ties>,
    /// Conversations already looked up.
    looked_up: HashSet<Tuple>,
}

/// Above this many new conversations in a report, one dump per namespace
/// is cheaper than a lookup per conversation, direction and namespace. A
/// dump walks the kernel's whole conntrack table, every namespace's buckets
/// (262,144 here: 5-10 ms); a lookup is one hash probe and a round trip
/// (microseconds).
const LOOKUPS_UP_TO: usize = 256;

impl Nat {
    pub fn new(namespaces: &[Netns]) -> Self {
        Nat {
            namespaces: namespaces.to_vec(),
            sockets: HashMap::default(),
            ties: Rc::default(),
            looked_up: HashSet::default(),
        }
    }

    /// Follows the traced namespaces; a socket held in one that left would
    /// keep it alive.
    pub fn sync(&mut self, namespaces: &[Netns]) {
        self.namespaces = namespaces.to_vec();
        self.sockets
            .retain(|inode, _| namespaces.iter().any(|n| n.inode == *inode));
    }

    /// The ties of the conversations of `flows`, looking up in every
    /// namespace's connection tracking those not looked up before.
    pub fn refresh<'a>(&mut self, flows: impl Iterator<Item = &'a FlowId>) -> Rc<Ties> {
        let mut new: Vec<Tuple> = Vec::new();
        for k in flows.filter_map(key).filter(could_be_translated) {
            if self.looked_up.insert(k) {
                new.push(k);
            }
        }
        if new.is_empty() {
            return Rc::clone(&self.ties);
        }
        // Ports name a connection to the kernel; other protocols need their
        // own fields, which a row does not keep: those are found by a dump.
        let dump = new.len() > LOOKUPS_UP_TO || new.iter().any(|t| !has_ports(t.proto));
        for ns in &self.namespaces {
            let socket = self
                .sockets
                .entry(ns.inode)
                .or_insert_with(|| netns::run_in(&ns.path, Nfnl::open).ok()?.ok());
            // A namespace without connection tracking, or gone, or that
            // tracks nothing now (most containers'): nothing to tie, and
            // its count is one read where a dump walks the whole table.
            let Some(nl) = socket else { continue };
            if conntrack::count(nl).is_ok_and(|n| n == 0) {
                continue;
            }
            let found = if dump {
                conntrack::dnat(nl).unwrap_or_default()
            } else {
                // The row's direction and the reverse: the kernel finds a
                // connection by either of its tuples, and a row after the
                // translation (to the container) is the reverse of the reply.
                new.iter()
                    .flat_map(|t| [*t, t.reversed()])
                    .filter_map(|t| conntrack::dnat_of(nl, &t).ok().flatten())
                    .collect()
            };
            let ties = Rc::make_mut(&mut self.ties);
            for d in found {
                let public = SocketAddr::new(d.original.dst, d.original.dport);
                ties.insert(d.translated, public);
                ties.insert(d.translated.reversed(), public);
            }
        }
        Rc::clone(&self.ties)
    }
}

/// Protocols whose conntrack tuple is addresses and ports.
fn has_ports(proto: u8) -> bool {
    matches!(proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP)
}

/// Whether a conversation is worth looking up: not multicast, broadcast or
/// link-local traffic, which no published port carries, and not ICMPv6. Its
/// neighbour discovery between global addresses recurs every few tens of
/// seconds per neighbour, and each would cost a dump of every namespace's
/// table (ICMP has no ports); a translated ping6 is not worth that.
fn could_be_translated(t: &Tuple) -> bool {
    let local = |a: IpAddr| match a {
        IpAddr::V4(a) => {
            a.is_multicast() || a.is_broadcast() || a.is_unspecified() || a.is_link_local()
        }
        IpAddr::V6(a) => a.is_multicast() || a.is_unspecified() || a.is_unicast_link_local(),
    };
    t.proto != IPPROTO_ICMPV6 && !local(t.src) && !local(t.dst)
}

const IPPROTO_SCTP: u8 = 132;

/// The conversation of a row (the container's packet), as conntrack keys it.
pub fn key(id: &FlowId) -> Option<Tuple> {
    let t = paths::conversation(id);
    let e = Endpoints::of(&t);
    let (src, dst): (IpAddr, IpAddr) = (e.src?, e.dst?);
    Some(Tuple {
        proto: t.proto,
        src,
        sport: e.sport.unwrap_or(0),
        dst,
        dport: e.dport.unwrap_or(0),
    })
}

/// What the client addressed, for a row of a translated conversation.
pub fn orig(ties: &Ties, id: &FlowId) -> Option<SocketAddr> {
    if ties.is_empty() {
        return None;
    }
    ties.get(&key(id)?).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(proto: u8, src: &str, dst: &str) -> Tuple {
        Tuple {
            proto,
            src: src.parse().unwrap(),
            sport: 1,
            dst: dst.parse().unwrap(),
            dport: 2,
        }
    }

    #[test]
    fn only_conversations_a_published_port_could_carry_are_looked_up() {
        for yes in [
            t(IPPROTO_UDP, "10.0.0.1", "10.0.0.2"),
            t(IPPROTO_TCP, "fd00::1", "2001:db8::2"),
            t(1, "10.0.0.1", "10.0.0.2"),
        ] {
            assert!(could_be_translated(&yes), "{yes:?}");
        }
        for no in [
            t(IPPROTO_UDP, "10.0.0.1", "224.0.0.251"),
            t(IPPROTO_UDP, "0.0.0.0", "255.255.255.255"),
            t(IPPROTO_UDP, "169.254.1.1", "10.0.0.2"),
            t(IPPROTO_UDP, "fe80::1", "fd00::2"),
            t(IPPROTO_ICMPV6, "fd00::1", "fd00::2"),
        ] {
            assert!(!could_be_translated(&no), "{no:?}");
        }
        assert!(has_ports(IPPROTO_TCP) && has_ports(IPPROTO_SCTP) && !has_ports(1));
    }
}
