//! Counters as OpenMetrics text (`--metrics`), served over HTTP by
//! [`server`]. Every interval report is added to run totals, so counters
//! only grow; the text is rendered once per interval and served as is.
//!
//! Labels name namespaces, devices, directions, reasons, hooks, tables and
//! kinds: as many series as the host has devices, not flows. Flow labels
//! (`--metrics-flows`) multiply traffic and drop series by the flows seen.

pub mod server;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io,
    os::fd::{AsFd as _, OwnedFd},
    sync::{Arc, Mutex},
};

use crate::{
    output::{Endpoints, Report, Scope, Sink, inner, vni},
    sys::bpf::{prog_run_stats, stats_enabled},
    topology::mtu::Finding,
};

/// What `/metrics` serves; replaced whole after each interval.
pub type Published = Arc<Mutex<String>>;

/// Label sets (rendered, `a="x",b="y"`) of one metric family and their values.
type Series = BTreeMap<String, u64>;

/// Run totals of everything exported, by metric and label set.
#[derive(Default)]
struct Totals {
    packets: Series,
    bytes: Series,
    fragments: Series,
    drops: Series,
    drop_bytes: Series,
    verdicts: Series,
    icmp: Series,
    health: Series,
}

pub struct MetricsSink {
    published: Published,
    flow_labels: bool,
    totals: Totals,
    /// Run totals of each program, read at every interval.
    programs: Vec<(String, OwnedFd)>,
    /// MTU findings of the traced topology, and flows that hit each in the last interval.
    findings: Vec<Finding>,
    finding_flows: BTreeMap<String, u64>,
    map_fill: Vec<(&'static str, (usize, u32))>,
}

/// `name="value"` with OpenMetrics escaping.
fn label(out: &mut String, name: &str, value: &str) {
    if !out.is_empty() {
        out.push(',');
    }
    out.push_str(name);
    out.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (n, v) in pairs {
        label(&mut out, n, v);
    }
    out
}

/// The flow labels of `id` (`--metrics-flows`): outer, and inner for VXLAN.
fn flow_labels(out: &mut String, id: &tracer_ebpf::FlowId) {
    let opt = |v: Option<String>| v.unwrap_or_default();
    let mut endpoints = |prefix: &str, e: &Endpoints| {
        label(out, &format!("{prefix}proto"), &e.proto.to_string());
        label(
            out,
            &format!("{prefix}src"),
            &opt(e.src.map(|a| a.to_string())),
        );
        label(
            out,
            &format!("{prefix}dst"),
            &opt(e.dst.map(|a| a.to_string())),
        );
        label(
            out,
            &format!("{prefix}sport"),
            &opt(e.sport.map(|p| p.to_string())),
        );
        label(
            out,
            &format!("{prefix}dport"),
            &opt(e.dport.map(|p| p.to_string())),
        );
    };
    endpoints("", &Endpoints::of(&id.outer));
    if let Some(i) = inner(id) {
        endpoints("inner_", &i);
    }
    if let Some(v) = vni(id) {
        label(out, "vni", &v.to_string());
    }
}

fn add(series: &mut Series, key: String, n: u64) {
    if n > 0 {
        *series.entry(key).or_default() += n;
    }
}

impl MetricsSink {
    /// `programs`: tracer's BPF programs by name, for their run time.
    pub fn new(
        published: Published,
        flow_labels: bool,
        programs: Vec<(String, OwnedFd)>,
        findings: Vec<Finding>,
    ) -> Self {
        let mut sink = MetricsSink {
            published,
            flow_labels,
            totals: Totals::default(),
            programs,
            findings,
            finding_flows: BTreeMap::new(),
            map_fill: Vec::new(),
        };
        sink.publish();
        sink
    }

