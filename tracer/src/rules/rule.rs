//! A netfilter rule as tracer knows it, and what two snapshots of a
//! namespace's rules say: which rules dropped packets in between, and which
//! rule a trace event names.

use std::collections::HashMap;

use crate::model::{Hook, IpFamily};

/// The netfilter family of a table, as nftables names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Ipv4,
    Ipv6,
    Inet,
    Bridge,
    Arp,
    Netdev,
}

impl Family {
    /// nft's name: `ip`, `ip6`, `inet`, `bridge`, `arp`, `netdev`.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ipv4 => "ip",
            Family::Ipv6 => "ip6",
            Family::Inet => "inet",
            Family::Bridge => "bridge",
            Family::Arp => "arp",
            Family::Netdev => "netdev",
        }
    }

    pub fn from_nft(name: &str) -> Option<Family> {
        Some(match name {
            "ip" => Family::Ipv4,
            "ip6" => Family::Ipv6,
            "inet" => Family::Inet,
            "bridge" => Family::Bridge,
            "arp" => Family::Arp,
            "netdev" => Family::Netdev,
            _ => return None,
        })
    }

    /// From an `NFPROTO_*` number (the family of a table in netlink messages).
    /// A table of this family sees packets of `family`.
    pub fn sees(self, family: IpFamily) -> bool {
        matches!(
            (self, family),
            (Family::Inet, _) | (Family::Ipv4, IpFamily::Ipv4) | (Family::Ipv6, IpFamily::Ipv6)
        )
    }

    pub fn from_nfproto(p: u8) -> Option<Family> {
        Some(match p {
            1 => Family::Inet,
            2 => Family::Ipv4,
            3 => Family::Arp,
            5 => Family::Netdev,
            7 => Family::Bridge,
            10 => Family::Ipv6,
            _ => return None,
        })
    }
}

/// What a rule does with the packets it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Drop,
    /// Drops and answers with an ICMP error or TCP reset.
    Reject,
    Accept,
    /// Anything else: jump, goto, return, continue, queue, NAT, marks, logs, verdict maps...
    Other,
}

/// Which tool the rule was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// `iptables`/`ip6tables` with the nf_tables backend (Debian's default).
    /// Its rules are nftables rules: trace events show them, with a handle.
    Iptables,
    /// `iptables-legacy`/`ip6tables-legacy`. nftables tracing never sees these.
    IptablesLegacy,
    /// A native nftables rule.
    Nft,
}

/// One rule and its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub source: Source,
    pub family: Family,
    pub table: String,
    pub chain: String,
    /// The hook of the chain if it is a base chain; `None` for chains that are
    /// only jumped to (iptables user chains, nft regular chains).
    pub hook: Option<Hook>,
    /// The priority of the base chain (named priorities resolved to numbers).
    pub priority: Option<i32>,
    pub verdict: Verdict,
    pub packets: u64,
    pub bytes: u64,
    /// The rule has a counter. Always for iptables; for nft only rules with a
    /// `counter` statement: the counters of others stay 0.
    pub counted: bool,
    /// The rule as its user wrote it: `-A INPUT -p udp -m udp --dport 4789 -j DROP`
    /// as iptables-save prints it, or nft's rule text without the `# handle` comment.
    pub text: String,
    /// The nftables rule handle (nft rules and iptables-nft rules), as trace events carry it.
    pub handle: Option<u64>,
    /// The chain it jumps or goes to (`-j DOCKER-USER`, `jump x`), if any:
    /// a name that may or may not be a chain of its table.
    pub target: Option<String>,
    /// For a rule of a chain that is only jumped to: the base chains, as
    /// (hook, priority), that reach it through jumps (see [`reach`]).
    pub via: Vec<(Hook, Option<i32>)>,
}

impl Rule {
    /// Where the rule sees packets: its own chain's hook and priority, or
    /// those of the base chains that jump to its chain.
    pub fn places(&self) -> Vec<(Hook, Option<i32>)> {
        match self.hook {
            Some(h) => vec![(h, self.priority)],
            None => self.via.clone(),
        }
    }
}

