//! IPv4 fragments across a link with a known MTU: exact first and non-first counts.

mod common;

use std::{net::SocketAddrV4, time::Duration};

use common::*;
use xtask::{
    lab::{Lab, addr, neigh},
    traffic::{UdpSink, send_udp},
};

#[test]
fn fragments_of_known_datagrams_are_counted_exactly() {
    const N: u64 = 10;
    const MTU: u32 = 1000;
    const PAYLOAD: usize = 2500;
    let mut lab = Lab::new().unwrap();
    let (a, b) = (lab.add_ns("a").unwrap(), lab.add_ns("b").unwrap());
    let (mac_a, mac_b) = (lab.mac(1, 1), lab.mac(1, 2));
    lab.veth((&a, "v0"), (&b, "v0"), MTU, (&mac_a, &mac_b))
        .unwrap();
    let (ip_a, ip_b) = (lab.addr(1, 1), lab.addr(1, 2));
    addr(&a, "v0", ip_a, 24).unwrap();
    addr(&b, "v0", ip_b, 24).unwrap();
    neigh(&a, "v0", ip_b, &mac_b).unwrap();
    neigh(&b, "v0", ip_a, &mac_a).unwrap();

    let to = SocketAddrV4::new(ip_b, 6000);
    let sink = UdpSink::start(&b, to).unwrap();
    let run = start(&[a.clone(), b.clone()], &[]);
    send_udp(&a, SocketAddrV4::new(ip_a, 6001), to, N as u32, PAYLOAD).unwrap();
    assert!(
        sink.wait_for(N, Duration::from_secs(10)),
        "{} arrived",
        sink.received()
    );
    let f = stop(run);

    // 8 + 2500 bytes of UDP in fragments of at most MTU - 20 rounded down to 8: 976, 976, 556.
    let (full, last) = (14 + 20 + 976, 14 + 20 + 556);
    let (ip_a, ip_b) = (ip_a.to_string(), ip_b.to_string());
    for (ns, dir) in [(&a, "egress"), (&b, "ingress")] {
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