    fn add(&mut self, r: &Report) {
        let t = &mut self.totals;
        for f in &r.flows {
            let mut key = labels(&[
                ("netns", &f.netns),
                ("iface", &f.iface),
                ("dir", f.dir.as_str()),
            ]);
            for (fragment, n) in [
                ("first", f.counts.frags_first),
                ("rest", f.counts.frags_rest),
            ] {
                let mut k = key.clone();
                label(&mut k, "fragment", fragment);
                add(&mut t.fragments, k, n);
            }
            if self.flow_labels {
                flow_labels(&mut key, &f.id);
            }
            add(&mut t.packets, key.clone(), f.counts.packets);
            add(&mut t.bytes, key, f.counts.bytes);
        }
        for d in &r.drops {
            let mut key = labels(&[
                ("reason", d.reason.as_deref().unwrap_or("")),
                ("netns", &d.netns),
                ("iface", d.iface.as_deref().unwrap_or("")),
            ]);
            if self.flow_labels {
                flow_labels(&mut key, &d.id);
            }
            add(&mut t.drops, key.clone(), d.counts.packets);
            add(&mut t.drop_bytes, key, d.counts.bytes);
        }
        for v in &r.verdicts {
            for (verdict, n) in [
                ("accepted", v.counts.accepted()),
                ("dropped", v.counts.dropped()),
            ] {
                let key = labels(&[
                    ("netns", &v.netns),
                    ("iface", v.iface.as_deref().unwrap_or("")),
                    ("family", v.family.as_str()),
                    ("hook", v.hook.as_str()),
                    ("table", v.table.as_str()),
                    ("verdict", verdict),
                ]);
                add(&mut t.verdicts, key, n);
            }
        }
        for i in &r.icmps {
            let key = labels(&[
                ("netns", &i.netns),
                ("iface", i.iface.as_deref().unwrap_or("")),
                ("dir", i.dir.as_str()),
                ("kind", i.kind),
            ]);
            add(&mut t.icmp, key, i.count);
        }
        for (event, n) in r.health.fields() {
            // Every event is listed from the start: a zero is a finding too.
            *t.health.entry(labels(&[("event", event)])).or_default() += n;
        }
        self.finding_flows = r
            .mtu
            .iter()
            .map(|m| (finding_labels(&m.finding), m.flows.len() as u64))
            .collect();
        self.map_fill.clone_from(&r.map_fill);
    }

    fn publish(&mut self) {
        let text = self.render();
        if let Ok(mut p) = self.published.lock() {
            *p = text;
        }
    }

    /// The OpenMetrics exposition of the run totals.
    fn render(&mut self) -> String {
        let mut out = String::with_capacity(4096);
        let t = &self.totals;
        let counters: [(&str, &str, &Series); 7] = [
            (
                "tracer_packets",
                "Packets seen per traced device and direction (GSO packets count as their segments).",
                &t.packets,
            ),
            (
                "tracer_bytes",
                "Bytes seen per traced device and direction, from the Ethernet header on.",
                &t.bytes,
            ),
            (
                "tracer_fragments",
                "IP fragments seen per traced device and direction: the first of a datagram, or a later one.",
                &t.fragments,
            ),
            (
                "tracer_drops",
                "Packets the kernel dropped in a traced namespace, by drop reason and device (empty: none).",
                &t.drops,
            ),
            (
                "tracer_dropped_bytes",
                "Bytes of the dropped packets (skb->len).",
                &t.drop_bytes,
            ),
            (
                "tracer_verdicts",
                "Packets a netfilter table accepted or dropped, by hook and table.",
                &t.verdicts,
            ),
            (
                "tracer_icmp_errors",
                "ICMP errors seen on a traced device (ingress, egress) or sent by a traced namespace's stack (sent).",
                &t.icmp,
            ),
        ];
        for (name, help, series) in counters {
            family(&mut out, name, "counter", help);
            for (l, v) in series {
                sample(&mut out, &format!("{name}_total"), l, *v);
            }
        }
        family(
            &mut out,
            "tracer_health_events",
            "counter",
            "What tracer could not record: full maps, lost events, unmatched fragments, dropped packets not written to --pcap-drops.",
        );
        for (l, v) in &t.health {
            sample(&mut out, "tracer_health_events_total", l, *v);
        }
        self.render_mtu(&mut out);
        family(
            &mut out,
            "tracer_map_entries",
            "gauge",
            "Entries a collector's kernel map held at the last drain (one interval's keys).",
        );
        for (name, (entries, _)) in &self.map_fill {
            sample(
                &mut out,
                "tracer_map_entries",
                &labels(&[("map", name)]),
                *entries as u64,
            );
        }
        family(
            &mut out,
            "tracer_map_capacity",
            "gauge",
            "Entries a collector's kernel map can hold; past it, packets count in tracer_health_events.",
        );
        for (name, (_, capacity)) in &self.map_fill {
            sample(
                &mut out,
                "tracer_map_capacity",
                &labels(&[("map", name)]),
                *capacity as u64,
            );
        }
        self.render_programs(&mut out);
        out.push_str("# EOF\n");
        out
    }

