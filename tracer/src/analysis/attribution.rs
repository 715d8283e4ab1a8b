//! Which rule dropped a flow, from rule counters (passive, always on): the
//! DROP/REJECT rules whose counters moved are tied to the flows the observers
//! saw dropped at the same hook, family and table in the same interval.
//!
//! Counters say how many packets a rule dropped, not whose: when several
//! rules and flows moved together, a flow gets a rule only if exactly one
//! rule dropped exactly as many packets as it lost. `--explain` is exact.

use std::collections::HashMap;

use crate::{
    model::{Hook, IpFamily, Table},
    output::VerdictRow,
    rules::{self, Rule, Source, Verdict, moved},
    sys::netns::{self, Netns},
};

/// The table whose observers see a rule's drops: its iptables table, or
/// for nftables the table whose priority its chain has.
fn band(rule: &Rule) -> Option<Table> {
    match rule.source {
        Source::Iptables | Source::IptablesLegacy => Table::from_name(&rule.table),
        // The observers bracket these priorities exactly (priority - 1 and + 1).
        Source::Nft => Table::at_priority(rule.priority?, rule.hook?),
    }
}

/// Gives rows with drops the rule that dropped them, where `moved` (rules
/// whose counters moved, with by how much) allows telling. All rows are of
/// one namespace and one interval.
pub fn attribute(rows: &mut [&mut VerdictRow], moved: &[(Rule, u64)]) {
    let dropping: Vec<&(Rule, u64)> = moved
        .iter()
        .filter(|(r, _)| matches!(r.verdict, Verdict::Drop | Verdict::Reject))
        .collect();
    // Group the rows by where they were dropped.
    let mut groups: HashMap<(IpFamily, Hook, Table), Vec<usize>> = HashMap::new();
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
            .filter(|(r, _)| {
                r.family.sees(family) && r.hook == Some(hook) && band(r) == Some(table)
            })
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

/// Rule counters of every traced namespace, and the rule each dropped flow
/// was last tied to (for the run's totals).
/// A verdict row's identity: namespace, family, hook, table, device, flow.
type RowKey = (
    String,
    IpFamily,
    Hook,
    Table,
    Option<String>,
    tracer_ebpf::FlowId,
);

pub struct Attributor {
    namespaces: Vec<(Netns, Vec<Rule>)>,
    tied: HashMap<RowKey, String>,
}

/// The rules of namespace `ns`, with their counters.
fn snapshot(ns: &Netns) -> anyhow::Result<Vec<Rule>> {
    netns::run_in(&ns.path, rules::snapshot)?
}

impl Attributor {
    /// Takes a first snapshot of each namespace's rules, and says once which
    /// rule listing tools are missing.
    pub fn new(namespaces: &[Netns]) -> Self {
        let mut told = Vec::new();
        let namespaces = namespaces
            .iter()
            .map(|ns| {
                let rules = match netns::run_in(&ns.path, rules::snapshot_report) {
                    Ok(Ok(report)) => {
                        for u in report.unavailable {
                            if !told.contains(&u.tool) {
                                eprintln!(
                                    "tracer: rules from {} unavailable ({}); verdicts from them \
                                     get no rule text",
                                    u.tool, u.reason
                                );
                                told.push(u.tool);
                            }
                        }
                        report.rules
                    }
                    _ => Vec::new(),
                };
                (ns.clone(), rules)
            })
            .collect();
        Attributor {
            namespaces,
            tied: HashMap::new(),
        }
    }

    /// Ties this interval's dropped rows to rules. Namespaces are snapshotted
    /// again only when some of their rows dropped packets.
    pub fn interval(&mut self, rows: &mut [VerdictRow]) {
        for (ns, baseline) in &mut self.namespaces {
            let mut mine: Vec<&mut VerdictRow> = rows
                .iter_mut()
                .filter(|r| r.netns == ns.name && r.counts.dropped() > 0)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let Ok(now) = snapshot(ns) else {
                continue;
            };
            let moved = moved(baseline, &now);
            attribute(&mut mine, &moved);
            *baseline = now;
            for r in mine {
                if let Some(rule) = &r.rule {
                    self.tied.insert(key(r), rule.clone());
                }
            }
        }
    }

    /// Fills in the run's totals with the rules tied in the intervals.
    pub fn totals(&self, rows: &mut [VerdictRow]) {
        for r in rows.iter_mut().filter(|r| r.counts.dropped() > 0) {
            if let Some(rule) = self.tied.get(&key(r)) {
                r.rule = Some(rule.clone());
            }
        }
    }
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
}
