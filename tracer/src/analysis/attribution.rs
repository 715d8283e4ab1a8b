//! Which rule dropped a flow, from rule counters (passive, always on): the
//! DROP/REJECT rules whose counters moved are tied to the flows the observers
//! saw dropped at the same hook, family and table.
//!
//! Counters say how many packets a rule dropped, not whose: when several
//! rules and flows moved together, a flow gets a rule only if exactly one
//! rule dropped exactly as many packets as it lost. `--explain` is exact.
//!
//! The rule counters are read a moment after the observers' maps, so drops
//! that straddle a report are split differently between the two (9 + 1
//! against 10 + 0). So each interval is matched alone, then together with
//! the one before; and the run's totals are matched over the whole run.

// Per verdict row, every interval: FxHash (kernel-made keys).
use rustc_hash::FxHashMap as HashMap;

use crate::{
    model::{Hook, IpFamily, Table},
    output::VerdictRow,
    rules::{self, Rule, Source, Verdict, moved},
    sys::netns::{self, Netns},
};

/// The table whose observers see a rule's drops at a place (hook,
/// priority): its iptables table, or for nftables the table whose priority
/// the chain (or the base chain that jumps to it) has.
fn band(rule: &Rule, hook: Hook, priority: Option<i32>) -> Option<Table> {
    match rule.source {
        Source::Iptables | Source::IptablesLegacy => Table::from_name(&rule.table),
        // The observers bracket these priorities closely (priority - 1 and + 1).
        Source::Nft => Table::at_priority(priority?, hook),
    }
}

/// Whether `rule` can drop packets at (`family`, `hook`, `table`): in a base
/// chain there, or in a chain such a base chain jumps to.
fn sees(rule: &Rule, family: IpFamily, hook: Hook, table: Table) -> bool {
    rule.family.sees(family)
        && rule
            .places()
            .into_iter()
            .any(|(h, p)| h == hook && band(rule, h, p) == Some(table))
}

/// Gives rows with drops the rule that dropped them, where `moved` (rules
/// whose counters moved, with by how much) allows telling. All rows are of
/// one namespace and one stretch of time.
pub fn attribute(rows: &mut [&mut VerdictRow], moved: &[(Rule, u64)]) {
    let dropping: Vec<&(Rule, u64)> = moved
        .iter()
        .filter(|(r, _)| matches!(r.verdict, Verdict::Drop | Verdict::Reject))
        .collect();
    // Group the rows by where they were dropped.
    let mut groups: HashMap<(IpFamily, Hook, Table), Vec<usize>> = HashMap::default();
    for (i, row) in rows.iter().enumerate() {
        if row.counts.dropped() > 0 {
            groups
                .entry((row.family, row.hook, row.table))
                .or_default()
                .push(i);
        }
    }
    for ((family, hook, table), idx) in groups {
        let candidates: Vec<&(Rule, u64)> = dropping
            .iter()
            .copied()
            .filter(|(r, _)| sees(r, family, hook, table))
            .collect();
        // One rule dropped exactly what the group lost: it dropped them all.
        let lost: u64 = idx.iter().map(|&i| rows[i].counts.dropped()).sum();
        if let [(only, n)] = candidates.as_slice()
            && *n == lost
        {
            for &i in &idx {
                rows[i].rule = Some(only.text.clone());
            }
            continue;
        }
        for &i in &idx {
            let lost = rows[i].counts.dropped();
            let same: Vec<&&(Rule, u64)> = candidates.iter().filter(|(_, n)| *n == lost).collect();
            let same_count = idx
                .iter()
                .filter(|&&j| rows[j].counts.dropped() == lost)
                .count();
            if let ([(rule, _)], 1) = (same.as_slice(), same_count) {
                rows[i].rule = Some(rule.text.clone());
            }
        }
    }
}

/// A verdict row's identity: namespace, family, hook, table, device, flow.
type RowKey = (
    String,
    IpFamily,
    Hook,
    Table,
    Option<String>,
    tracer_ebpf::FlowId,
);

/// The rule snapshots of one namespace.
struct NsRules {
    ns: Netns,
    /// At start (or when the namespace came): for the run's totals.
    start: Vec<Rule>,
    /// At the end of the last stretch that had drops here.
    last: Vec<Rule>,
    /// The stretch before: its first snapshot and the rows it dropped.
    previous: Option<(Vec<Rule>, Vec<VerdictRow>)>,
}

/// Rule counters of every traced namespace, and the rule each dropped flow
/// was tied to (for the run's totals).
pub struct Attributor {
    namespaces: Vec<NsRules>,
    tied: HashMap<RowKey, String>,
    /// Rule listing tools said to be missing.
    told: Vec<&'static str>,
}

