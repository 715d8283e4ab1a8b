//! Network devices of a namespace, read over rtnetlink.

use std::{fs::File, net::IpAddr, os::fd::AsRawFd as _};

use anyhow::{Context as _, Result, bail};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{
        InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkLayerType, LinkMessage, VxlanDf,
    },
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage},
    nsid::{NsidAttribute, NsidMessage},
    route::{RouteAddress, RouteAttribute, RouteMessage},
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
    /// Remote VTEPs of its FDB entries (`bridge fdb ... dst A`): the only
    /// sign of the underlay of a VXLAN device without local, remote or dev,
    /// such as Docker's `vxlan0`.
    pub fdb_remotes: Vec<IpAddr>,
}

impl Vxlan {
    /// The underlay's address family is IPv6: by `local`, else `remote`
    /// (the kernel opens an IPv4 socket when neither is IPv6).
    pub fn ipv6(&self) -> bool {
        self.local
            .or(self.remote)
            .or(self.fdb_remotes.first().copied())
            .is_some_and(|a| a.is_ipv6())
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

/// Lists the devices of the calling thread's network namespace (with the
/// FDB remotes of its VXLAN devices).
pub fn list() -> Result<Vec<Device>> {
    let mut nl = Netlink::open()?;
    let msgs = nl.dump(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        "link dump",
    )?;
    let mut devices: Vec<Device> = msgs
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(link) => Some(from_message(link)),
            _ => None,
        })
        .collect();
    if devices.iter().any(|d| matches!(d.kind, Kind::Vxlan(_))) {
        let remotes = fdb_remotes(&mut nl)?;
        for d in &mut devices {
            if let Kind::Vxlan(v) = &mut d.kind {
                v.fdb_remotes = remotes
                    .iter()
                    .filter(|(i, _)| *i == d.ifindex)
                    .map(|(_, a)| *a)
                    .filter(|a| !a.is_unspecified() && !a.is_multicast())
                    .collect();
                v.fdb_remotes.sort();
                v.fdb_remotes.dedup();
            }
        }
    }
    Ok(devices)
}

/// (ifindex, destination) of every bridge FDB entry with a remote
/// destination (`NDA_DST`): VXLAN devices' remote VTEPs.
fn fdb_remotes(nl: &mut Netlink) -> Result<Vec<(u32, IpAddr)>> {
    let mut req = NeighbourMessage::default();
    req.header.family = AddressFamily::Bridge;
    let msgs = nl.dump(RouteNetlinkMessage::GetNeighbour(req), "fdb dump")?;
    let mut out = Vec::new();
    for m in &msgs {
        let RouteNetlinkMessage::NewNeighbour(n) = m else {
            continue;
        };
        for a in &n.attributes {
            let NeighbourAttribute::Destination(dst) = a else {
                continue;
            };
            let ip = match dst {
                NeighbourAddress::Inet(a) => IpAddr::V4(*a),
                NeighbourAddress::Inet6(a) => IpAddr::V6(*a),
                NeighbourAddress::Other(b) => match b.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(&b[..])?),
                    16 => IpAddr::from(<[u8; 16]>::try_from(&b[..])?),
                    _ => continue,
                },
                _ => continue,
            };
            out.push((n.header.ifindex, ip));
        }
    }
    Ok(out)
}

/// The device the calling thread's namespace routes `dst` by (`ip route get`).
pub fn route_dev(dst: IpAddr) -> Result<Option<u32>> {
    let mut nl = Netlink::open()?;
    let mut msg = RouteMessage::default();
    let (family, len, addr) = match dst {
        IpAddr::V4(a) => (AddressFamily::Inet, 32, RouteAddress::Inet(a)),
        IpAddr::V6(a) => (AddressFamily::Inet6, 128, RouteAddress::Inet6(a)),
    };
    msg.header.address_family = family;
    msg.header.destination_prefix_length = len;
    msg.attributes.push(RouteAttribute::Destination(addr));
    let answer = match nl.request(RouteNetlinkMessage::GetRoute(msg), "route get") {
        Ok(a) => a,
        // No route to it: unreachable.
        Err(_) => return Ok(None),
    };
    let RouteNetlinkMessage::NewRoute(r) = answer else {
        return Ok(None);
    };
    Ok(r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    }))
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
/// devices, addresses, the nsids it gives the others, and the routes to the
/// FDB remotes of VXLAN devices whose socket it holds.
pub fn topology(traced: &[Netns]) -> Result<Topology> {
    let mut namespaces = Vec::new();
    for ns in traced {
        namespaces.push(read_ns(ns, traced)?);
    }
    let mut topo = Topology { namespaces };
    add_routes(&mut topo, traced);
    Ok(topo)
}

/// [`topology`] of a live host: a namespace that vanished meanwhile is left
/// out. Returns the namespaces read, in the order of `traced`.
pub fn topology_lenient(traced: &[Netns]) -> (Vec<Netns>, Topology) {
    let mut kept = Vec::new();
    let mut namespaces = Vec::new();
    for ns in traced {
        if let Ok(n) = read_ns(ns, traced) {
            kept.push(ns.clone());
            namespaces.push(n);
        }
    }
    let mut topo = Topology { namespaces };
    add_routes(&mut topo, &kept);
    (kept, topo)
}

fn read_ns(ns: &Netns, traced: &[Netns]) -> Result<NsDevices> {
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
            routes: Vec::new(),
        })
    };
    netns::run_in(&ns.path, read)?.with_context(|| format!("reading devices of {}", ns.name))
}

/// Looks up, in the namespace of each VXLAN device's socket, the route to
/// each of its FDB remotes (`topo.namespaces` in the order of `traced`).
fn add_routes(topo: &mut Topology, traced: &[Netns]) {
    let mut wanted: Vec<(usize, IpAddr)> = Vec::new();
    for at in topo.all() {
        if let Kind::Vxlan(v) = &topo.dev(at).kind
            && let Ok(sock) = topo.socket_ns(at)
        {
            wanted.extend(v.fdb_remotes.iter().map(|r| (sock, *r)));
        }
    }
    wanted.sort();
    wanted.dedup();
    for (ns, dst) in wanted {
        let found = netns::run_in(&traced[ns].path, || route_dev(dst));
        if let Ok(Ok(Some(oif))) = found {
            topo.namespaces[ns].routes.push((dst, oif));
        }
    }
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