/// Fills in [`Rule::via`]: which base chains reach each user chain through
/// jumps and gotos, within one table (Docker's `DOCKER-USER`, `DOCKER` and
/// `DOCKER-ISOLATION-STAGE-*` are reached from `FORWARD`).
pub fn reach(rules: &mut [Rule]) {
    type Table = (Source, Family, String);
    type Place = (Hook, Option<i32>);
    let mut base: HashMap<(Table, String), Place> = HashMap::new();
    let mut edges: HashMap<(Table, String), Vec<String>> = HashMap::new();
    for r in rules.iter() {
        let t = (r.source, r.family, r.table.clone());
        if let Some(h) = r.hook {
            base.insert((t.clone(), r.chain.clone()), (h, r.priority));
        }
        if let Some(target) = &r.target {
            edges
                .entry((t, r.chain.clone()))
                .or_default()
                .push(target.clone());
        }
    }
    let mut reached: HashMap<(Table, String), Vec<Place>> = HashMap::new();
    for ((t, chain), place) in &base {
        let mut todo = vec![chain.clone()];
        let mut seen = vec![chain.clone()];
        while let Some(c) = todo.pop() {
            for next in edges.get(&(t.clone(), c)).into_iter().flatten() {
                if seen.contains(next) || base.contains_key(&(t.clone(), next.clone())) {
                    continue;
                }
                seen.push(next.clone());
                let places = reached.entry((t.clone(), next.clone())).or_default();
                if !places.contains(place) {
                    places.push(*place);
                }
                todo.push(next.clone());
            }
        }
    }
    for r in rules.iter_mut().filter(|r| r.hook.is_none()) {
        let key = ((r.source, r.family, r.table.clone()), r.chain.clone());
        r.via = reached.get(&key).cloned().unwrap_or_default();
        r.via.sort();
    }
}

/// Finds the rule a trace event names: nft rules and iptables-nft rules by
/// their nftables handle (iptables-legacy rules never appear in traces).
pub fn lookup<'a>(
    rules: &'a [Rule],
    family: Family,
    table: &str,
    chain: &str,
    handle: u64,
) -> Option<&'a Rule> {
    rules.iter().find(|r| {
        r.source != Source::IptablesLegacy
            && r.family == family
            && r.table == table
            && r.chain == chain
            && r.handle == Some(handle)
    })
}

/// DROP and REJECT rules whose packet counter moved from `before` to `after`,
/// with how many packets they counted in between.
///
/// Rules are matched by source, family, table and chain, then by nftables
/// handle for nft rules and by text for iptables rules (the n-th rule with
/// that text in the chain, so inserting rules above does not confuse it, and
/// a rule reloaded by iptables-restore with a new handle is still the same).
/// A rule that is new in `after`, or whose counter went down (it was
/// recreated or zeroed), counts all of its packets in `after`.
pub fn moved(before: &[Rule], after: &[Rule]) -> Vec<(Rule, u64)> {
    let old: HashMap<Identity, u64> = identities(before)
        .into_iter()
        .map(|(id, r)| (id, r.packets))
        .collect();
    identities(after)
        .into_iter()
        .filter(|(_, r)| r.counted && matches!(r.verdict, Verdict::Drop | Verdict::Reject))
        .filter_map(|(id, r)| {
            let delta = match old.get(&id) {
                Some(&p) if p <= r.packets => r.packets - p,
                _ => r.packets,
            };
            (delta > 0).then(|| (r.clone(), delta))
        })
        .collect()
}

/// What makes a rule the same rule in two snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Identity {
    source: Source,
    family: Family,
    table: String,
    chain: String,
    handle: Option<u64>,
    text: Option<String>,
    /// The n-th rule with this text in the chain (iptables).
    nth: usize,
}

pub(super) fn identities(rules: &[Rule]) -> Vec<(Identity, &Rule)> {
    let mut seen: HashMap<(Source, Family, &str, &str, &str), usize> = HashMap::new();
    rules
        .iter()
        .map(|r| {
            let by_text = r.source != Source::Nft || r.handle.is_none();
            let nth = if by_text {
                let n = seen
                    .entry((r.source, r.family, &r.table, &r.chain, &r.text))
                    .or_default();
                *n += 1;
                *n
            } else {
                0
            };
            let id = Identity {
                source: r.source,
                family: r.family,
                table: r.table.clone(),
                chain: r.chain.clone(),
                handle: if by_text { None } else { r.handle },
                text: by_text.then(|| r.text.clone()),
                nth,
            };
            (id, r)
        })
        .collect()
}
