//! Devices, namespaces and the MTU arithmetic read from real labs over netlink (needs root).

use std::net::IpAddr;

use xtask::lab::{Overlay, OverlayOpts};

use tracer::{
    sys::netns::{self, Netns},
    topology::{
        devices::*,
        mtu::{self, Dev, FindingKind},
    },
};

fn lab(overlay_mtu: u32, underlay_mtu: u32, docker: bool) -> Overlay {
    Overlay::new(OverlayOpts {
        overlay_mtu,
        underlay_mtu,
        docker,
        ..OverlayOpts::default()
    })
    .expect("build lab")
}

fn traced(names: &[&String]) -> Vec<Netns> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    netns::resolve(&names).unwrap()
}

fn find<'a>(ns: &'a [Netns], name: &str) -> &'a Netns {
    ns.iter().find(|n| n.name == name).unwrap()
}

fn devices_of(ns: &Netns) -> Vec<Device> {
    netns::run_in(&ns.path, list).unwrap().unwrap()
}

fn by_name<'a>(devs: &'a [Device], name: &str) -> &'a Device {
    devs.iter().find(|d| d.name == name).unwrap()
}

fn d(netns: &str, name: &str, mtu: u32) -> Dev {
    Dev {
        netns: netns.into(),
        name: name.into(),
        mtu,
    }
}

#[test]
fn real_lab_plain_overlay_mtu_1500_over_1500() {
    let lab = lab(1500, 1500, false);
    let ns = traced(&lab.namespaces().iter().collect::<Vec<_>>());
    let (ha, hb, c1) = (&lab.a.ns, &lab.b.ns, &lab.c1.ns);

    let devs = devices_of(find(&ns, ha));
    let vx = by_name(&devs, "vx0");
    assert_eq!(
        vx.kind,
        Kind::Vxlan(Vxlan {
            vni: Some(4242),
            port: 4789,
            link: None,
            local: Some(IpAddr::V4(lab.a.underlay_ip)),
            remote: None,
            df: OuterDf::Unset,
            // The static FDB entry for container 2 points at host B.
            fdb_remotes: vec![IpAddr::V4(lab.b.underlay_ip)],
        })
    );
    assert_eq!((vx.mtu, vx.link_netnsid), (1500, None));
    // The underlay veth's peer is in host B, under the nsid host A gives it.
    let ul0 = by_name(&devs, "ul0");
    let (peer, nsid) = ul0.veth_peer().unwrap();
    let peer_ns = resolve_nsid(find(&ns, ha), nsid.unwrap(), &ns).unwrap();
    assert_eq!(peer_ns.map(|n| n.name.as_str()), Some(hb.as_str()));
    let hb_devs = devices_of(find(&ns, hb));
    assert_eq!(by_name(&hb_devs, "ul0").ifindex, peer);
    // The container end of vc1.
    let (peer, nsid) = by_name(&devs, "vc1").veth_peer().unwrap();
    let peer_ns = resolve_nsid(find(&ns, ha), nsid.unwrap(), &ns).unwrap();
    assert_eq!(peer_ns.map(|n| n.name.as_str()), Some(c1.as_str()));
    assert_eq!(by_name(&devices_of(find(&ns, c1)), "eth0").ifindex, peer);

    let addrs = netns::run_in(&find(&ns, ha).path, addresses)
        .unwrap()
        .unwrap();
    assert!(
        addrs.contains(&(ul0.ifindex, IpAddr::V4(lab.a.underlay_ip), 24)),
        "{addrs:?}"
    );

    let topo = topology(&ns).unwrap();
    let f = mtu::findings(&topo);
    assert_eq!(f.len(), 2, "{f:#?}");
    for (f, h) in f.iter().zip([ha, hb]) {
        assert_eq!(f.kind, FindingKind::VxlanOverhead);
        assert_eq!(f.devices, [d(h, "vx0", 1500), d(h, "ul0", 1500)]);
        assert_eq!((f.overhead, f.limit), (Some(50), 1450));
    }
    let expected = format!(
        "overlay MTU 1500 + 50 VXLAN > underlay MTU 1500: packets over 1450 bytes on \
         vx0 ({ha}) fragment on ul0 ({ha}) (those with DF set, and IPv6 ones, are refused \
         with ICMP \"too big\", MTU 1450); sending that much through br0 ({ha}): eth0 ({c1}) \
         up to 1500"
    );
    assert_eq!(f[0].finding, expected);
}