/// The rules of namespace `ns`, with their counters.
fn snapshot(ns: &Netns) -> anyhow::Result<Vec<Rule>> {
    netns::run_in(&ns.path, rules::snapshot)?
}

impl Attributor {
    /// Takes a first snapshot of each namespace's rules, and says once which
    /// rule listing tools are missing.
    pub fn new(namespaces: &[Netns]) -> Self {
        let mut a = Attributor {
            namespaces: Vec::new(),
            tied: HashMap::default(),
            told: Vec::new(),
        };
        a.sync(namespaces);
        a
    }

    /// Follows the traced namespaces: a first snapshot of new ones; those
    /// gone are forgotten (their rows keep the rules tied so far).
    pub fn sync(&mut self, namespaces: &[Netns]) {
        self.namespaces
            .retain(|n| namespaces.iter().any(|ns| ns.inode == n.ns.inode));
        for ns in namespaces {
            if let Some(known) = self.namespaces.iter_mut().find(|n| n.ns.inode == ns.inode) {
                known.ns = ns.clone();
                continue;
            }
            let rules = match netns::run_in(&ns.path, rules::snapshot_report) {
                Ok(Ok(report)) => {
                    for u in report.unavailable {
                        if !self.told.contains(&u.tool) {
                            eprintln!(
                                "tracer: rules from {} unavailable ({}); verdicts from them \
                                 get no rule text",
                                u.tool, u.reason
                            );
                            self.told.push(u.tool);
                        }
                    }
                    report.rules
                }
                _ => Vec::new(),
            };
            self.namespaces.push(NsRules {
                ns: ns.clone(),
                start: rules.clone(),
                last: rules,
                previous: None,
            });
        }
    }

    /// Ties this interval's dropped rows to rules. Namespaces are snapshotted
    /// again only when some of their rows dropped packets.
    pub fn interval(&mut self, rows: &mut [VerdictRow]) {
        self.interval_with(rows, |ns| snapshot(ns).ok());
    }

    /// [`Attributor::interval`] with snapshots from `snap`.
    fn interval_with(
        &mut self,
        rows: &mut [VerdictRow],
        mut snap: impl FnMut(&Netns) -> Option<Vec<Rule>>,
    ) {
        for n in &mut self.namespaces {
            let mut mine: Vec<&mut VerdictRow> = rows
                .iter_mut()
                .filter(|r| r.netns == n.ns.name && r.counts.dropped() > 0)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let Some(now) = snap(&n.ns) else {
                continue;
            };
            attribute(&mut mine, &moved(&n.last, &now));
            // Unexplained alone: this stretch and the one before, together.
            if mine.iter().any(|r| r.rule.is_none())
                && let Some((before, earlier)) = &n.previous
            {
                let mut both = merged(earlier, &mine);
                attribute(
                    &mut both.iter_mut().collect::<Vec<_>>(),
                    &moved(before, &now),
                );
                for r in both.iter().filter(|r| r.rule.is_some()) {
                    if let Some(m) = mine.iter_mut().find(|m| key(m) == key(r))
                        && m.rule.is_none()
                    {
                        m.rule.clone_from(&r.rule);
                    }
                    if let Some(rule) = &r.rule {
                        self.tied.entry(key(r)).or_insert_with(|| rule.clone());
                    }
                }
            }
            let stretch: Vec<VerdictRow> = mine.iter().map(|r| (**r).clone()).collect();
            n.previous = Some((std::mem::replace(&mut n.last, now), stretch));
            for r in mine {
                if let Some(rule) = &r.rule {
                    self.tied.insert(key(r), rule.clone());
                }
            }
        }
    }

    /// Ties the run's dropped rows to rules over the whole run; a row the
    /// run's counters cannot tell keeps the rule an interval tied it to.
    pub fn totals(&self, rows: &mut [VerdictRow]) {
        self.totals_with(rows, |ns| snapshot(ns).ok());
    }

    /// [`Attributor::totals`] with snapshots from `snap`.
    fn totals_with(
        &self,
        rows: &mut [VerdictRow],
        mut snap: impl FnMut(&Netns) -> Option<Vec<Rule>>,
    ) {
        for n in &self.namespaces {
            let mut mine: Vec<&mut VerdictRow> = rows
                .iter_mut()
                .filter(|r| r.netns == n.ns.name && r.counts.dropped() > 0)
                .collect();
            if mine.is_empty() {
                continue;
            }
            if let Some(now) = snap(&n.ns) {
                attribute(&mut mine, &moved(&n.start, &now));
            }
        }
        for r in rows
            .iter_mut()
            .filter(|r| r.counts.dropped() > 0 && r.rule.is_none())
        {
            if let Some(rule) = self.tied.get(&key(r)) {
                r.rule = Some(rule.clone());
            }
        }
    }
}

