//! Network devices of a namespace, read over rtnetlink.

use std::{fs::File, net::IpAddr, os::fd::AsRawFd as _};

use anyhow::{Context as _, Result, bail};
use netlink_packet_route::{
    RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{
        InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkLayerType, LinkMessage, VxlanDf,
    },
    nsid::{NsidAttribute, NsidMessage},
};

use crate::{
    sys::{
        netlink::Netlink,
        netns::{self, Netns},
    },
    topology::mtu::{NsDevices, Topology},
};

/// What kind of device it is, as far as tracer cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Veth,
    Bridge,
    Vxlan(Vxlan),
    /// Any other kind, by its rtnetlink name ("" for physical devices).
    Other(String),
}

impl Default for Kind {
    fn default() -> Self {
        Kind::Other(String::new())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Vxlan {
    pub vni: Option<u32>,
    /// UDP destination port (the kernel's default is 8472 when none is given).
    pub port: u16,
    /// The underlay device, if the VXLAN device was bound to one. It is an
    /// ifindex of the namespace of the VXLAN socket (see [`Device::link_netnsid`]).
    pub link: Option<u32>,
    /// The source address of the outer packets (`local`), IPv4 or IPv6.
    pub local: Option<IpAddr>,
    /// The default destination (`remote`) or multicast `group`.
    pub remote: Option<IpAddr>,
    /// DF on the outer IP header.
    pub df: OuterDf,
}

impl Vxlan {
    /// The underlay's address family is IPv6: by `local`, else `remote`
    /// (the kernel opens an IPv4 socket when neither is IPv6).
    pub fn ipv6(&self) -> bool {
        self.local.or(self.remote).is_some_and(|a| a.is_ipv6())
    }
}

/// The VXLAN device's `df` setting: DF on the outer IPv4 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OuterDf {
    /// Clear (the default): outer packets larger than the underlay MTU fragment.
    #[default]
    Unset,
    /// Set: outer packets larger than the underlay MTU are dropped.
    Set,
    /// Copied from the inner IPv4 header.
    Inherit,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Device {
    pub ifindex: u32,
    pub name: String,
    pub kind: Kind,
    pub mtu: u32,
    /// Frames start with an Ethernet header (what the TC parser expects).
    pub ethernet: bool,
    /// The bridge (or other master) it is enslaved to.
    pub master: Option<u32>,
    /// `IFLA_LINK`. For a veth, its peer's ifindex, in the namespace
    /// [`link_netnsid`](Self::link_netnsid) names (this one if `None`). Other
    /// kinds differ: a VXLAN device whose socket is in another namespace
    /// reports its own ifindex here, not an underlay (that is [`Vxlan::link`]).
    pub link: Option<u32>,
    /// `IFLA_LINK_NETNSID`: where the other side of the device is when that is
    /// not this namespace (a veth's peer; a VXLAN device's UDP socket and
    /// underlay), as the nsid *the namespace the dump was made in* gives it.
    /// Resolve it with [`nsids`].
    pub link_netnsid: Option<i32>,
}

impl Device {
    /// The devices tracer traces when no `--iface` is given.
    pub fn traced_by_default(&self) -> bool {
        matches!(self.kind, Kind::Veth | Kind::Bridge | Kind::Vxlan(_))
    }

    pub fn kind_name(&self) -> &str {
        match &self.kind {
            Kind::Veth => "veth",
            Kind::Bridge => "bridge",
            Kind::Vxlan(_) => "vxlan",
            Kind::Other(k) if k.is_empty() => "device",
            Kind::Other(k) => k,
        }
    }

    /// For a veth: its peer's ifindex and, when the peer is in another
    /// namespace, that namespace's nsid (as the dumping namespace numbers it).
    pub fn veth_peer(&self) -> Option<(u32, Option<i32>)> {
        match (&self.kind, self.link) {
            (Kind::Veth, Some(peer)) if peer != 0 => Some((peer, self.link_netnsid)),
            _ => None,
        }
    }
}

/// Lists the devices of the calling thread's network namespace.
pub fn list() -> Result<Vec<Device>> {
    let mut nl = Netlink::open()?;
    let msgs = nl.dump(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        "link dump",
    )?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(link) => Some(from_message(link)),
            _ => None,
        })
        .collect())
}

/// The IP addresses of the calling thread's namespace: (ifindex, address, prefix length).
pub fn addresses() -> Result<Vec<(u32, IpAddr, u8)>> {
    let mut nl = Netlink::open()?;
    let msgs = nl.dump(
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        "address dump",
    )?;
    let mut out = Vec::new();
    for m in &msgs {
        let RouteNetlinkMessage::NewAddress(a) = m else {
            continue;
        };
        // IFA_LOCAL is the device's own address; IFA_ADDRESS is the peer's
        // on point-to-point links, and the same as IFA_LOCAL otherwise.
        let mut local = None;
        let mut address = None;
        for attr in &a.attributes {
            match attr {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                _ => {}
            }
        }
        if let Some(ip) = local.or(address) {
            out.push((a.header.index, ip, a.header.prefix_len));
        }
    }
    Ok(out)
}

/// The nsid the calling thread's namespace gives the namespace open as
/// `target` (`RTM_GETNSID` with its fd); `None` if it has given it none.
pub fn nsid_of(target: &File) -> Result<Option<i32>> {
    let mut nl = Netlink::open()?;
    let mut msg = NsidMessage::default();
    msg.attributes
        .push(NsidAttribute::Fd(target.as_raw_fd() as u32));
    let answer = nl.request(RouteNetlinkMessage::GetNsId(msg), "get nsid")?;
    let RouteNetlinkMessage::NewNsId(m) = answer else {
        bail!("netlink get nsid: unexpected answer {answer:?}");
    };
    Ok(m.attributes.iter().find_map(|a| match a {
        NsidAttribute::Id(id) if *id >= 0 => Some(*id),
        _ => None,
    }))
}

