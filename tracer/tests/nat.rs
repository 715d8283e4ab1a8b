//! Destination NAT without Docker: a router namespace translates a port to
//! a server behind it, and the rows after the translation carry `orig`, what
//! the client addressed. A few new conversations are looked up one by one in
//! connection tracking, many by a dump: both must tie every row.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use common::*;
use serde_json::Value;
use xtask::{
    lab::{self, Lab, iptables, sysctl},
    traffic::{UdpSink, send_udp},
};

const PUBLISHED: u16 = 8080;
const SERVICE: u16 = 5001;
const DIRECT: u16 = 5002;

/// client --(1)-- router (DNAT :8080 -> server:5001) --(2)-- server.
struct Routed {
    lab: Lab,
    client: String,
    router: String,
    server: String,
    /// The router's address on the client's side: what the client addresses.
    public: Ipv4Addr,
    client_ip: Ipv4Addr,
    server_ip: Ipv4Addr,
}

impl Routed {
    fn new() -> Routed {
        let mut lab = Lab::new().unwrap();
        let client = lab.add_ns("cl").unwrap();
        let router = lab.add_ns("rt").unwrap();
        let server = lab.add_ns("sv").unwrap();
        let (public, client_ip) = (lab.addr(1, 1), lab.addr(1, 2));
        let (inside, server_ip) = (lab.addr(2, 1), lab.addr(2, 2));
        lab.veth(
            (&client, "cl0"),
            (&router, "rt0"),
            1500,
            (&lab.mac(1, 2), &lab.mac(1, 1)),
        )
        .unwrap();
        lab.veth(
            (&router, "rt1"),
            (&server, "sv0"),
            1500,
            (&lab.mac(2, 1), &lab.mac(2, 2)),
        )
        .unwrap();
        lab::addr(&client, "cl0", client_ip, 24).unwrap();
        lab::addr(&router, "rt0", public, 24).unwrap();
        lab::addr(&router, "rt1", inside, 24).unwrap();
        lab::addr(&server, "sv0", server_ip, 24).unwrap();
        for (ns, via) in [(&client, public), (&server, inside)] {
            xtask::cmd::ip(&["-n", ns, "route", "add", "default", "via", &via.to_string()])
                .unwrap();
        }
        sysctl(&router, "net.ipv4.ip_forward=1").unwrap();
        let to = format!("{server_ip}:{SERVICE}");
        iptables(
            &router,
            &[
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-p",
                "udp",
                "-d",
                &public.to_string(),
                "--dport",
                &PUBLISHED.to_string(),
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ],
        )
        .unwrap();
        Routed {
            lab,
            client,
            router,
            server,
            public,
            client_ip,
            server_ip,
        }
    }

    /// Sends `per_port` datagrams from each of `sports` to `to`, and waits
    /// until the server's `sink` has them all.
    fn send(&self, sports: std::ops::Range<u16>, to: SocketAddrV4, per_port: u32, sink: &UdpSink) {
        let before = sink.received();
        for sport in sports.clone() {
            send_udp(
                &self.client,
                SocketAddrV4::new(self.client_ip, sport),
                to,
                per_port,
                64,
            )
            .unwrap();
        }
        let want = before + sports.len() as u64 * per_port as u64;
        assert!(
            wait_until(|| sink.received() >= want),
            "{}",
            sink.received()
        );
        assert_eq!(sink.received(), want);
    }
}

/// The one total row at `iface` of `ns` from client port `sport`.
fn row<'a>(
    f: &'a xtask::tracer::Finished,
    ns: &str,
    iface: &str,
    dir: &str,
    sport: u16,
) -> &'a Value {
    let rows: Vec<_> = flows_at(f, ns, iface, dir)
        .into_iter()
        .filter(|r| r["sport"] == sport)
        .collect();
    assert_eq!(rows.len(), 1, "{ns} {iface} {dir} {sport}: {rows:#?}");
    rows[0]
}