/// `earlier` and `later` added up row by row (by identity), without rules.
fn merged(earlier: &[VerdictRow], later: &[&mut VerdictRow]) -> Vec<VerdictRow> {
    let mut out: Vec<VerdictRow> = earlier.to_vec();
    for r in later {
        match out.iter_mut().find(|o| key(o) == key(r)) {
            Some(o) => {
                o.counts.entered += r.counts.entered;
                o.counts.left += r.counts.left;
                o.counts.unleft += r.counts.unleft;
            }
            None => out.push((**r).clone()),
        }
    }
    for o in &mut out {
        o.rule = None;
    }
    out
}

fn key(r: &VerdictRow) -> RowKey {
    (
        r.netns.clone(),
        r.family,
        r.hook,
        r.table,
        r.iface.clone(),
        r.id,
    )
}

#[cfg(test)]
mod tests {
    use tracer_ebpf::{FAMILY_IPV4, FlowId, TUPLE_PORTS, Tuple};

    use super::*;
    use crate::{collectors::verdicts::VerdictCounts, rules::Family};

    fn row(dport: u16, hook: Hook, dropped: u64) -> VerdictRow {
        VerdictRow {
            netns: "b".into(),
            iface: Some("v0".into()),
            family: IpFamily::Ipv4,
            hook,
            table: Table::Filter,
            id: FlowId {
                outer: Tuple {
                    family: FAMILY_IPV4,
                    proto: 17,
                    dport,
                    flags: TUPLE_PORTS,
                    ..Tuple::default()
                },
                ..FlowId::default()
            },
            counts: VerdictCounts {
                entered: dropped + 1,
                left: 1,
                unleft: 0,
            },
            rule: None,
        }
    }

    fn rule(text: &str, hook: Hook, family: Family, source: Source, priority: Option<i32>) -> Rule {
        Rule {
            source,
            family,
            table: if source == Source::Nft {
                "t".into()
            } else {
                "filter".into()
            },
            chain: "INPUT".into(),
            hook: Some(hook),
            priority,
            verdict: Verdict::Drop,
            packets: 0,
            bytes: 0,
            counted: true,
            text: text.into(),
            handle: None,
            target: None,
            via: Vec::new(),
        }
    }

    fn ipt(text: &str, hook: Hook) -> Rule {
        rule(text, hook, Family::Ipv4, Source::Iptables, None)
    }

    fn attributed(rows: &mut [VerdictRow], moved: &[(Rule, u64)]) -> Vec<Option<String>> {
        let mut refs: Vec<&mut VerdictRow> = rows.iter_mut().collect();
        attribute(&mut refs, moved);
        rows.iter().map(|r| r.rule.clone()).collect()
    }

    #[test]
    fn one_rule_moved_takes_every_dropped_flow_of_its_hook() {
        let mut rows = [
            row(53, Hook::Input, 5),
            row(54, Hook::Input, 2),
            row(55, Hook::Forward, 3),
            row(56, Hook::Input, 0),
        ];
        let moved = [(ipt("-A INPUT -p udp -j DROP", Hook::Input), 7)];
        assert_eq!(
            attributed(&mut rows, &moved),
            [
                Some("-A INPUT -p udp -j DROP".into()),
                Some("-A INPUT -p udp -j DROP".into()),
                None,
                None
            ]
        );
    }

    #[test]
    fn a_rule_that_dropped_less_than_the_group_lost_is_not_given_to_all() {
        // Something else (a chain policy, another band) dropped the rest.
        let mut rows = [row(53, Hook::Input, 5), row(54, Hook::Input, 2)];
        let moved = [(ipt("-A INPUT --dport 54 -j DROP", Hook::Input), 2)];
        assert_eq!(
            attributed(&mut rows, &moved),
            [None, Some("-A INPUT --dport 54 -j DROP".into())]
        );
    }

    #[test]
    fn several_rules_are_told_apart_by_their_counts() {
        let mut rows = [row(53, Hook::Input, 5), row(54, Hook::Input, 10)];
        let moved = [
            (ipt("-A INPUT --dport 54 -j DROP", Hook::Input), 10),
            (ipt("-A INPUT --dport 53 -j DROP", Hook::Input), 5),
        ];
        assert_eq!(
            attributed(&mut rows, &moved),
            [
                Some("-A INPUT --dport 53 -j DROP".into()),
                Some("-A INPUT --dport 54 -j DROP".into())
            ]
        );
    }

    #[test]
    fn equal_counts_are_not_guessed() {
        let mut rows = [row(53, Hook::Input, 5), row(54, Hook::Input, 5)];
        let moved = [
            (ipt("-A INPUT --dport 53 -j DROP", Hook::Input), 5),
            (ipt("-A INPUT --dport 54 -j DROP", Hook::Input), 5),
        ];
        assert_eq!(attributed(&mut rows, &moved), [None, None]);
    }

