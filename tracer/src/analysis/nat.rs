//! Flows after a destination NAT (a published port) tied to what their
//! client addressed: rows after the translation carry `orig`, the address
//! and port before it, from the connection tracking of the traced
//! namespaces.

use std::net::{IpAddr, SocketAddr};

// Every row's conversation is looked up every interval: FxHash, as for the
// counters' totals (the keys come from the kernel, not an attacker).
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use tracer_ebpf::FlowId;

use crate::{
    analysis::paths,
    output::Endpoints,
    sys::{
        conntrack::{self, Tuple},
        netns::{self, Netns},
    },
};

/// Translated conversations (both directions) -> the address the client used.
pub type Ties = HashMap<Tuple, SocketAddr>;

/// The connection tracking of the traced namespaces, read when a report
/// has a conversation it has not looked up yet.
pub struct Nat {
    namespaces: Vec<Netns>,
    /// Every tie seen in the run: the run's totals keep those whose entries expired.
    ties: Ties,
    /// Conversations looked up in a dump: a dump walks the whole conntrack
    /// table (every bucket, 10 ms a namespace on a host with 262,144), so it
    /// is made only for new ones.
    looked_up: HashSet<Tuple>,
}

impl Nat {
    pub fn new(namespaces: &[Netns]) -> Self {
        Nat {
            namespaces: namespaces.to_vec(),
            ties: HashMap::default(),
            looked_up: HashSet::default(),
        }
    }

    pub fn sync(&mut self, namespaces: &[Netns]) {
        self.namespaces = namespaces.to_vec();
    }

    /// The ties of the conversations of `flows`, reading the DNAT'd
    /// connections of every namespace if one of them is new.
    pub fn refresh<'a>(&mut self, flows: impl Iterator<Item = &'a FlowId>) -> &Ties {
        let new: Vec<Tuple> = flows
            .filter_map(key)
            .filter(|k| !self.looked_up.contains(k))
            .collect();
        if new.is_empty() {
            return &self.ties;
        }
        self.looked_up.extend(new);
        for ns in &self.namespaces {
            // A namespace without connection tracking, or gone: nothing to tie.
            let Ok(Ok(entries)) = netns::run_in(&ns.path, conntrack::dnat) else {
                continue;
            };
            for d in entries {
                let public = SocketAddr::new(d.original.dst, d.original.dport);
                self.ties.insert(d.translated, public);
                self.ties.insert(d.translated.reversed(), public);
            }
        }
        &self.ties
    }
}

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
