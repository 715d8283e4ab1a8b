//! The MTU arithmetic on topologies built by hand.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;

const HA: u64 = 101;
const HB: u64 = 102;
const OVA: u64 = 103;
const C1: u64 = 105;

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn dev(ifindex: u32, name: &str, kind: Kind, mtu: u32) -> Device {
    Device {
        ifindex,
        name: name.into(),
        kind,
        mtu,
        ethernet: true,
        ..Device::default()
    }
}

fn lo() -> Device {
    Device {
        ethernet: false,
        ..dev(1, "lo", Kind::Other(String::new()), 65536)
    }
}

fn veth(ifindex: u32, name: &str, mtu: u32, peer: u32, netnsid: Option<i32>) -> Device {
    Device {
        link: Some(peer),
        link_netnsid: netnsid,
        ..dev(ifindex, name, Kind::Veth, mtu)
    }
}

fn vxlan_kind(local: Option<IpAddr>) -> Kind {
    Kind::Vxlan(Vxlan {
        vni: Some(4242),
        port: 4789,
        local,
        ..Vxlan::default()
    })
}

fn ns(
    name: &str,
    inode: u64,
    devices: Vec<Device>,
    addresses: Vec<(u32, IpAddr, u8)>,
    nsids: Vec<(i32, u64)>,
) -> NsDevices {
    NsDevices {
        name: name.into(),
        inode,
        devices,
        addresses,
        nsids,
        routes: Vec::new(),
    }
}

fn with_master(d: Device, master: u32) -> Device {
    Device {
        master: Some(master),
        ..d
    }
}

/// The lab's overlay as Docker builds it: the bridge, VXLAN device and
/// container ends of host A in a namespace of their own (tl1-ova), the
/// VXLAN socket and underlay in tl1-ha. Host B is the same. Every
/// namespace numbers the others differently, as the kernel does.
fn docker(overlay: u32, underlay: u32, container: u32) -> Topology {
    let host = |name: &str, inode: u64, ip: IpAddr, peer_ns: (i32, u64), ov: (i32, u64)| {
        ns(
            name,
            inode,
            vec![lo(), veth(2, "ul0", underlay, 2, Some(peer_ns.0))],
            vec![(1, v4(127, 0, 0, 1), 8), (2, ip, 24)],
            vec![peer_ns, ov],
        )
    };
    let overlay_ns =
        |name: &str, inode: u64, ip: IpAddr, host: (i32, u64), c: (i32, u64), port: &str| {
            ns(
                name,
                inode,
                vec![
                    lo(),
                    dev(2, "br0", Kind::Bridge, overlay),
                    Device {
                        link: Some(3),
                        link_netnsid: Some(host.0),
                        ..with_master(dev(3, "vx0", vxlan_kind(Some(ip)), overlay), 2)
                    },
                    with_master(veth(4, port, container, 2, Some(c.0)), 2),
                ],
                vec![(1, v4(127, 0, 0, 1), 8)],
                vec![host, c],
            )
        };
    let container_ns = |name: &str, inode: u64, ip: IpAddr, ov: (i32, u64)| {
        ns(
            name,
            inode,
            vec![lo(), veth(2, "eth0", container, 4, Some(ov.0))],
            vec![(1, v4(127, 0, 0, 1), 8), (2, ip, 24)],
            vec![ov],
        )
    };
    Topology {
        namespaces: vec![
            host("tl1-ha", HA, v4(10, 1, 1, 1), (5, HB), (9, OVA)),
            host("tl1-hb", HB, v4(10, 1, 1, 2), (0, HA), (1, 104)),
            overlay_ns("tl1-ova", OVA, v4(10, 1, 1, 1), (7, HA), (3, C1), "vc1"),
            overlay_ns("tl1-ovb", 104, v4(10, 1, 1, 2), (0, HB), (1, 106), "vc2"),
            container_ns("tl1-c1", C1, v4(10, 1, 100, 1), (2, OVA)),
            container_ns("tl1-c2", 106, v4(10, 1, 100, 2), (0, 104)),
        ],
    }
}

