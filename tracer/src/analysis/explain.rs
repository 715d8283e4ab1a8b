//! `--explain FILTER`: exact rule attribution. nftables tracing is enabled,
//! in a table of tracer's own, for the packets matching FILTER; the kernel's
//! trace events say which table, chain and rule decided each packet.

use std::collections::HashMap;

use anyhow::{Context as _, Result};
use tracer_ebpf::{FlowId, MAX_VXLAN_PORTS, TUPLE_PORTS};

use crate::{
    output::{RuleRow, VerdictRow},
    rules::{
        self, Rule,
        trace::{self, TraceEvent, TraceReader, TraceTable, VerdictKey, Verdicts},
    },
    sys::netns::{self, Netns},
};

/// Removes trace tables left by tracer runs that were killed, in every
/// traced namespace. Never touches other tables.
pub fn remove_stale(namespaces: &[Netns]) {
    for ns in namespaces {
        // nft missing or unusable here: nothing tracer could have left.
        if let Ok(Ok(removed)) = netns::run_in(&ns.path, trace::remove_stale) {
            for t in removed {
                eprintln!(
                    "tracer: removed table inet {t} left in {} by a killed run",
                    ns.name
                );
            }
        }
    }
}

pub struct Explain {
    namespaces: Vec<Netns>,
    /// Held for their lifetime: dropping one deletes its table.
    _tables: Vec<TraceTable>,
    verdicts: Vec<Verdicts>,
    rules: Vec<Vec<Rule>>,
    totals: HashMap<(usize, VerdictKey), u64>,
}

impl Explain {
    /// Creates the trace table and opens a trace reader in every namespace;
    /// the readers are returned to be polled, events go to [`Explain::add`].
    pub fn start(
        namespaces: &[Netns],
        filter: &str,
        vxlan_ports: [u16; MAX_VXLAN_PORTS],
    ) -> Result<(Self, Vec<TraceReader>)> {
        let mut tables = Vec::new();
        let mut readers = Vec::new();
        let mut rules = Vec::new();
        for ns in namespaces {
            let (table, reader, now) = netns::run_in(&ns.path, || -> Result<_> {
                Ok((
                    TraceTable::create(filter)?,
                    TraceReader::open()?,
                    rules::snapshot()?,
                ))
            })?
            .with_context(|| format!("--explain in {}", ns.name))?;
            tables.push(table);
            readers.push(reader);
            rules.push(now);
        }
        Ok((
            Explain {
                namespaces: namespaces.to_vec(),
                _tables: tables,
                verdicts: namespaces
                    .iter()
                    .map(|_| Verdicts::new(vxlan_ports))
                    .collect(),
                rules,
                totals: HashMap::new(),
            },
            readers,
        ))
    }

    /// Events read from namespace `ns`'s trace reader.
    pub fn add(&mut self, ns: usize, events: &[TraceEvent]) {
        self.verdicts[ns].add(events);
    }

    /// The rule named by a trace event, looking at the rules again if it is new.
    fn rule(&mut self, ns: usize, key: &VerdictKey) -> Option<Rule> {
        let (family, handle) = (key.family?, key.rule_handle?);
        let find =
            |rules: &[Rule]| rules::lookup(rules, family, &key.table, &key.chain, handle).cloned();
        if let Some(r) = find(&self.rules[ns]) {
            return Some(r);
        }
        if let Ok(Ok(now)) = netns::run_in(&self.namespaces[ns].path, rules::snapshot) {
            self.rules[ns] = now;
        }
        find(&self.rules[ns])
    }

    fn rows(&mut self, counts: Vec<((usize, VerdictKey), u64)>) -> Vec<RuleRow> {
        let mut rows: Vec<RuleRow> = counts
            .into_iter()
            .map(|((ns, key), count)| {
                let rule = self.rule(ns, &key);
                RuleRow {
                    netns: self.namespaces[ns].name.clone(),
                    id: flow_of(&key),
                    family: key.family,
                    table: key.table.clone(),
                    chain: key.chain.clone(),
                    hook: rule.as_ref().and_then(|r| r.hook),
                    handle: key.rule_handle,
                    rule: rule.map(|r| r.text),
                    verdict: trace::verdict_name(key.verdict),
                    count,
                }
            })
            .collect();
        rows.sort_by(|a, b| {
            (&a.netns, &a.table, &a.chain, a.handle, &a.id)
                .cmp(&(&b.netns, &b.table, &b.chain, b.handle, &b.id))
        });
        rows
    }

    /// What was traced since the last call.
    pub fn interval(&mut self) -> Vec<RuleRow> {
        let mut counts = Vec::new();
        for ns in 0..self.verdicts.len() {
            for (key, n) in self.verdicts[ns].take() {
                *self.totals.entry((ns, key.clone())).or_default() += n;
                counts.push(((ns, key), n));
            }
        }
        self.rows(counts)
    }

    /// What was traced in the whole run.
    pub fn total(&mut self) -> Vec<RuleRow> {
        let counts = self.totals.iter().map(|(k, n)| (k.clone(), *n)).collect();
        self.rows(counts)
    }

    /// Gives dropped verdict rows the rule the traces say dropped them, when
    /// exactly one rule did. Exact, so it overrides the passive attribution.
    pub fn tie(rows: &mut [VerdictRow], traced: &[RuleRow]) {
        for row in rows.iter_mut().filter(|r| r.counts.dropped() > 0) {
            let mut rules: Vec<&str> = traced
                .iter()
                .filter(|t| {
                    t.verdict == "drop"
                        && t.netns == row.netns
                        && t.id == row.id
                        && t.hook.is_none_or(|h| h == row.hook)
                        && t.family.is_some_and(|f| f.sees(row.family))
                })
                .filter_map(|t| t.rule.as_deref())
                .collect();
            rules.dedup();
            if let [only] = rules.as_slice() {
                row.rule = Some(only.to_string());
            }
        }
    }
}

/// A traced packet's flow as flow rows key it: no per-packet flags.
fn flow_of(key: &VerdictKey) -> FlowId {
    let mut id = key.flow;
    id.outer.flags &= TUPLE_PORTS;
    id.inner.flags &= TUPLE_PORTS;
    id
}
