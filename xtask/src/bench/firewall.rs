//! A flood into a firewall rule under tracer alone: what its netfilter
//! observers and its drop program cost per packet, and whether it counted
//! every packet. The labs' namespaces have no firewall, so the throughput
//! loads never run those programs; a Docker host's forwarded packets all do.

use std::{net::SocketAddrV4, path::Path as FsPath, time::Duration};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use xtask::{lab, tracer::TracerRun, traffic::UdpSink};

use super::{
    FIRST_SPORT, FLOW_PAYLOAD,
    arms::{ToolCost, Window},
    counts,
    loads::Blast,
    paths::{Path, PathKind},
};

/// Destination port of the floods.
const PORT: u16 = 9100;

/// What the rule does with the flood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    Accept,
    Drop,
}

impl Rule {
    pub const BOTH: [Rule; 2] = [Rule::Accept, Rule::Drop];

    fn target(self) -> &'static str {
        match self {
            Rule::Accept => "ACCEPT",
            Rule::Drop => "DROP",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Rule::Accept => "accept",
            Rule::Drop => "drop",
        }
    }
}

/// One flood of UDP-64 packets of one flow into an INPUT rule of the server's
/// namespace, with BPF statistics on throughout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FirewallLoad {
    pub path: PathKind,
    pub rule: Rule,
    pub sent: u64,
    /// tracer's verdict rows of the flood at INPUT (filter): accepted, dropped.
    pub accepted: u64,
    pub dropped: u64,
    /// tracer's drop rows of the flood (any reason, any place).
    pub drops: u64,
    pub cost: ToolCost,
}

impl FirewallLoad {
    /// Whether tracer counted each packet once where it went: accepted by
    /// the rule, or dropped by it and freed as a drop.
    pub fn exact(&self) -> bool {
        match self.rule {
            Rule::Accept => self.accepted == self.sent && self.dropped == 0,
            Rule::Drop => {
                self.dropped == self.sent && self.accepted == 0 && self.drops == self.sent
            }
        }
    }
}

/// The rule in the server's namespace while this lives.
struct Installed<'a> {
    ns: &'a str,
    spec: Vec<String>,
}

impl<'a> Installed<'a> {
    fn new(ns: &'a str, rule: Rule) -> Result<Self> {
        let port = PORT.to_string();
        let spec: Vec<String> = ["INPUT", "-p", "udp", "--dport", &port, "-j", rule.target()]
            .map(String::from)
            .to_vec();
        let mut args = vec!["-I"];
        args.extend(spec.iter().map(String::as_str));
        lab::iptables(ns, &args)?;
        Ok(Installed { ns, spec })
    }
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        let mut args = vec!["-D"];
        args.extend(self.spec.iter().map(String::as_str));
        let _ = lab::iptables(self.ns, &args);
    }
}

/// Floods `packets` into a `rule` on path `p`, as fast as one sender goes.
pub fn flood(tracer: &FsPath, p: &Path, rule: Rule, packets: u64) -> Result<FirewallLoad> {
    let dst = SocketAddrV4::new(p.server.ip, PORT);
    let _rule = Installed::new(&p.server.ns, rule)?;
    // Something reads what the rule lets through: no socket drops after it.
    let sink = UdpSink::start(&p.server.ns, dst)?;
    let mut targs = p.tracer_args();
    targs.extend(["--interval".into(), "1".into()]);
    let run = TracerRun::start(tracer, &targs)?;
    let pids = [run.pid()];
    let mut window = Window::open(&pids)?;
    let blast = Blast {
        src: p.client.ip,
        dst,
        payload: FLOW_PAYLOAD,
        packets,
        // Paced at no more than a sender manages: a flood.
        duration: Duration::from_millis(1),
    };
    let sent = window.with_stats(|| blast.run(&p.client.ns, |_| FIRST_SPORT))?;
    if rule == Rule::Accept {
        sink.wait_for(sent, Duration::from_secs(5));
    }
    let cost = window.close(&pids)?;
    let f = run.stop()?;
    if !f.status.success() {
        bail!("tracer failed ({}): {}", f.status, f.stderr.trim());
    }
    let (accepted, dropped) = verdicts(&f.rows, &p.server.ns);
    Ok(FirewallLoad {
        path: p.kind,
        rule,
        sent,
        accepted,
        dropped,
        drops: drops(&f.rows),
        cost,
    })
}

fn flood_totals<'a>(rows: &'a [Value], r#type: &'a str) -> impl Iterator<Item = &'a Value> {
    counts::totals(rows, r#type).filter(|r| r["proto"] == "udp" && r["dport"] == PORT)
}

/// Accepted and dropped packets of the flood at INPUT of `ns`'s filter table.
fn verdicts(rows: &[Value], ns: &str) -> (u64, u64) {
    flood_totals(rows, "verdict")
        .filter(|r| r["netns"] == ns && r["hook"] == "input" && r["table"] == "filter")
        .fold((0, 0), |(a, d), r| {
            (
                a + r["accepted"].as_u64().unwrap_or(0),
                d + r["dropped"].as_u64().unwrap_or(0),
            )
        })
}

fn drops(rows: &[Value]) -> u64 {
    flood_totals(rows, "drop")
        .filter_map(|r| r["count"].as_u64())
        .sum()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_floods_rows_are_picked_by_port_hook_and_scope() {
        let verdict = |scope: &str, hook: &str, dport: u16, a: u64, d: u64| {
            json!({"type": "verdict", "scope": scope, "netns": "fw-b", "proto": "udp",
                   "dport": dport, "hook": hook, "table": "filter", "accepted": a, "dropped": d})
        };
        let rows = vec![
            verdict("total", "input", PORT, 10, 2),
            verdict("interval", "input", PORT, 10, 2),
            verdict("total", "forward", PORT, 5, 0),
            verdict("total", "input", PORT + 1, 7, 7),
            json!({"type": "drop", "scope": "total", "proto": "udp", "dport": PORT, "count": 3}),
            json!({"type": "drop", "scope": "total", "proto": "udp", "dport": 53, "count": 9}),
        ];
        assert_eq!(verdicts(&rows, "fw-b"), (10, 2));
        assert_eq!(verdicts(&rows, "fw-a"), (0, 0));
        assert_eq!(drops(&rows), 3);
        let load = |rule, accepted, dropped, drops| FirewallLoad {
            path: PathKind::Veth,
            rule,
            sent: 100,
            accepted,
            dropped,
            drops,
            cost: ToolCost::default(),
        };
        assert!(load(Rule::Accept, 100, 0, 0).exact());
        assert!(!load(Rule::Accept, 99, 0, 0).exact());
        assert!(load(Rule::Drop, 0, 100, 100).exact());
        assert!(!load(Rule::Drop, 0, 100, 99).exact());
    }
}