/// Host A of the plain lab: everything in tl1-ha, container in tl1-c1.
fn plain(overlay: u32, underlay: u32, vx: Kind) -> Topology {
    Topology {
        namespaces: vec![
            ns(
                "tl1-ha",
                HA,
                vec![
                    lo(),
                    dev(2, "ul0", Kind::Other(String::new()), underlay),
                    dev(3, "br0", Kind::Bridge, overlay),
                    with_master(dev(4, "vx0", vx, overlay), 3),
                    with_master(veth(5, "vc1", overlay, 2, Some(4)), 3),
                ],
                vec![(2, v4(10, 1, 1, 1), 24)],
                vec![(4, C1)],
            ),
            ns(
                "tl1-c1",
                C1,
                vec![lo(), veth(2, "eth0", overlay, 5, Some(0))],
                vec![(2, v4(10, 1, 100, 1), 24)],
                vec![(0, HA)],
            ),
        ],
    }
}

fn d(netns: &str, name: &str, mtu: u32) -> Dev {
    Dev {
        netns: netns.into(),
        name: name.into(),
        mtu,
    }
}

fn row<'a>(
    netns: &'a str,
    iface: &'a str,
    dir: Direction,
    max_len: u32,
    vni: Option<u32>,
) -> FlowObs<'a> {
    FlowObs {
        netns,
        iface,
        dir,
        max_len,
        vni,
    }
}

#[test]
fn overhead_is_50_over_ipv4_and_70_over_ipv6() {
    assert_eq!(vxlan_overhead(false), 50);
    assert_eq!(vxlan_overhead(true), 70);
}

#[test]
fn healthy_docker_overlay_has_no_finding_and_a_full_summary() {
    let topo = docker(1450, 1500, 1450);
    assert_eq!(findings(&topo), []);
    let s = path_mtu_summary(&topo);
    assert_eq!(s.len(), 2);
    let a = &s[0];
    assert_eq!(a.vxlan, d("tl1-ova", "vx0", 1450));
    assert_eq!(
        (a.vni, a.port, a.ipv6, a.overhead),
        (Some(4242), 4789, false, 50)
    );
    // The VXLAN device's link-netnsid (7, as tl1-ova numbers tl1-ha) says
    // where its socket is; there the local address is on ul0.
    assert_eq!(a.underlay, Some(d("tl1-ha", "ul0", 1500)));
    assert_eq!(a.underlay_how, "holds the local address 10.1.1.1");
    assert_eq!(a.limit, Some(1450));
    assert_eq!(a.fits(), Some(true));
    assert_eq!(a.bridge, Some(d("tl1-ova", "br0", 1450)));
    assert_eq!(
        a.ports,
        [Port {
            port: d("tl1-ova", "vc1", 1450),
            peer: Some(d("tl1-c1", "eth0", 1450)),
            sends_up_to: 1450,
            note: None,
        }]
    );
    assert_eq!(a.inner_max, 1450);
    assert_eq!(s[1].vxlan, d("tl1-ovb", "vx0", 1450));
    assert_eq!(s[1].underlay, Some(d("tl1-hb", "ul0", 1500)));
}

#[test]
fn overlay_1500_over_underlay_1500_is_scenario_3() {
    let topo = docker(1500, 1500, 1500);
    let f = findings(&topo);
    assert_eq!(f.len(), 2, "{f:#?}");
    assert_eq!(f[0].kind, FindingKind::VxlanOverhead);
    assert_eq!(
        f[0].devices,
        [d("tl1-ova", "vx0", 1500), d("tl1-ha", "ul0", 1500)]
    );
    assert_eq!((f[0].overhead, f[0].limit), (Some(50), 1450));
    assert_eq!(
        f[0].finding,
        "overlay MTU 1500 + 50 VXLAN > underlay MTU 1500: packets over 1450 bytes on \
         vx0 (tl1-ova) fragment on ul0 (tl1-ha) (those with DF set, and IPv6 ones, are \
         refused with ICMP \"too big\", MTU 1450); sending that much through br0 \
         (tl1-ova): eth0 (tl1-c1) up to 1500"
    );
    assert_eq!(
        f[1].devices,
        [d("tl1-ovb", "vx0", 1500), d("tl1-hb", "ul0", 1500)]
    );
    let s = path_mtu_summary(&topo);
    assert_eq!((s[0].fits(), s[0].inner_max), (Some(false), 1500));
}