    #[test]
    fn nft_rules_by_priority_and_inet_family() {
        let mut rows = [row(53, Hook::Input, 4)];
        let other_band = rule(
            "udp dport 53 drop",
            Hook::Input,
            Family::Inet,
            Source::Nft,
            Some(10),
        );
        let filter = rule(
            "udp dport 53 counter drop",
            Hook::Input,
            Family::Inet,
            Source::Nft,
            Some(0),
        );
        assert_eq!(attributed(&mut rows, &[(other_band.clone(), 4)]), [None]);
        let mut rows = [row(53, Hook::Input, 4)];
        assert_eq!(
            attributed(&mut rows, &[(other_band, 4), (filter, 4)]),
            [Some("udp dport 53 counter drop".into())]
        );
    }

    #[test]
    fn accept_rules_and_other_families_do_not_count() {
        let mut rows = [row(53, Hook::Input, 4)];
        let mut accept = ipt("-A INPUT -j ACCEPT", Hook::Input);
        accept.verdict = Verdict::Accept;
        let v6 = rule(
            "-A INPUT -j DROP",
            Hook::Input,
            Family::Ipv6,
            Source::Iptables,
            None,
        );
        assert_eq!(attributed(&mut rows, &[(accept, 4), (v6, 4)]), [None]);
    }

    fn counted(mut r: Rule, packets: u64) -> Rule {
        r.packets = packets;
        r
    }

    /// Docker's chains: a DROP in DOCKER-USER, reached from FORWARD.
    #[test]
    fn a_rule_in_a_user_chain_is_seen_at_the_hook_of_the_base_chain_that_jumps_to_it() {
        let mut rules = vec![
            ipt("-A FORWARD -j DOCKER-USER", Hook::Forward),
            ipt("-A FORWARD -j DOCKER-ISOLATION-STAGE-1", Hook::Forward),
            ipt(
                "-A DOCKER-ISOLATION-STAGE-1 -j DOCKER-ISOLATION-STAGE-2",
                Hook::Forward,
            ),
            ipt("-A DOCKER-USER -p udp -j DROP", Hook::Forward),
            ipt(
                "-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP",
                Hook::Forward,
            ),
            ipt("-A LONELY -j DROP", Hook::Forward),
        ];
        for r in &mut rules {
            r.target = r
                .text
                .split_whitespace()
                .skip_while(|w| *w != "-j")
                .nth(1)
                .map(String::from);
            r.chain = r.text.split_whitespace().nth(1).unwrap().to_string();
            if r.chain != "FORWARD" {
                r.hook = None;
            }
        }
        crate::rules::reach(&mut rules);
        assert_eq!(rules[3].via, [(Hook::Forward, None)]);
        assert_eq!(rules[4].via, [(Hook::Forward, None)]);
        assert_eq!(rules[5].via, []);
        let mut rows = [row(53, Hook::Forward, 10)];
        assert_eq!(
            attributed(&mut rows, &[(rules[3].clone(), 10), (rules[5].clone(), 10)]),
            [Some("-A DOCKER-USER -p udp -j DROP".into())]
        );
    }

    fn ns(name: &str) -> Netns {
        Netns {
            name: name.into(),
            path: "/nonexistent".into(),
            inode: 7,
        }
    }

    /// 10 drops counted 9 + 1 by the observers while the rule's counter
    /// was read at 10 after the first interval.
    #[test]
    fn drops_straddling_an_interval_are_tied_over_both_and_over_the_run() {
        let drop = ipt("-A INPUT -p udp --dport 53 -j DROP", Hook::Input);
        let mut a = Attributor {
            namespaces: vec![NsRules {
                ns: ns("b"),
                start: vec![counted(drop.clone(), 0)],
                last: vec![counted(drop.clone(), 0)],
                previous: None,
            }],
            tied: HashMap::default(),
            told: Vec::new(),
        };
        let at = |n| {
            let d = drop.clone();
            move |_: &Netns| Some(vec![counted(d.clone(), n)])
        };
        let mut first = [row(53, Hook::Input, 9)];
        a.interval_with(&mut first, at(10));
        assert_eq!(first[0].rule, None);
        let mut second = [row(53, Hook::Input, 1)];
        a.interval_with(&mut second, at(10));
        let text = Some("-A INPUT -p udp --dport 53 -j DROP".to_string());
        assert_eq!(second[0].rule, text);
        let mut total = [row(53, Hook::Input, 10)];
        a.totals_with(&mut total, at(10));
        assert_eq!(total[0].rule, text);
        // The run's counters tell even when no interval could.
        a.tied.clear();
        let mut total = [row(53, Hook::Input, 10)];
        a.totals_with(&mut total, at(10));
        assert_eq!(total[0].rule, text);
    }
}
