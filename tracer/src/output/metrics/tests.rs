use std::rc::Rc;

use tracer_ebpf::FlowId;

use super::*;
use crate::{
    collectors::{
        drops::{DropCounts, DropRow},
        flows::{Counts, FlowRow},
    },
    model::Direction,
};

fn sink(flow_labels: bool) -> MetricsSink {
    MetricsSink::new(
        Arc::new(Mutex::new(String::new())),
        flow_labels,
        Vec::new(),
        Vec::new(),
    )
}

fn interval(packets: u64, reason: &str) -> Report {
    let mut id = FlowId::default();
    id.outer.family = tracer_ebpf::FAMILY_IPV4;
    id.outer.proto = 17;
    Report {
        scope: Scope::Interval,
        flows: vec![FlowRow {
            netns: Rc::from("ha"),
            iface: Rc::from("ul0"),
            dir: Direction::Egress,
            id,
            counts: Counts {
                packets,
                bytes: 100 * packets,
                frags_first: 1,
                ..Counts::default()
            },
        }],
        drops: vec![DropRow {
            netns: "hb".into(),
            iface: None,
            id,
            reason: Some(reason.into()),
            location: "x".into(),
            fragment: None,
            counts: DropCounts { packets, bytes: 0 },
        }],
        ..Report::default()
    }
}

fn published(s: &MetricsSink) -> String {
    s.published.lock().unwrap().clone()
}

#[test]
fn counters_are_run_totals() {
    let mut s = sink(false);
    assert!(
        published(&s).ends_with("# EOF\n"),
        "served before the first interval"
    );
    s.report(&interval(2, "NO_SOCKET")).unwrap();
    s.report(&interval(3, "NO_SOCKET")).unwrap();
    // A totals report is the same counts again: not added twice.
    s.report(&Report {
        scope: Scope::Total,
        ..interval(5, "NO_SOCKET")
    })
    .unwrap();
    let text = published(&s);
    assert!(text.contains("tracer_packets_total{netns=\"ha\",iface=\"ul0\",dir=\"egress\"} 5\n"));
    assert!(text.contains("tracer_bytes_total{netns=\"ha\",iface=\"ul0\",dir=\"egress\"} 500\n"));
    assert!(text.contains(
        "tracer_fragments_total{netns=\"ha\",iface=\"ul0\",dir=\"egress\",fragment=\"first\"} 2\n"
    ));
    assert!(text.contains("tracer_drops_total{reason=\"NO_SOCKET\",netns=\"hb\",iface=\"\"} 5\n"));
    assert!(text.contains("tracer_health_events_total{event=\"flow_map_full\"} 0\n"));
    // Each family once, declared before its samples; the exposition ends with EOF.
    for family in ["tracer_packets", "tracer_drops", "tracer_health_events"] {
        assert_eq!(
            text.matches(&format!("# TYPE {family} counter\n")).count(),
            1
        );
        let declared = text.find(&format!("# TYPE {family} ")).unwrap();
        assert!(declared < text.find(&format!("\n{family}_total")).unwrap());
    }
    assert!(text.ends_with("\n# EOF\n"));
}

#[test]
fn flow_labels_only_when_asked() {
    let mut s = sink(false);
    s.report(&interval(1, "NO_SOCKET")).unwrap();
    assert!(!published(&s).contains("src="));
    let mut s = sink(true);
    s.report(&interval(1, "NO_SOCKET")).unwrap();
    assert!(published(&s).contains(
        "tracer_drops_total{reason=\"NO_SOCKET\",netns=\"hb\",iface=\"\",proto=\"udp\",\
         src=\"0.0.0.0\",dst=\"0.0.0.0\",sport=\"\",dport=\"\"} 1\n"
    ));
}

#[test]
fn label_values_are_escaped() {
    assert_eq!(labels(&[("netns", "a\"b\\c\nd")]), r#"netns="a\"b\\c\nd""#);
}