#[test]
fn plain_lab_finding_reads_as_the_issue_says() {
    let topo = plain(1500, 1500, vxlan_kind(Some(v4(10, 1, 1, 1))));
    let f = findings(&topo);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert!(
        f[0].finding.starts_with(
            "overlay MTU 1500 + 50 VXLAN > underlay MTU 1500: packets over 1450 bytes on \
             vx0 (tl1-ha) fragment on ul0 (tl1-ha) ("
        ),
        "{}",
        f[0].finding
    );
    assert_eq!(
        f[0].devices,
        [d("tl1-ha", "vx0", 1500), d("tl1-ha", "ul0", 1500)]
    );
}

#[test]
fn containers_below_the_limit_are_not_affected() {
    let topo = docker(1500, 1500, 1400);
    let f: Vec<Finding> = findings(&topo)
        .into_iter()
        .filter(|f| f.devices[0].netns == "tl1-ova")
        .collect();
    assert_eq!(f.len(), 1, "{f:#?}");
    assert!(
        f[0].finding.ends_with(
            "; the ports of br0 (tl1-ova) send at most 1400, so no container traffic is affected"
        ),
        "{}",
        f[0].finding
    );
}

#[test]
fn ipv6_underlay_costs_70_and_does_not_fragment() {
    let local = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));
    let mut topo = plain(1450, 1500, vxlan_kind(Some(local)));
    topo.namespaces[0].addresses.push((2, local, 64));
    let s = path_mtu_summary(&topo);
    assert_eq!(
        (s[0].ipv6, s[0].overhead, s[0].limit),
        (true, 70, Some(1430))
    );
    assert_eq!(s[0].underlay_how, "holds the local address fd00::1");
    let f = findings(&topo);
    assert_eq!(f.len(), 1);
    assert_eq!((f[0].overhead, f[0].limit), (Some(70), 1430));
    assert!(
        f[0].finding.starts_with(
            "overlay MTU 1450 + 70 VXLAN > underlay MTU 1500: packets over 1430 bytes on \
             vx0 (tl1-ha) are dropped on ul0 (tl1-ha) (outer IPv6 packets are not fragmented)"
        ),
        "{}",
        f[0].finding
    );
    // A remote alone decides the family too.
    let v = Vxlan {
        remote: Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ..Vxlan::default()
    };
    assert!(v.ipv6());
}

#[test]
fn bound_link_wins_over_the_local_address() {
    let mut topo = plain(
        1500,
        1500,
        Kind::Vxlan(Vxlan {
            vni: Some(7),
            port: 4789,
            link: Some(6),
            local: Some(v4(10, 1, 1, 1)),
            ..Vxlan::default()
        }),
    );
    topo.namespaces[0]
        .devices
        .push(dev(6, "jumbo0", Kind::Other(String::new()), 9000));
    let s = path_mtu_summary(&topo);
    assert_eq!(s[0].underlay, Some(d("tl1-ha", "jumbo0", 9000)));
    assert_eq!(s[0].underlay_how, "bound to it (dev)");
    assert_eq!(s[0].limit, Some(8950));
    assert_eq!(findings(&topo), []);

    // Bound to a device that is not there: unknown, not the local address's.
    topo.namespaces[0].devices.pop();
    let s = path_mtu_summary(&topo);
    assert_eq!(s[0].underlay, None);
    assert_eq!(
        s[0].underlay_how,
        "unknown: bound to ifindex 6, not found in tl1-ha"
    );
    assert_eq!(findings(&topo), []);
}