/// The nsids the calling thread's namespace gives to the namespaces of
/// `traced` that have one: (nsid, inode).
///
/// A namespace only numbers the namespaces it has been made to refer to; a
/// link dump that reports a device's `link_netnsid` assigns the id, so call
/// this after [`list`] to resolve what it reported.
pub fn nsids(traced: &[Netns]) -> Result<Vec<(i32, u64)>> {
    let mut out = Vec::new();
    for ns in traced {
        let file = File::open(&ns.path).with_context(|| format!("open {}", ns.path.display()))?;
        if let Some(id) = nsid_of(&file)? {
            out.push((id, ns.inode));
        }
    }
    Ok(out)
}

/// Which of `traced` the namespace `from` calls `nsid` (a `link_netnsid`
/// read in `from`); `None` if none of them.
#[cfg(test)]
pub fn resolve_nsid<'a>(from: &Netns, nsid: i32, traced: &'a [Netns]) -> Result<Option<&'a Netns>> {
    let others: Vec<Netns> = traced
        .iter()
        .filter(|t| t.inode != from.inode)
        .cloned()
        .collect();
    let ids = netns::run_in(&from.path, || nsids(&others))??;
    Ok(ids
        .iter()
        .find(|(id, _)| *id == nsid)
        .and_then(|(_, inode)| traced.iter().find(|t| t.inode == *inode)))
}

/// Reads what [`crate::mtu`] works on from every namespace of `traced`: its
/// devices, addresses, and the nsids it gives the others.
pub fn topology(traced: &[Netns]) -> Result<Topology> {
    let mut namespaces = Vec::new();
    for ns in traced {
        let read = || -> Result<NsDevices> {
            let devices = list()?;
            let addresses = addresses()?;
            let others: Vec<Netns> = traced
                .iter()
                .filter(|t| t.inode != ns.inode)
                .cloned()
                .collect();
            Ok(NsDevices {
                name: ns.name.clone(),
                inode: ns.inode,
                devices,
                addresses,
                nsids: nsids(&others)?,
            })
        };
        namespaces.push(
            netns::run_in(&ns.path, read)?
                .with_context(|| format!("reading devices of {}", ns.name))?,
        );
    }
    Ok(Topology { namespaces })
}

fn from_message(link: &LinkMessage) -> Device {
    let mut dev = Device {
        ifindex: link.header.index,
        name: String::new(),
        kind: Kind::Other(String::new()),
        mtu: 0,
        ethernet: link.header.link_layer_type == LinkLayerType::Ether,
        master: None,
        link: None,
        link_netnsid: None,
    };
    for attr in &link.attributes {
        match attr {
            LinkAttribute::IfName(n) => dev.name = n.clone(),
            LinkAttribute::Mtu(m) => dev.mtu = *m,
            LinkAttribute::Controller(m) => dev.master = Some(*m),
            LinkAttribute::LinkInfo(infos) => dev.kind = kind(infos),
            LinkAttribute::Link(l) => dev.link = Some(*l),
            LinkAttribute::LinkNetNsId(id) if *id >= 0 => dev.link_netnsid = Some(*id),
            _ => {}
        }
    }
    dev
}

fn kind(infos: &[LinkInfo]) -> Kind {
    let mut kind = Kind::Other(String::new());
    for info in infos {
        match info {
            LinkInfo::Kind(InfoKind::Veth) => kind = Kind::Veth,
            LinkInfo::Kind(InfoKind::Bridge) => kind = Kind::Bridge,
            // The data attribute, when it came first, already made it a Vxlan.
            LinkInfo::Kind(InfoKind::Vxlan) if !matches!(kind, Kind::Vxlan(_)) => {
                kind = Kind::Vxlan(Vxlan {
                    port: 8472,
                    ..Vxlan::default()
                });
            }
            LinkInfo::Kind(InfoKind::Vxlan) => {}
            LinkInfo::Kind(other) => kind = Kind::Other(other.to_string()),
            LinkInfo::Data(InfoData::Vxlan(attrs)) => {
                let mut v = Vxlan {
                    port: 8472,
                    ..Vxlan::default()
                };
                for a in attrs {
                    match a {
                        InfoVxlan::Id(id) => v.vni = Some(*id),
                        InfoVxlan::Port(p) => v.port = *p,
                        InfoVxlan::Link(l) if *l != 0 => v.link = Some(*l),
                        InfoVxlan::Local(ip) if !ip.is_unspecified() => {
                            v.local = Some(IpAddr::V4(*ip))
                        }
                        InfoVxlan::Local6(ip) if !ip.is_unspecified() => {
                            v.local = Some(IpAddr::V6(*ip))
                        }
                        InfoVxlan::Group(ip) if !ip.is_unspecified() => {
                            v.remote = Some(IpAddr::V4(*ip))
                        }
                        InfoVxlan::Group6(ip) if !ip.is_unspecified() => {
                            v.remote = Some(IpAddr::V6(*ip))
                        }
                        InfoVxlan::Df(VxlanDf::Set) => v.df = OuterDf::Set,
                        InfoVxlan::Df(VxlanDf::Inherit) => v.df = OuterDf::Inherit,
                        _ => {}
                    }
                }
                kind = Kind::Vxlan(v);
            }
            _ => {}
        }
    }
    kind
}

/// Privileged: these read real labs (`xtask::lab`) over netlink.
#[cfg(test)]
mod tests {
    use xtask::lab::{Overlay, OverlayOpts};

    use super::*;
    use crate::topology::mtu::{self, Dev, FindingKind};

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
}