    fn render_mtu(&self, out: &mut String) {
        family(
            out,
            "tracer_mtu_finding_limit_bytes",
            "gauge",
            "An MTU problem of the traced topology: the largest IP packet that gets through (inner packet for VXLAN).",
        );
        // Two findings with the same labels would be one series twice: keep the tighter.
        let mut limits: BTreeMap<String, u64> = BTreeMap::new();
        for f in &self.findings {
            let limit = limits.entry(finding_labels(f)).or_insert(u64::MAX);
            *limit = (*limit).min(f.limit as u64);
        }
        for (l, limit) in &limits {
            sample(out, "tracer_mtu_finding_limit_bytes", l, *limit);
        }
        family(
            out,
            "tracer_mtu_finding_flows",
            "gauge",
            "Flows of the last interval whose largest packet is over an MTU finding's limit where it bites.",
        );
        for l in limits.keys() {
            let n = self.finding_flows.get(l).copied().unwrap_or(0);
            sample(out, "tracer_mtu_finding_flows", l, n);
        }
    }

    fn render_programs(&self, out: &mut String) {
        let enabled = stats_enabled();
        family(
            out,
            "tracer_bpf_stats_enabled",
            "gauge",
            "The sysctl kernel.bpf_stats_enabled: at 1 the kernel counts BPF programs' run time. At 0 the two tracer_bpf_program metrics stand still, unless some process holds statistics on with BPF_ENABLE_STATS, which the sysctl does not show.",
        );
        sample(
            out,
            "tracer_bpf_stats_enabled",
            "",
            if enabled { 1 } else { 0 },
        );
        let stats: Vec<(&str, std::time::Duration, u64)> = self
            .programs
            .iter()
            .filter_map(|(name, fd)| {
                let (time, runs) = prog_run_stats(fd.as_fd()).ok()?;
                Some((name.as_str(), time, runs))
            })
            .collect();
        family(
            out,
            "tracer_bpf_program_runs",
            "counter",
            "Runs of each of tracer's BPF programs while statistics were on.",
        );
        for (name, _, runs) in &stats {
            let l = labels(&[("program", name)]);
            sample(out, "tracer_bpf_program_runs_total", &l, *runs);
        }
        family(
            out,
            "tracer_bpf_program_run_seconds",
            "counter",
            "Time spent in each of tracer's BPF programs while statistics were on; divided by tracer_bpf_program_runs_total, the cost of one run.",
        );
        for (name, time, _) in &stats {
            let l = labels(&[("program", name)]);
            let _ = writeln!(
                out,
                "tracer_bpf_program_run_seconds_total{{{l}}} {:.9}",
                time.as_secs_f64()
            );
        }
    }
}

/// A finding's kind, its first device (where packets go in first), and all its devices.
fn finding_labels(f: &Finding) -> String {
    let first = f.devices.first();
    let devices: Vec<String> = f
        .devices
        .iter()
        .map(|d| format!("{}/{}", d.netns, d.name))
        .collect();
    labels(&[
        ("kind", f.kind.as_str()),
        ("netns", first.map_or("", |d| d.netns.as_str())),
        ("iface", first.map_or("", |d| d.name.as_str())),
        ("devices", &devices.join(",")),
    ])
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# TYPE {name} {kind}\n# HELP {name} {help}");
}

fn sample(out: &mut String, name: &str, labels: &str, value: u64) {
    let _ = if labels.is_empty() {
        writeln!(out, "{name} {value}")
    } else {
        writeln!(out, "{name}{{{labels}}} {value}")
    };
}

impl Sink for MetricsSink {
    fn report(&mut self, r: &Report) -> io::Result<()> {
        if r.scope == Scope::Interval {
            self.add(r);
            self.publish();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