#[test]
fn real_lab_docker_mtu_vxlan_socket_in_the_host_namespace() {
    let lab = lab(1500, 1500, true);
    let ns = traced(&lab.namespaces().iter().collect::<Vec<_>>());
    let (ha, ova, c1) = (&lab.a.ns, &lab.a.overlay_ns, &lab.c1.ns);

    // The moved VXLAN device: its link-netnsid names host A (where its
    // socket stayed), and IFLA_LINK is its own ifindex, not an underlay.
    let devs = devices_of(find(&ns, ova));
    let vx = by_name(&devs, "vx0");
    let Kind::Vxlan(v) = &vx.kind else {
        panic!("{vx:?}")
    };
    assert_eq!(v.link, None);
    assert_eq!(v.local, Some(IpAddr::V4(lab.a.underlay_ip)));
    assert_eq!(vx.link, Some(vx.ifindex));
    let sock_ns = resolve_nsid(find(&ns, ova), vx.link_netnsid.unwrap(), &ns).unwrap();
    assert_eq!(sock_ns.map(|n| n.name.as_str()), Some(ha.as_str()));

    let topo = topology(&ns).unwrap();
    let f = mtu::findings(&topo);
    assert_eq!(f.len(), 2, "{f:#?}");
    assert_eq!(f[0].kind, FindingKind::VxlanOverhead);
    assert_eq!(f[0].devices, [d(ova, "vx0", 1500), d(ha, "ul0", 1500)]);
    assert_eq!(
        f[1].devices,
        [d(&lab.b.overlay_ns, "vx0", 1500), d(&lab.b.ns, "ul0", 1500)]
    );
    assert_eq!(f[0].limit, 1450);

    let s = mtu::path_mtu_summary(&topo);
    assert_eq!(s[0].underlay, Some(d(ha, "ul0", 1500)));
    assert_eq!(
        s[0].underlay_how,
        format!("holds the local address {}", lab.a.underlay_ip)
    );
    assert_eq!(s[0].bridge, Some(d(ova, "br0", 1500)));
    assert_eq!(s[0].ports.len(), 1);
    assert_eq!(s[0].ports[0].port, d(ova, "vc1", 1500));
    assert_eq!(s[0].ports[0].peer, Some(d(c1, "eth0", 1500)));
    assert_eq!(s[0].inner_max, 1500);
}

#[test]
fn real_lab_docker_healthy_mtu_then_a_veth_mismatch() {
    let lab = lab(1450, 1500, true);
    let ns = traced(&lab.namespaces().iter().collect::<Vec<_>>());
    let topo = topology(&ns).unwrap();
    assert_eq!(mtu::findings(&topo), []);
    let s = mtu::path_mtu_summary(&topo);
    assert_eq!(s.len(), 2);
    assert!(
        s.iter()
            .all(|p| p.fits() == Some(true) && p.limit == Some(1450))
    );

    let c1 = &lab.c1;
    xtask::cmd::ip(&["-n", &c1.ns, "link", "set", &c1.dev, "mtu", "1400"]).unwrap();
    let f = mtu::findings(&topology(&ns).unwrap());
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].kind, FindingKind::VethMtuMismatch);
    assert_eq!(
        f[0].devices,
        [
            d(&lab.a.overlay_ns, &c1.bridge_port, 1450),
            d(&c1.ns, &c1.dev, 1400)
        ]
    );
    assert_eq!(f[0].limit, 1400);
}

#[test]
fn real_lab_docker_mtu_with_namespaces_left_out() {
    let lab = lab(1500, 1500, true);
    let (ova, c1) = (&lab.a.overlay_ns, &lab.c1.ns);

    // Host A's namespace not traced: the underlay is unknown.
    let ns = traced(&[ova, c1]);
    let s = mtu::path_mtu_summary(&topology(&ns).unwrap());
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].underlay, None);
    assert!(
        s[0].underlay_how
            .starts_with("unknown: its UDP socket is in a namespace that is not traced (nsid "),
        "{}",
        s[0].underlay_how
    );
    assert_eq!(mtu::findings(&topology(&ns).unwrap()), []);

    // The container not traced either: its veth says so.
    let ns = traced(&[ova]);
    let f = mtu::findings(&topology(&ns).unwrap());
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].kind, FindingKind::VethPeerUntraced);
    assert_eq!(f[0].devices, [d(ova, "vc1", 1500)]);
}
