//! What tracer and bpftrace counted, read from their output, for comparison
//! with what the generators sent and what the kernel counted.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a packet was seen: namespace, device, direction.
pub struct Hop<'a> {
    pub netns: &'a str,
    pub iface: &'a str,
    pub dir: &'a str,
}

/// The run-total rows of `type`.
pub fn totals<'a>(rows: &'a [Value], r#type: &'a str) -> impl Iterator<Item = &'a Value> {
    rows.iter()
        .filter(move |r| r["type"] == r#type && r["scope"] == "total")
}

/// Packets tracer counted over the whole run for the flow to `dport` over
/// `proto` at `hop`.
pub fn flow_packets(rows: &[Value], hop: &Hop, proto: &str, dport: u16) -> u64 {
    totals(rows, "flow")
        .filter(|r| {
            r["netns"] == hop.netns
                && r["iface"] == hop.iface
                && r["dir"] == hop.dir
                && r["proto"] == proto
                && r["dport"] == dport
        })
        .filter_map(|r| r["packets"].as_u64())
        .sum()
}

/// Packets of every flow row of the run's totals, all hops.
pub fn all_packets(rows: &[Value]) -> u64 {
    totals(rows, "flow")
        .filter_map(|r| r["packets"].as_u64())
        .sum()
}

/// Drops tracer counted over the run, all reasons.
pub fn all_drops(rows: &[Value]) -> u64 {
    totals(rows, "drop")
        .filter_map(|r| r["count"].as_u64())
        .sum()
}

/// Drops tracer counted in namespace `netns` by reason, most first.
pub fn drops_by_reason(rows: &[Value], netns: &str) -> Vec<(String, u64)> {
    let mut by: Vec<(String, u64)> = Vec::new();
    for r in totals(rows, "drop").filter(|r| r["netns"] == netns) {
        let reason = r["reason"].as_str().unwrap_or("?").to_string();
        let n = r["count"].as_u64().unwrap_or(0);
        match by.iter_mut().find(|(k, _)| *k == reason) {
            Some((_, v)) => *v += n,
            None => by.push((reason, n)),
        }
    }
    by.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    by
}

/// tracer's own loss counters, from the run's `"type":"health"` total row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub flow_map_full: u64,
    pub drop_map_full: u64,
    pub drop_events_lost: u64,
}

pub fn health(rows: &[Value]) -> Health {
    let mut h = Health::default();
    for r in totals(rows, "health") {
        let n = |k: &str| r[k].as_u64().unwrap_or(0);
        h.flow_map_full += n("flow_map_full");
        h.drop_map_full += n("drop_map_full");
        h.drop_events_lost += n("drop_events_lost");
    }
    h
}

/// Sums bpftrace's `@map[netns, ifindex, src, dst, proto, sport, dport]: N`
/// lines of `map` for namespace inode `netns`, protocol `proto`, port `dport`.
pub fn bpftrace_flow_packets(output: &str, map: &str, netns: u64, proto: u8, dport: u16) -> u64 {
    let prefix = format!("{map}[");
    output
        .lines()
        .filter_map(|l| {
            let (key, value) = l.trim().strip_prefix(&prefix)?.split_once("]: ")?;
            let k: Vec<&str> = key.split(", ").collect();
            let matches = k.len() == 7
                && k[0].parse() == Ok(netns)
                && k[4].parse() == Ok(proto)
                && k[6].parse() == Ok(dport);
            matches.then(|| value.trim().parse::<u64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn flow(
        scope: &str,
        ns: &str,
        iface: &str,
        dir: &str,
        proto: &str,
        dport: u16,
        n: u64,
    ) -> Value {
        json!({"type": "flow", "scope": scope, "netns": ns, "iface": iface, "dir": dir,
               "proto": proto, "src": "10.1.1.1", "dst": "10.1.1.2", "sport": 40000,
               "dport": dport, "vni": null, "inner": null, "packets": n, "bytes": n * 100})
    }

    #[test]
    fn flow_packets_pick_the_hop_flow_and_total() {
        let rows = vec![
            flow("interval", "tl1-a", "v0", "egress", "udp", 5201, 7),
            flow("total", "tl1-a", "v0", "egress", "udp", 5201, 10),
            flow("total", "tl1-a", "v0", "egress", "udp", 7000, 3),
            flow("total", "tl1-a", "v0", "egress", "tcp", 5201, 4),
            flow("total", "tl1-b", "v0", "ingress", "udp", 5201, 9),
            json!({"type": "drop", "scope": "total", "netns": "tl1-b", "reason": "NO_SOCKET", "count": 1}),
            json!({"type": "drop", "scope": "total", "netns": "tl1-b", "reason": "SOCKET_RCVBUFF", "count": 2}),
            json!({"type": "drop", "scope": "total", "netns": "tl1-a", "reason": "NO_SOCKET", "count": 4}),
            json!({"type": "drop", "scope": "interval", "netns": "tl1-b", "reason": "NO_SOCKET", "count": 1}),
            json!({"type": "health", "scope": "interval", "flow_map_full": 5}),
            json!({"type": "health", "scope": "total", "seconds": 3.0, "flow_map_full": 6,
                   "drop_map_full": 1, "drop_events_lost": 2}),
        ];
        let a = Hop {
            netns: "tl1-a",
            iface: "v0",
            dir: "egress",
        };
        assert_eq!(flow_packets(&rows, &a, "udp", 5201), 10);
        assert_eq!(flow_packets(&rows, &a, "udp", 7000), 3);
        let b = Hop {
            netns: "tl1-b",
            iface: "v0",
            dir: "ingress",
        };
        assert_eq!(flow_packets(&rows, &b, "udp", 5201), 9);
        assert_eq!(all_packets(&rows), 10 + 3 + 4 + 9);
        assert_eq!(all_drops(&rows), 7);
        assert_eq!(
            drops_by_reason(&rows, "tl1-b"),
            vec![
                ("SOCKET_RCVBUFF".to_string(), 2),
                ("NO_SOCKET".to_string(), 1)
            ]
        );
        assert_eq!(
            health(&rows),
            Health {
                flow_map_full: 6,
                drop_map_full: 1,
                drop_events_lost: 2
            }
        );
    }

    #[test]
    fn bpftrace_keys() {
        let out = "Attaching 3 probes...\n\n\n@drops[6]: 3\n\
            @rx_bytes[4026532500, 2, 10.1.1.1, 10.1.1.2, 17, 40000, 5201]: 9200\n\
            @rx_pkts[4026532500, 2, 10.1.1.1, 10.1.1.2, 17, 40000, 5201]: 100\n\
            @rx_pkts[4026532500, 2, 10.1.1.1, 10.1.1.2, 17, 40001, 5201]: 5\n\
            @rx_pkts[4026532500, 2, 10.1.1.1, 10.1.1.2, 6, 40002, 5201]: 7\n\
            @rx_pkts[4026531833, 2, 10.1.1.1, 10.1.1.2, 17, 40000, 5201]: 11\n\
            @tx_pkts[4026532500, 2, 10.1.1.1, 10.1.1.2, 17, 40000, 5201]: 13\n";
        assert_eq!(
            bpftrace_flow_packets(out, "@rx_pkts", 4026532500, 17, 5201),
            105
        );
        assert_eq!(
            bpftrace_flow_packets(out, "@tx_pkts", 4026532500, 17, 5201),
            13
        );
        assert_eq!(bpftrace_flow_packets(out, "@rx_pkts", 1, 17, 5201), 0);
    }
}
