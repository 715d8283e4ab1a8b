//! IPv4 fragments across a link with a known MTU: exact first and non-first counts.

mod common;

use std::{net::SocketAddrV4, time::Duration};

use common::*;
use xtask::{
    lab::Pair,
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
    let (ip_a, ip_b) = (a.ip.to_string(), b.ip.to_string());
    for (ns, dir) in [(&a.ns, "egress"), (&b.ns, "ingress")] {
        let rows = flows_at(&f, ns, "v0", dir);
        assert_eq!(rows.len(), 2, "{ns} {dir}: {rows:#?}");
        let first = rows
            .iter()
            .find(|r| endpoints_are(r, "udp", &ip_a, &ip_b, Some((6001, 6000))))
            .unwrap_or_else(|| panic!("no first-fragment row: {rows:#?}"));
        assert_eq!(first["packets"], N);
        assert_eq!(first["frags_first"], N);
        assert_eq!(first["frags_rest"], 0);
        assert_eq!(first["bytes"], N * full);
        assert_eq!(first["max_len"], full);
        // Non-first fragments have no UDP header: their row has no ports.
        let rest = rows
            .iter()
            .find(|r| endpoints_are(r, "udp", &ip_a, &ip_b, None))
            .unwrap_or_else(|| panic!("no non-first-fragment row: {rows:#?}"));
        assert_eq!(rest["packets"], 2 * N);
        assert_eq!(rest["frags_first"], 0);
        assert_eq!(rest["frags_rest"], 2 * N);
        assert_eq!(rest["bytes"], N * (full + last));
        assert_eq!(rest["max_len"], full);
    }
}
