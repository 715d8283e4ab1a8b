//! What one bench run measured: the record written to results.json and
//! rendered to RESULTS.md.

use serde::{Deserialize, Serialize};

pub use super::firewall::FirewallLoad;
use super::{
    arms::{Arm, TcpdumpStats, ToolCost},
    counts::Health,
    loads::{RrResult, TcpResult, UdpResult},
    paths::PathKind,
    stats::{Summary, summarize},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub meta: Meta,
    pub settings: Settings,
    /// One per (repetition, path, arm), in the order they ran.
    pub samples: Vec<Sample>,
    /// Median and spread of each metric per path and arm, from `samples`.
    pub summaries: Vec<SummaryRow>,
    /// More flows than tracer's flow map holds, per path.
    pub churn: Vec<FlowLoad>,
    /// Every run of the active-flows load (many active flows below map
    /// capacity: tracer's CPU and memory), in the order they ran. Empty in
    /// results from before there were several until [`Results::upgrade`].
    #[serde(default)]
    pub active_runs: Vec<FlowLoad>,
    /// The one run of results from before there were several; read, never
    /// written: [`Results::upgrade`] moves it to `active_runs`.
    #[serde(default, rename = "active", skip_serializing)]
    pub active_one: Option<FlowLoad>,
    /// Floods into firewall rules: the netfilter and drop programs' cost.
    /// Empty in results from before there were any.
    #[serde(default)]
    pub firewall: Vec<FirewallLoad>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub date: String,
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub machine: String,
    pub os: String,
    pub commit: String,
    pub tools: Vec<String>,
    pub loadavg_before: String,
    #[serde(default)]
    pub loadavg_after: String,
    pub minutes: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub reps: usize,
    pub seconds: f64,
    /// Seconds of each arm's statistics pass; 0 in results from before
    /// there was one (statistics were on for the whole run).
    #[serde(default)]
    pub stats_seconds: f64,
    pub requests: u32,
    pub paths: Vec<PathKind>,
    pub arms: Vec<Arm>,
    /// Even repetitions ran the arms in reverse order; false in results
    /// from before they did (every repetition ran `arms` in order).
    #[serde(default)]
    pub alternate: bool,
    pub churn_flows: u32,
    pub churn_packets: u32,
    pub churn_seconds: f64,
    pub churn_map_size: u32,
    pub active_flows: u32,
    pub active_seconds: u32,
    /// Packets of each firewall flood; 0 in results from before there were any.
    #[serde(default)]
    pub firewall_packets: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub rep: usize,
    pub path: PathKind,
    pub arm: Arm,
    pub tcp: TcpResult,
    pub udp: UdpResult,
    pub rr: RrResult,
    /// Packets of the UDP-64 load the server's namespace received, by the
    /// kernel's IP counters (see `udp64_in`).
    pub kernel_udp_in: u64,
    /// The server namespace's SNMP counters (nstat) that moved from before the
    /// UDP-64 load to the end of the arm.
    #[serde(default)]
    pub server_counters: std::collections::BTreeMap<String, u64>,
    /// The tool's cost while the loads ran (none for arm A).
    pub cost: Option<ToolCost>,
    pub tracer: Option<TracerCounts>,
    /// bpftrace's receive count of the UDP-64 flow in the server's namespace.
    pub bpftrace_udp_rx: Option<u64>,
    pub tcpdump: Option<TcpdumpStats>,
    /// CPU used by processes other than the bench's during the arm, % of one
    /// core (a lower bound: processes that came and went unseen are missed):
    /// other work on the machine that competed with the arm.
    #[serde(default)]
    pub other_cpu_pct: f64,
}

/// tracer's counts of the loads' flows, for comparison with the generators
/// and the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracerCounts {
    /// The UDP-64 flow leaving the client's device.
    pub udp_sender_egress: u64,
    /// The UDP-64 flow arriving on the server's device.
    pub udp_receiver_ingress: u64,
    /// Requests of the request/response load leaving the client's device.
    pub rr_sender_egress: u64,
    /// Drops of any reason in the traced namespaces.
    pub drops: u64,
    /// Drops in the server's namespace by reason.
    #[serde(default)]
    pub server_drops: Vec<(String, u64)>,
    pub health: Health,
}

impl TracerCounts {
    /// UDP-64 datagrams the kernel delivered that tracer did not count.
    pub fn udp_missing(&self, kernel_udp_in: u64) -> i64 {
        kernel_udp_in as i64 - self.udp_receiver_ingress as i64
    }
}

/// A paced many-flows load run under tracer alone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowLoad {
    pub path: PathKind,
    pub flows: u32,
    pub packets_per_flow: u32,
    pub map_size: u32,
    pub seconds: f64,
    pub sent: u64,
    pub sink_received: u64,
    pub hops: u64,
    /// Packets the kernel counted on the lab's devices (rx + tx deltas).
    pub kernel_packets: u64,
    /// Packets in tracer's flow rows (run totals, every hop).
    pub tracer_packets: u64,
    pub health: Health,
    pub cost: ToolCost,
}

impl Results {
    /// Results as read from a file, in today's shape: an older file's one
    /// active-flows run becomes the list of runs.
    pub fn upgrade(mut self) -> Self {
        if self.active_runs.is_empty() {
            self.active_runs.extend(self.active_one.take());
        }
        self
    }

