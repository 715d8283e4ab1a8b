//! What one report costs the agent, apart from the kernel: the run totals
//! of its flows, the paths built from its flow rows and its JSON lines, on
//! the shape of the bench's
//! active-flows load (N conversations over a veth pair, each seen at the
//! sender's egress and the receiver's ingress). Whole-agent runs on a
//! 2-vCPU VM swing by a sixth from one run to the next; this times the
//! parts alone, so that a change to them can be measured.
//!
//! `cargo bench -p tracer --bench report [-- CONVERSATIONS ROUNDS]`
//! (default 10,000 and 15): median and minimum of each part, in ms.

use std::{hint::black_box, rc::Rc, time::Instant};

use tracer::{
    analysis::paths::{Rows, paths},
    collectors::{
        flows::{Counts, FlowRow},
        tally::Tally,
    },
    model::Direction,
    output::{Report, Sink, json::JsonSink},
    topology::links::Links,
};
use tracer_ebpf::{FAMILY_IPV4, FlowId, FlowKey, TUPLE_PORTS, Tuple};

/// The flow rows of `n` UDP conversations, as the flow collector orders
/// them: by device, then by flow.
fn rows(n: u32) -> Vec<FlowRow> {
    let hops: [(&str, &str, Direction); 2] = [
        ("a", "va", Direction::Egress),
        ("b", "vb", Direction::Ingress),
    ];
    let mut out = Vec::with_capacity(2 * n as usize);
    for (netns, iface, dir) in hops {
        let (netns, iface): (Rc<str>, Rc<str>) = (netns.into(), iface.into());
        for i in 0..n {
            let mut t = Tuple {
                family: FAMILY_IPV4,
                proto: 17,
                sport: 10_000 + (i % 50_000) as u16,
                dport: 5001,
                flags: TUPLE_PORTS,
                ..Tuple::default()
            };
            t.src[..4].copy_from_slice(&[10, 253, 0, 1]);
            t.dst[..4].copy_from_slice(&[10, 253, (i >> 16) as u8, 2]);
            out.push(FlowRow {
                netns: netns.clone(),
                iface: iface.clone(),
                dir,
                id: FlowId {
                    outer: t,
                    ..FlowId::default()
                },
                counts: Counts {
                    packets: 1,
                    bytes: 92,
                    max_len: 92,
                    ..Counts::default()
                },
            });
        }
    }
    out
}

/// Median and minimum of `times` (ms).
fn summary(mut times: Vec<f64>) -> String {
    times.sort_by(f64::total_cmp);
    format!(
        "median {:.2} ms, min {:.2} ms",
        times[times.len() / 2],
        times[0]
    )
}

fn main() {
    // cargo bench passes `--bench`; numbers are ours.
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(10_000);
    let rounds = args.get(1).copied().unwrap_or(15).max(1);
    let links = Links::default();
    let mut report = Report {
        flows: rows(n),
        ..Report::default()
    };
    // Its lines are made in its buffer and handed on in large pieces; the
    // copy into a pipe is the kernel's, and not timed here.
    let mut sink = JsonSink::new(std::io::sink());
    // The flow collector's keys of those rows, in the order it reads its
    // slots (taken as the flows first came: each packet at the egress, then
    // at the ingress).
    let half = report.flows.len() / 2;
    let keys: Vec<(FlowKey, Counts)> = (0..report.flows.len())
        .map(|i| {
            let r = &report.flows[(i % 2) * half + i / 2];
            let key = FlowKey {
                dev: 0xffff_8880_0000_0000 + (i % 2) as u64 * 4096,
                ifindex: 2 + (i % 2) as u32,
                dir: r.dir as u8,
                id: r.id,
                ..FlowKey::default()
            };
            (key, r.counts)
        })
        .collect();
    // The run totals, each key looked up by hash every interval, or (as
    // the flow slots do) added where the last interval found it.
    let mut hashed: Tally<FlowKey, Counts> = Tally::default();
    let mut placed: Tally<FlowKey, Counts> = Tally::default();
    let mut at = vec![u32::MAX; keys.len()];
    let (mut hashed_ms, mut placed_ms) = (Vec::new(), Vec::new());
    let (mut path_ms, mut json_ms) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let start = Instant::now();
        for (k, c) in &keys {
            hashed.add(*k, *c);
        }
        hashed.settle();
        hashed.end_interval();
        hashed_ms.push(start.elapsed().as_secs_f64() * 1e3);
        let start = Instant::now();
        for ((k, c), &a) in keys.iter().zip(&at) {
            placed.add_at(*k, *c, a);
        }
        placed.settle();
        for (i, a) in at.iter_mut().enumerate() {
            *a = placed.total_at(i);
        }
        placed.end_interval();
        placed_ms.push(start.elapsed().as_secs_f64() * 1e3);

        let start = Instant::now();
        report.paths = black_box(paths(&links, Rows::of(&report)));
        path_ms.push(start.elapsed().as_secs_f64() * 1e3);
        let start = Instant::now();
        sink.report(&report).expect("write to memory");
        json_ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "{n} conversations, {} flow rows, {} paths, {rounds} rounds",
        report.flows.len(),
        report.paths.len()
    );
    println!("run totals, keys hashed: {}", summary(hashed_ms));
    println!("run totals, keys placed: {}", summary(placed_ms));
    println!("paths: {}", summary(path_ms));
    println!("json:  {}", summary(json_ms));
}