/// Checks the rows of the client's ports `sports` through the router: before
/// the translation to the public address without `orig`, after it to the
/// server with `orig` the public address; `per_port` packets on each.
fn assert_tied(
    l: &Routed,
    f: &xtask::tracer::Finished,
    sports: std::ops::Range<u16>,
    per_port: u64,
) {
    let (client, server) = (l.client_ip.to_string(), l.server_ip.to_string());
    let public = l.public.to_string();
    let orig = format!("{public}:{PUBLISHED}");
    for sport in sports {
        let before = row(f, &l.router, "rt0", "ingress", sport);
        assert!(
            endpoints_are(before, "udp", &client, &public, Some((sport, PUBLISHED))),
            "{before:#?}"
        );
        assert_eq!(
            (&before["packets"], &before["orig"]),
            (&per_port.into(), &Value::Null)
        );
        for (ns, iface, dir) in [(&l.router, "rt1", "egress"), (&l.server, "sv0", "ingress")] {
            let after = row(f, ns, iface, dir, sport);
            assert!(
                endpoints_are(after, "udp", &client, &server, Some((sport, SERVICE))),
                "{after:#?}"
            );
            assert_eq!(after["packets"], per_port);
            assert_eq!(after["orig"], orig.as_str(), "{after:#?}");
        }
    }
}

/// Two conversations, one translated and one routed as addressed: looked up
/// one at a time, only the translated one is tied.
#[test]
fn a_dnat_flow_is_tied_and_a_routed_one_is_not() {
    let l = Routed::new();
    let service = UdpSink::start(&l.server, SocketAddrV4::new(l.server_ip, SERVICE)).unwrap();
    let direct = UdpSink::start(&l.server, SocketAddrV4::new(l.server_ip, DIRECT)).unwrap();
    // One report at the end, with both conversations new in it.
    let run = start(l.lab.namespaces(), &["--interval", "600"]);
    l.send(
        41000..41001,
        SocketAddrV4::new(l.public, PUBLISHED),
        7,
        &service,
    );
    l.send(
        42000..42001,
        SocketAddrV4::new(l.server_ip, DIRECT),
        5,
        &direct,
    );
    let f = stop(run);
    assert_tied(&l, &f, 41000..41001, 7);
    let server = l.server_ip.to_string();
    for (ns, iface, dir) in [(&l.router, "rt0", "ingress"), (&l.server, "sv0", "ingress")] {
        let r = row(&f, ns, iface, dir, 42000);
        assert!(
            endpoints_are(
                r,
                "udp",
                &l.client_ip.to_string(),
                &server,
                Some((42000, DIRECT))
            ),
            "{r:#?}"
        );
        assert_eq!((&r["packets"], &r["orig"]), (&5.into(), &Value::Null));
    }
}

/// More new conversations in one report than are worth looking up one by
/// one (tracer looks up to 256): one dump per namespace ties them all the same.
#[test]
fn many_new_dnat_flows_are_all_tied() {
    let l = Routed::new();
    let service = UdpSink::start(&l.server, SocketAddrV4::new(l.server_ip, SERVICE)).unwrap();
    let run = start(l.lab.namespaces(), &["--interval", "600"]);
    l.send(
        43000..43260,
        SocketAddrV4::new(l.public, PUBLISHED),
        1,
        &service,
    );
    let f = stop(run);
    assert_tied(&l, &f, 43000..43260, 1);
}

/// What spares a dump of the whole table in a namespace that tracks
/// nothing: the kernel's count of one namespace's connections, exact for
/// the router's conversations and none in the client's (no rule there).
#[test]
fn conntrack_counts_each_namespace_on_its_own() {
    use tracer::sys::{conntrack, netlink::Nfnl, netns};
    let l = Routed::new();
    let service = UdpSink::start(&l.server, SocketAddrV4::new(l.server_ip, SERVICE)).unwrap();
    let count = |ns: &str| {
        let path = std::path::PathBuf::from(format!("/var/run/netns/{ns}"));
        netns::run_in(&path, || conntrack::count(&mut Nfnl::open()?))
            .unwrap()
            .unwrap()
    };
    assert_eq!(count(&l.router), 0);
    l.send(
        44000..44005,
        SocketAddrV4::new(l.public, PUBLISHED),
        3,
        &service,
    );
    assert_eq!(count(&l.router), 5);
    assert_eq!(count(&l.client), 0);
}