#[test]
fn remote_on_a_connected_subnet_finds_the_underlay() {
    let topo = plain(
        1500,
        1500,
        Kind::Vxlan(Vxlan {
            remote: Some(v4(10, 1, 1, 2)),
            port: 4789,
            ..Vxlan::default()
        }),
    );
    let s = path_mtu_summary(&topo);
    assert_eq!(s[0].underlay, Some(d("tl1-ha", "ul0", 1500)));
    assert_eq!(
        s[0].underlay_how,
        "its subnet 10.1.1.1/24 holds the remote 10.1.1.2"
    );
    assert_eq!(findings(&topo).len(), 1);
}

#[test]
fn underlay_unknown_says_why() {
    // Nothing to go by.
    let topo = plain(1500, 1500, vxlan_kind(None));
    let s = path_mtu_summary(&topo);
    assert_eq!((s[0].underlay.as_ref(), s[0].limit), (None, None));
    assert_eq!(
        s[0].underlay_how,
        "unknown: it is bound to no device and has no local or unicast remote address, nor \
         remotes in its FDB"
    );
    assert_eq!(s[0].fits(), None);
    assert_eq!(findings(&topo), []);

    // A local address nobody holds.
    let topo = plain(1500, 1500, vxlan_kind(Some(v4(192, 0, 2, 1))));
    assert_eq!(
        path_mtu_summary(&topo)[0].underlay_how,
        "unknown: no device in tl1-ha holds its local address 192.0.2.1"
    );

    // Docker style, the host namespace (socket and underlay) not traced.
    let mut topo = docker(1500, 1500, 1500);
    topo.namespaces.retain(|n| n.inode != HA);
    let s = path_mtu_summary(&topo);
    let a = s.iter().find(|p| p.vxlan.netns == "tl1-ova").unwrap();
    assert_eq!(a.underlay, None);
    assert_eq!(
        a.underlay_how,
        "unknown: its UDP socket is in a namespace that is not traced (nsid 7 in tl1-ova)"
    );
    let f = findings(&topo);
    assert!(!f.iter().any(|f| f.devices[0].netns == "tl1-ova"), "{f:#?}");
}

#[test]
fn veth_mismatch_is_reported_once_per_pair() {
    let mut topo = docker(1450, 1500, 1450);
    // tl1-c1's eth0 at 1400, its peer vc1 at 1450.
    topo.namespaces[4].devices[1].mtu = 1400;
    let f = findings(&topo);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].kind, FindingKind::VethMtuMismatch);
    assert_eq!(
        f[0].devices,
        [d("tl1-ova", "vc1", 1450), d("tl1-c1", "eth0", 1400)]
    );
    assert_eq!((f[0].overhead, f[0].limit), (None, 1400));
    assert_eq!(
        f[0].finding,
        "veth ends differ: vc1 (tl1-ova) mtu 1450, eth0 (tl1-c1) mtu 1400: packets over \
         1400 bytes sent from vc1 are dropped on the way to eth0 (drop reason NOT_SPECIFIED \
         at __dev_forward_skb)"
    );
    // The container sends at most 1400 into the overlay.
    let s = path_mtu_summary(&topo);
    assert_eq!(s[0].ports[0].sends_up_to, 1400);
    assert_eq!(s[0].inner_max, 1400);
}

#[test]
fn veth_whose_peer_is_not_traced_says_so() {
    let mut topo = docker(1450, 1500, 1450);
    topo.namespaces.retain(|n| n.inode != C1);
    let f = findings(&topo);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].kind, FindingKind::VethPeerUntraced);
    assert_eq!(f[0].devices, [d("tl1-ova", "vc1", 1450)]);
    assert_eq!(
        f[0].finding,
        "veth vc1 (tl1-ova) mtu 1450: its peer is in a namespace that is not traced \
         (nsid 3), so the MTUs of its two ends cannot be compared"
    );
    assert!(
        affected(
            &f[0],
            &[row("tl1-ova", "vc1", Direction::Egress, 9000, None)]
        )
        .is_empty()
    );
    let s = path_mtu_summary(&topo);
    assert_eq!(s[0].ports[0].peer, None);
    assert_eq!(
        s[0].ports[0].note.as_deref(),
        Some("its peer is in a namespace that is not traced (nsid 3)")
    );
}