    /// The run of the active-flows load the CPU floor judges: the median one.
    pub fn active(&self) -> Option<&FlowLoad> {
        FlowLoad::median_by_cpu(&self.active_runs)
    }
}

impl FlowLoad {
    /// The run of `runs` with the median CPU (the lower of the two middle ones).
    pub fn median_by_cpu(runs: &[FlowLoad]) -> Option<&FlowLoad> {
        let mut by_cpu: Vec<&FlowLoad> = runs.iter().collect();
        by_cpu.sort_by(|a, b| a.cost.cpu_pct.total_cmp(&b.cost.cpu_pct));
        by_cpu.get(by_cpu.len().saturating_sub(1) / 2).copied()
    }

    /// Packets neither counted in a flow nor reported as `flow_map_full`.
    pub fn missing(&self) -> i64 {
        self.kernel_packets as i64 - self.tracer_packets as i64 - self.health.flow_map_full as i64
    }
}

/// A metric measured in every sample.
pub struct Metric {
    pub key: &'static str,
    pub label: &'static str,
    pub get: fn(&Sample) -> Option<f64>,
}

fn is_datapath_prog(name: &str) -> bool {
    // tracer's TC programs, bpftrace's per-packet tracepoints.
    name.starts_with("tc_")
        || name.starts_with("netif_receive")
        || name.starts_with("net_dev_queue")
}

pub const METRICS: &[Metric] = &[
    Metric {
        key: "tcp_gbps",
        label: "TCP throughput, Gbit/s",
        get: |s| Some(s.tcp.gbps),
    },
    Metric {
        key: "udp64_kpps",
        label: "UDP-64 received, kpps",
        get: |s| Some(s.udp.pps / 1e3),
    },
    Metric {
        key: "rr_p50_us",
        label: "request/response p50, µs",
        get: |s| Some(s.rr.p50_us),
    },
    Metric {
        key: "rr_p99_us",
        label: "request/response p99, µs",
        get: |s| Some(s.rr.p99_us),
    },
    Metric {
        key: "other_cpu_pct",
        label: "other processes' CPU meanwhile, % of one core (at least)",
        get: |s| Some(s.other_cpu_pct),
    },
    Metric {
        key: "cpu_pct",
        label: "tool CPU, % of one core",
        get: |s| s.cost.as_ref().map(|c| c.cpu_pct),
    },
    Metric {
        key: "peak_rss_mib",
        label: "tool peak RSS, MiB",
        get: |s| s.cost.as_ref().map(|c| c.peak_rss_kib as f64 / 1024.0),
    },
    Metric {
        key: "datapath_ns_per_run",
        label: "per-packet BPF program, ns/run",
        get: |s| s.cost.as_ref()?.ns_per_run(is_datapath_prog),
    },
    Metric {
        key: "drop_ns_per_run",
        label: "kfree_skb BPF program, ns/run",
        get: |s| s.cost.as_ref()?.ns_per_run(|n| n == "kfree_skb"),
    },
    Metric {
        key: "bpf_cpu_pct",
        label: "in BPF programs, % of one core",
        get: |s| s.cost.as_ref().map(|c| c.bpf_cpu_pct()),
    },
];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SummaryRow {
    pub path: PathKind,
    pub arm: Arm,
    pub metric: String,
    pub summary: Summary,
}

pub fn summarize_samples(samples: &[Sample]) -> Vec<SummaryRow> {
    let mut rows = Vec::new();
    for path in PathKind::ALL {
        for arm in Arm::ALL {
            for m in METRICS {
                let v: Vec<f64> = samples
                    .iter()
                    .filter(|s| s.path == path && s.arm == arm)
                    .filter_map(|s| (m.get)(s))
                    .collect();
                if let Some(summary) = summarize(&v) {
                    rows.push(SummaryRow {
                        path,
                        arm,
                        metric: m.key.to_string(),
                        summary,
                    });
                }
            }
        }
    }
    rows
}

/// `arm`'s value of `metric` as a fraction of arm A's, one per repetition
/// (the two ran back to back), summarised.
pub fn paired_ratio(
    samples: &[Sample],
    path: PathKind,
    arm: Arm,
    metric: &Metric,
) -> Option<Summary> {
    paired(samples, path, arm, Arm::A, metric, |v, b| {
        (b > 0.0).then(|| v / b)
    })
}

/// Per repetition, `arm`'s value less `base`'s on the same path.
pub fn paired_difference(
    samples: &[Sample],
    path: PathKind,
    arm: Arm,
    base: Arm,
    metric: &Metric,
) -> Option<Summary> {
    paired(samples, path, arm, base, metric, |v, b| Some(v - b))
}

/// `combine(arm's value, base's value)` of each repetition, summarised.
fn paired(
    samples: &[Sample],
    path: PathKind,
    arm: Arm,
    base: Arm,
    metric: &Metric,
    combine: impl Fn(f64, f64) -> Option<f64>,
) -> Option<Summary> {
    let values: Vec<f64> = samples
        .iter()
        .filter(|s| s.path == path && s.arm == arm)
        .filter_map(|s| {
            let b = samples
                .iter()
                .find(|b| b.path == path && b.arm == base && b.rep == s.rep)?;
            combine((metric.get)(s)?, (metric.get)(b)?)
        })
        .collect();
    summarize(&values)
}

pub fn metric(key: &str) -> &'static Metric {
    METRICS.iter().find(|m| m.key == key).expect("known metric")
}
