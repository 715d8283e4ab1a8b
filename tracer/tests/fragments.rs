//! IPv4 fragments across a link with a known MTU: exact first and non-first
//! counts, every fragment counted against its flow (ports included), none lost.

mod common;

use std::{net::SocketAddrV4, time::Duration};

use serde_json::Value;

use common::*;
use xtask::{
    lab::Pair,
    tracer::Finished,
    traffic::{UdpSink, send_udp},
};

#[test]
fn fragments_of_known_datagrams_are_counted_exactly() {
    const N: u64 = 10;
    const PAYLOAD: usize = 2500;
    let p = Pair::new(1000).unwrap();
    let (a, b) = (&p.a, &p.b);
    let to = SocketAddrV4::new(b.ip, 6000);
    let sink = UdpSink::start(&b.ns, to).unwrap();
    let run = start(p.namespaces(), &[]);
    send_udp(&a.ns, SocketAddrV4::new(a.ip, 6001), to, N as u32, PAYLOAD).unwrap();
    assert!(
        sink.wait_for(N, Duration::from_secs(10)),
        "{} arrived",
        sink.received()
    );
    let f = stop(run);

    // 8 + 2500 bytes of UDP in fragments of at most MTU - 20 rounded down to 8: 976, 976, 556.
    let (full, last) = (14 + 20 + 976, 14 + 20 + 556);
    for r in flow_rows(&f, &p) {
        // Non-first fragments have no UDP header, yet they count against the
        // flow with its ports, through their first fragment.
        assert_eq!(r["packets"], 3 * N);
        assert_eq!(r["frags_first"], N);
        assert_eq!(r["frags_rest"], 2 * N);
        assert_eq!(r["bytes"], N * (2 * full + last));
        assert_eq!(r["max_len"], full);
    }
    let frags = f.totals("frag");
    assert_eq!(frags.len(), 1, "{frags:#?}");
    let fr = frags[0];
    assert!(
        endpoints_are(
            fr,
            "udp",
            &a.ip.to_string(),
            &b.ip.to_string(),
            Some((6001, 6000))
        ),
        "{fr}"
    );
    for (k, v) in [
        ("datagrams", N),
        ("fragments", 3 * N),
        ("fragments_lost", 0),
        ("datagrams_lost", 0),
        ("reassembled", N),
        ("reassembly_failed", 0),
    ] {
        assert_eq!(fr[k], v, "{k}: {fr}");
    }
    assert!(f.totals("drop").is_empty(), "{:#?}", f.totals("drop"));
    assert_eq!(f.totals("health")[0]["frag_unmatched"], 0);
}

/// Whole datagrams of a flow are read in place and its fragments parsed in
/// full: both must land on the flow's one row per hop.
#[test]
fn whole_datagrams_and_fragments_of_one_flow_share_its_row() {
    const N: u64 = 10;
    let p = Pair::new(1000).unwrap();
    let (a, b) = (&p.a, &p.b);
    let to = SocketAddrV4::new(b.ip, 6000);
    let from = SocketAddrV4::new(a.ip, 6001);
    let sink = UdpSink::start(&b.ns, to).unwrap();
    let run = start(p.namespaces(), &[]);
    send_udp(&a.ns, from, to, N as u32, 100).unwrap();
    send_udp(&a.ns, from, to, N as u32, 2500).unwrap();
    send_udp(&a.ns, from, to, N as u32, 100).unwrap();
    assert!(
        sink.wait_for(3 * N, Duration::from_secs(10)),
        "{} arrived",
        sink.received()
    );
    let f = stop(run);

    let (small, full, last) = (14 + 20 + 8 + 100, 14 + 20 + 976, 14 + 20 + 556);
    for r in flow_rows(&f, &p) {
        assert_eq!(r["packets"], 2 * N + 3 * N, "{r}");
        assert_eq!(r["frags_first"], N, "{r}");
        assert_eq!(r["frags_rest"], 2 * N, "{r}");
        assert_eq!(r["bytes"], 2 * N * small + N * (2 * full + last), "{r}");
        assert_eq!(r["max_len"], full, "{r}");
    }
}

/// The one row of the flow 6001 -> 6000 at the sender's egress and the
/// receiver's ingress, checked to be that flow's.
fn flow_rows<'f>(f: &'f Finished, p: &Pair) -> Vec<&'f Value> {
    let (ip_a, ip_b) = (p.a.ip.to_string(), p.b.ip.to_string());
    [(&p.a.ns, "egress"), (&p.b.ns, "ingress")]
        .into_iter()
        .map(|(ns, dir)| {
            let rows = flows_at(f, ns, "v0", dir);
            assert_eq!(rows.len(), 1, "{ns} {dir}: {rows:#?}");
            let r = rows[0];
            assert!(
                endpoints_are(r, "udp", &ip_a, &ip_b, Some((6001, 6000))),
                "{r}"
            );
            r
        })
        .collect()
}