#[test]
fn bridge_port_larger_than_the_vxlan_device() {
    let mut topo = docker(1450, 1500, 1500);
    // Only host A's side.
    topo.namespaces
        .retain(|n| [HA, HB, OVA, C1].contains(&n.inode));
    let f = findings(&topo);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].kind, FindingKind::OverlayPortMtu);
    assert_eq!(
        f[0].devices,
        [
            d("tl1-ova", "vx0", 1450),
            d("tl1-ova", "vc1", 1500),
            d("tl1-c1", "eth0", 1500)
        ]
    );
    assert_eq!(f[0].limit, 1450);
    assert_eq!(
        f[0].finding,
        "br0 (tl1-ova) ports take larger packets than vx0 (tl1-ova) mtu 1450: vc1 (tl1-ova) \
         mtu 1500 (peer eth0 (tl1-c1) mtu 1500): packets over 1450 bytes from them to vx0 are \
         dropped by the bridge (with bridge-nf-call-iptables on, those without DF are \
         fragmented instead)"
    );
    let rows = [
        row("tl1-ova", "vc1", Direction::Ingress, 1514, None),
        row("tl1-ova", "vc1", Direction::Ingress, 1464, None),
        row("tl1-ova", "vc1", Direction::Egress, 1514, None),
    ];
    assert_eq!(affected(&f[0], &rows), [&rows[0]]);
}

#[test]
fn affected_flows_exceed_the_limit_where_it_bites() {
    let topo = docker(1500, 1500, 1500);
    let f = &findings(&topo)[0];
    let rows = [
        // Inner packets into host A's VXLAN device.
        row("tl1-ova", "vx0", Direction::Egress, 1514, None),
        row("tl1-ova", "vx0", Direction::Egress, 1464, None),
        row("tl1-ova", "vx0", Direction::Egress, 1465, None),
        row("tl1-ova", "vx0", Direction::Ingress, 1514, None),
        // Outer packets on the underlay: 1514 carries 1450 (or is a first fragment).
        row("tl1-ha", "ul0", Direction::Egress, 1514, Some(4242)),
        row("tl1-ha", "ul0", Direction::Egress, 1564, Some(4242)),
        row("tl1-ha", "ul0", Direction::Egress, 1564, Some(99)),
        row("tl1-ha", "ul0", Direction::Egress, 1514, None),
        // Host B is another finding.
        row("tl1-ovb", "vx0", Direction::Egress, 1514, None),
        // Where the container sends: not a device of the finding.
        row("tl1-c1", "eth0", Direction::Egress, 1514, None),
    ];
    let hit: Vec<usize> = affected(f, &rows)
        .iter()
        .map(|r| rows.iter().position(|x| std::ptr::eq(x, *r)).unwrap())
        .collect();
    assert_eq!(hit, [0, 2, 5]);

    let mut topo = docker(1450, 1500, 1450);
    topo.namespaces[4].devices[1].mtu = 1400;
    let f = &findings(&topo)[0];
    let rows = [
        row("tl1-ova", "vc1", Direction::Egress, 1414, None),
        row("tl1-ova", "vc1", Direction::Egress, 1415, None),
        row("tl1-c1", "eth0", Direction::Egress, 1514, None),
        row("tl1-ova", "vc1", Direction::Ingress, 1464, None),
    ];
    assert_eq!(affected(f, &rows), [&rows[1]]);
}

