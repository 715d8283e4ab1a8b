//! JSON lines: one object per row, the contract scripts and tests rely on
//! (documented in the README).

use std::io::{self, Write};

use serde::Serialize;

use super::{Endpoints, FlowRow, Proto, Report, Sink, inner, vni};

pub struct JsonSink<W: Write> {
    out: W,
}

impl<W: Write> JsonSink<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }
}

#[derive(Serialize)]
struct JsonEndpoints {
    proto: serde_json::Value,
    src: Option<String>,
    dst: Option<String>,
    sport: Option<u16>,
    dport: Option<u16>,
}

impl From<Endpoints> for JsonEndpoints {
    fn from(e: Endpoints) -> Self {
        JsonEndpoints {
            proto: match e.proto {
                Proto::Named(n) => n.into(),
                Proto::Number(n) => n.into(),
            },
            src: e.src,
            dst: e.dst,
            sport: e.sport,
            dport: e.dport,
        }
    }
}

#[derive(Serialize)]
struct JsonFlow<'a> {
    r#type: &'static str,
    scope: &'static str,
    netns: &'a str,
    iface: &'a str,
    dir: &'static str,
    #[serde(flatten)]
    outer: JsonEndpoints,
    vni: Option<u32>,
    inner: Option<JsonEndpoints>,
    packets: u64,
    bytes: u64,
    frags_first: u64,
    frags_rest: u64,
    df: u64,
    max_len: u32,
}

#[derive(Serialize)]
struct JsonHealth {
    r#type: &'static str,
    scope: &'static str,
    seconds: f64,
    flow_map_full: u64,
}

fn flow<'a>(scope: &'static str, row: &'a FlowRow) -> JsonFlow<'a> {
    JsonFlow {
        r#type: "flow",
        scope,
        netns: &row.netns,
        iface: &row.iface,
        dir: row.dir,
        outer: Endpoints::of(&row.id.outer).into(),
        vni: vni(&row.id),
        inner: inner(&row.id).map(Into::into),
        packets: row.counts.packets,
        bytes: row.counts.bytes,
        frags_first: row.counts.frags_first,
        frags_rest: row.counts.frags_rest,
        df: row.counts.df,
        max_len: row.counts.max_len,
    }
}

impl<W: Write> Sink for JsonSink<W> {
    fn report(&mut self, r: &Report) -> io::Result<()> {
        let scope = r.scope.as_str();
        for row in &r.flows {
            serde_json::to_writer(&mut self.out, &flow(scope, row))?;
            self.out.write_all(b"\n")?;
        }
        let health = JsonHealth {
            r#type: "health",
            scope,
            seconds: r.elapsed.as_secs_f64(),
            flow_map_full: r.health.flow_map_full,
        };
        serde_json::to_writer(&mut self.out, &health)?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tracer_ebpf::{FAMILY_IPV4, FlowId, TUPLE_PORTS, Tuple, VNI_PRESENT};

    use super::*;
    use crate::{
        flows::Counts,
        render::{Health, Scope},
    };

    fn tuple(src: u8, dst: u8, proto: u8, ports: Option<(u16, u16)>) -> Tuple {
        let mut t = Tuple {
            family: FAMILY_IPV4,
            proto,
            ..Tuple::default()
        };
        t.src[..4].copy_from_slice(&[10, 0, 0, src]);
        t.dst[..4].copy_from_slice(&[10, 0, 0, dst]);
        if let Some((s, d)) = ports {
            (t.sport, t.dport) = (s, d);
            t.flags = TUPLE_PORTS;
        }
        t
    }

    #[test]
    fn vxlan_flow_row_matches_the_contract() {
        let report = Report {
            scope: Scope::Total,
            elapsed: Duration::from_secs(2),
            flows: vec![FlowRow {
                netns: "hostA".into(),
                iface: "ul0".into(),
                dir: "egress",
                id: FlowId {
                    outer: tuple(1, 2, 17, Some((40000, 4789))),
                    inner: tuple(5, 6, 1, None),
                    vni: VNI_PRESENT | 42,
                    _pad: 0,
                },
                counts: Counts {
                    packets: 3,
                    bytes: 444,
                    frags_first: 1,
                    frags_rest: 2,
                    df: 0,
                    max_len: 148,
                },
            }],
            health: Health { flow_map_full: 7 },
        };
        let mut out = Vec::new();
        JsonSink::new(&mut out).report(&report).unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines[0],
            serde_json::json!({
                "type": "flow", "scope": "total", "netns": "hostA", "iface": "ul0",
                "dir": "egress", "proto": "udp", "src": "10.0.0.1", "dst": "10.0.0.2",
                "sport": 40000, "dport": 4789, "vni": 42,
                "inner": {"proto": "icmp", "src": "10.0.0.5", "dst": "10.0.0.6",
                          "sport": null, "dport": null},
                "packets": 3, "bytes": 444, "frags_first": 1, "frags_rest": 2,
                "df": 0, "max_len": 148
            })
        );
        assert_eq!(
            lines[1],
            serde_json::json!({"type": "health", "scope": "total", "seconds": 2.0,
                               "flow_map_full": 7})
        );
        assert_eq!(lines.len(), 2);
    }

    #[test]
    fn plain_flow_has_null_vni_and_inner_and_numeric_unknown_proto() {
        let row = FlowRow {
            netns: "4026531840".into(),
            iface: "br0".into(),
            dir: "ingress",
            id: FlowId {
                outer: tuple(1, 2, 47, None),
                ..FlowId::default()
            },
            counts: Counts::default(),
        };
        let v = serde_json::to_value(flow("interval", &row)).unwrap();
        assert_eq!(v["vni"], serde_json::Value::Null);
        assert_eq!(v["inner"], serde_json::Value::Null);
        assert_eq!(v["proto"], 47);
        assert_eq!(v["sport"], serde_json::Value::Null);
        assert_eq!(v["scope"], "interval");
    }
}