#[test]
fn findings_serialize_without_their_watch_list() {
    let f = &findings(&docker(1500, 1500, 1500))[0];
    let j = serde_json::to_value(f).unwrap();
    assert_eq!(j["kind"], "vxlan_overhead");
    assert_eq!(j["devices"][1]["name"], "ul0");
    assert_eq!(j["overhead"], 50);
    assert_eq!(j["limit"], 1450);
    assert!(j.get("watch").is_none());
    assert_eq!(FindingKind::VethPeerUntraced.as_str(), "veth_peer_untraced");
}

/// Docker's overlay: `vxlan0` without local, remote or dev; the remote
/// node only in its FDB, and the host routing to it by its underlay.
#[test]
fn docker_vxlan_underlay_from_the_fdb_and_the_route() {
    let mut topo = docker(1450, 1400, 1450);
    for n in &mut topo.namespaces {
        for d in &mut n.devices {
            if let Kind::Vxlan(v) = &mut d.kind {
                v.local = None;
                v.fdb_remotes = vec![v4(10, 1, 1, 2)];
            }
        }
    }
    // Without the route the underlay stays unknown, and says why.
    let s = path_mtu_summary(&topo);
    assert_eq!(s[0].underlay, None);
    assert_eq!(
        s[0].underlay_how,
        "unknown: tl1-ha has no route to its FDB remotes 10.1.1.2"
    );
    topo.namespaces[0].routes = vec![(v4(10, 1, 1, 2), 2)];
    let s = path_mtu_summary(&topo);
    assert_eq!(s[0].underlay, Some(d("tl1-ha", "ul0", 1400)));
    assert_eq!(
        s[0].underlay_how,
        "tl1-ha routes its FDB remote 10.1.1.2 by it"
    );
    let f: Vec<Finding> = findings(&topo)
        .into_iter()
        .filter(|f| f.kind == FindingKind::VxlanOverhead && f.devices[0].netns == "tl1-ova")
        .collect();
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].limit, 1350);
}

/// The finding as its text row says it, with the flows that hit it.
#[test]
fn finding_as_a_text_line() {
    use crate::output::{FlowRow, MtuRow, Scope, text::mtu_line};
    let topo = plain(1500, 1500, vxlan_kind(Some(v4(10, 1, 1, 1))));
    let mut f = findings(&topo);
    let mut outer = tracer_ebpf::Tuple {
        family: tracer_ebpf::FAMILY_IPV4,
        proto: 1,
        ..Default::default()
    };
    outer.src[..4].copy_from_slice(&[10, 1, 100, 1]);
    outer.dst[..4].copy_from_slice(&[10, 1, 100, 2]);
    let flow = |netns: &str, max_len| FlowRow {
        netns: netns.into(),
        iface: "eth0".into(),
        dir: Direction::Egress,
        id: tracer_ebpf::FlowId {
            outer,
            ..Default::default()
        },
        counts: crate::collectors::flows::Counts {
            max_len,
            ..Default::default()
        },
    };
    let row = MtuRow {
        finding: f.remove(0),
        flows: vec![flow("tl1-c1", 1472), flow("tl1-c2", 1500)],
    };
    let expected = "mtu total kind=vxlan_overhead limit=1450 devices=tl1-ha/vx0:1500,tl1-ha/ul0:1500 \
         overhead=50 finding=\"overlay MTU 1500 + 50 VXLAN > underlay MTU 1500: packets over 1450 \
         bytes on vx0 (tl1-ha) fragment on ul0 (tl1-ha) (those with DF set, and IPv6 ones, are \
         refused with ICMP \\\"too big\\\", MTU 1450); sending that much through br0 (tl1-ha): eth0 \
         (tl1-c1) up to 1500\" flows=2 [tl1-c1 eth0 icmp 10.1.100.1 > 10.1.100.2 max_len=1472] \
         [tl1-c2 eth0 icmp 10.1.100.1 > 10.1.100.2 max_len=1500]";
    assert_eq!(mtu_line(Scope::Total, &row).to_string(), expected);
}
