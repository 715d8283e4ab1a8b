//! The MTU arithmetic of an overlay: what fits through each VXLAN device and
//! veth pair of the traced namespaces, and which observed flows do not.
//!
//! Pure: it works on a [`Topology`] read beforehand (`devices::topology`),
//! so every case can be built by hand in tests.
//!
//! Sizes are IP packet lengths (what an MTU limits) unless said otherwise.
//! VXLAN adds, to an inner IP packet: the inner Ethernet header (14), VXLAN
//! (8), UDP (8) and the outer IP header (20 for IPv4, 40 for IPv6): 50 or 70.

use std::net::IpAddr;

use serde::Serialize;

use crate::{
    model::Direction,
    topology::devices::{Device, Kind, OuterDf, Vxlan},
};

pub const ETH_HLEN: u32 = 14;
pub const VXLAN_HLEN: u32 = 8;
pub const UDP_HLEN: u32 = 8;
pub const IPV4_HLEN: u32 = 20;
pub const IPV6_HLEN: u32 = 40;

/// What VXLAN adds to an inner IP packet: 50 over an IPv4 underlay, 70 over IPv6.
pub fn vxlan_overhead(ipv6_underlay: bool) -> u32 {
    let ip = if ipv6_underlay { IPV6_HLEN } else { IPV4_HLEN };
    ETH_HLEN + VXLAN_HLEN + UDP_HLEN + ip
}

/// What was read from one traced namespace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NsDevices {
    /// Display name (as in tracer's rows).
    pub name: String,
    /// nsfs inode.
    pub inode: u64,
    pub devices: Vec<Device>,
    /// (ifindex, address, prefix length).
    pub addresses: Vec<(u32, IpAddr, u8)>,
    /// The nsid this namespace gives each other traced namespace: (nsid, inode).
    /// `link_netnsid`s of this namespace's devices are resolved with it.
    pub nsids: Vec<(i32, u64)>,
    /// Routes this namespace has to the FDB remotes of VXLAN devices whose
    /// socket is here: (remote, ifindex of the device it leaves by).
    pub routes: Vec<(IpAddr, u32)>,
}

/// Every traced namespace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Topology {
    pub namespaces: Vec<NsDevices>,
}

/// A device, named as tracer's rows name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dev {
    pub netns: String,
    pub name: String,
    pub mtu: u32,
}

impl std::fmt::Display for Dev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.netns)
    }
}

/// A port of the bridge a VXLAN device is enslaved to: what feeds the overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Port {
    pub port: Dev,
    /// The other end of a veth port (the container's interface), if traced.
    pub peer: Option<Dev>,
    /// Largest packet that can come in through this port: the smaller of
    /// its MTU and its peer's.
    pub sends_up_to: u32,
    /// Why the peer is missing, if it is a veth whose peer is not traced.
    pub note: Option<String>,
}

/// The MTU path of one VXLAN device, problem or not (the MTU view).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VxlanPath {
    /// The VXLAN device; its MTU is the overlay MTU.
    pub vxlan: Dev,
    pub vni: Option<u32>,
    pub port: u16,
    /// The underlay is IPv6 (by the VXLAN `local`/`remote` address).
    pub ipv6: bool,
    /// 50 (IPv4 underlay) or 70 (IPv6).
    pub overhead: u32,
    /// The device the encapsulated packets leave by, if found.
    pub underlay: Option<Dev>,
    /// How the underlay was found, or why it was not.
    pub underlay_how: String,
    /// Largest inner IP packet that fits the underlay: underlay MTU - overhead.
    pub limit: Option<u32>,
    /// The bridge the VXLAN device is enslaved to.
    pub bridge: Option<Dev>,
    /// The bridge has an IP address: the host sends through it too.
    pub bridge_has_address: bool,
    /// The bridge's other ports.
    pub ports: Vec<Port>,
    /// Largest inner packet the bridge's ports (and the bridge itself, if it
    /// has an address) can push through the VXLAN device; its MTU if no port.
    pub inner_max: u32,
}

impl VxlanPath {
    /// Overlay MTU + overhead fits the underlay MTU; `None` if the underlay is unknown.
    pub fn fits(&self) -> Option<bool> {
        self.limit.map(|l| self.vxlan.mtu <= l)
    }

    /// One line for the start-up summary.
    pub fn summary(&self) -> String {
        let overlay = format!(
            "VXLAN {} MTU {} + {} overhead",
            self.vxlan, self.vxlan.mtu, self.overhead
        );
        match (&self.underlay, self.fits()) {
            (Some(u), Some(true)) => format!(
                "{overlay} = {} fits underlay {u} MTU {}",
                self.vxlan.mtu + self.overhead,
                u.mtu
            ),
            (Some(u), _) => format!(
                "{overlay} = {} does NOT fit underlay {u} MTU {}",
                self.vxlan.mtu + self.overhead,
                u.mtu
            ),
            (None, _) => format!("{overlay}; underlay unknown: {}", self.underlay_how),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// VXLAN MTU + overhead exceeds the underlay MTU.
    VxlanOverhead,
    /// A port of the VXLAN device's bridge takes larger packets than the VXLAN device.
    OverlayPortMtu,
    /// The two ends of a veth pair have different MTUs.
    VethMtuMismatch,
    /// A veth's peer is in a namespace that is not traced: its MTU is unknown.
    VethPeerUntraced,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::VxlanOverhead => "vxlan_overhead",
            FindingKind::OverlayPortMtu => "overlay_port_mtu",
            FindingKind::VethMtuMismatch => "veth_mtu_mismatch",
            FindingKind::VethPeerUntraced => "veth_peer_untraced",
        }
    }
}

/// An MTU problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    /// The devices involved, the one packets are sent into first.
    pub devices: Vec<Dev>,
    /// The VXLAN overhead, for VXLAN findings.
    pub overhead: Option<u32>,
    /// Largest IP packet (inner packet for VXLAN) that gets through.
    pub limit: u32,
    /// The same in plain words.
    pub finding: String,
    /// Where flows that hit the problem show, and how to size them.
    #[serde(skip)]
    watch: Vec<Watch>,
}

/// One observed flow row, as much of it as the MTU arithmetic needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowObs<'a> {
    pub netns: &'a str,
    pub iface: &'a str,
    pub dir: Direction,
    /// Largest packet, in bytes from the Ethernet header (IP length + 14).
    pub max_len: u32,
    /// The row's VNI if the packet is VXLAN (`max_len` is then the outer packet's).
    pub vni: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Watch {
    /// Any row at this device and direction, sized by its IP length.
    Plain {
        netns: String,
        iface: String,
        dir: Direction,
    },
    /// VXLAN rows (of `vni`, if known) at this device and direction, sized
    /// by the IP length of the packet they carry.
    Encapsulated {
        netns: String,
        iface: String,
        dir: Direction,
        vni: Option<u32>,
        overhead: u32,
    },
}

impl Finding {
    /// The flow's largest packet exceeds the limit at a device of the finding,
    /// where the problem bites (see [`affected`]).
    pub fn hits(&self, flow: &FlowObs) -> bool {
        let ip_len = flow.max_len.saturating_sub(ETH_HLEN);
        self.watch.iter().any(|w| match w {
            Watch::Plain { netns, iface, dir } => {
                *netns == flow.netns
                    && *iface == flow.iface
                    && *dir == flow.dir
                    && ip_len > self.limit
            }
            Watch::Encapsulated {
                netns,
                iface,
                dir,
                vni,
                overhead,
            } => {
                *netns == flow.netns
                    && *iface == flow.iface
                    && *dir == flow.dir
                    && flow.vni.is_some()
                    && (vni.is_none() || *vni == flow.vni)
                    && ip_len.saturating_sub(*overhead) > self.limit
            }
        })
    }
}

/// The flows that hit `finding`: their largest packet exceeds its limit
/// where the problem bites:
///
/// - `vxlan_overhead`: rows leaving by the VXLAN device (egress; inner
///   packets), and VXLAN rows of its VNI leaving by the underlay, sized by the
///   packet they carry. The underlay rarely shows one: the outer packet is
///   fragmented before tracer sees it, so it shows as fragments.
/// - `veth_mtu_mismatch`: rows leaving by the end with the larger MTU.
/// - `overlay_port_mtu`: rows entering the bridge by the offending ports
///   (flows between two containers of the same bridge show there too).
/// - `veth_peer_untraced`: none.
///
/// The kernel lets 4 bytes more through a veth or bridge port than the MTU
/// (room for a VLAN tag), so a flow up to 4 bytes over the limit may pass.
#[cfg(test)]
pub fn affected<'a>(finding: &Finding, flows: &'a [FlowObs<'a>]) -> Vec<&'a FlowObs<'a>> {
    flows.iter().filter(|f| finding.hits(f)).collect()
}

/// (namespace index, device index) in a [`Topology`].
pub(crate) type At = (usize, usize);

/// Where a veth's peer is.
pub(crate) enum Peer {
    Traced(At),
    /// In a namespace that is not traced (`nsid` as the veth's namespace numbers it).
    Untraced(Option<i32>),
}

impl Topology {
    pub(crate) fn dev(&self, at: At) -> &Device {
        &self.namespaces[at.0].devices[at.1]
    }

    fn devref(&self, at: At) -> Dev {
        let d = self.dev(at);
        Dev {
            netns: self.namespaces[at.0].name.clone(),
            name: d.name.clone(),
            mtu: d.mtu,
        }
    }

    pub(crate) fn by_ifindex(&self, ns: usize, ifindex: u32) -> Option<At> {
        self.namespaces[ns]
            .devices
            .iter()
            .position(|d| d.ifindex == ifindex)
            .map(|i| (ns, i))
    }

    /// The namespace of the UDP socket of the VXLAN device at `at`;
    /// `Err(nsid)` if it is not traced.
    pub(crate) fn socket_ns(&self, at: At) -> Result<usize, i32> {
        self.ns_of(at.0, self.dev(at).link_netnsid)
    }

    /// The namespace a `link_netnsid` read in namespace `from` refers to;
    /// `Err(nsid)` if it is not traced.
    fn ns_of(&self, from: usize, netnsid: Option<i32>) -> Result<usize, i32> {
        let Some(id) = netnsid else {
            return Ok(from);
        };
        self.namespaces[from]
            .nsids
            .iter()
            .find(|(n, _)| *n == id)
            .and_then(|(_, inode)| self.namespaces.iter().position(|n| n.inode == *inode))
            .ok_or(id)
    }

    /// The other end of the veth at `at`; `None` if it is not a veth or its
    /// peer is gone.
    pub(crate) fn peer(&self, at: At) -> Option<Peer> {
        let (ifindex, netnsid) = self.dev(at).veth_peer()?;
        match self.ns_of(at.0, netnsid) {
            Err(id) => Some(Peer::Untraced(Some(id))),
            Ok(ns) => match self.by_ifindex(ns, ifindex) {
                Some(p) if self.dev(p).kind == Kind::Veth => Some(Peer::Traced(p)),
                Some(_) => None,
                None if netnsid.is_none() => None,
                None => Some(Peer::Untraced(netnsid)),
            },
        }
    }

    /// Every device, in order.
    pub(crate) fn all(&self) -> impl Iterator<Item = At> + '_ {
        self.namespaces
            .iter()
            .enumerate()
            .flat_map(|(n, ns)| (0..ns.devices.len()).map(move |d| (n, d)))
    }

    fn has_address(&self, at: At) -> bool {
        let ifindex = self.dev(at).ifindex;
        self.namespaces[at.0]
            .addresses
            .iter()
            .any(|(i, _, _)| *i == ifindex)
    }

    /// The underlay of the VXLAN device at `at`, or why it is unknown.
    pub(crate) fn underlay(&self, at: At, v: &Vxlan) -> Result<(At, String), String> {
        let dev = self.dev(at);
        let sock_ns = self.ns_of(at.0, dev.link_netnsid).map_err(|id| {
            format!(
                "unknown: its UDP socket is in a namespace that is not traced (nsid {id} in {})",
                self.namespaces[at.0].name
            )
        })?;
        let sock_name = &self.namespaces[sock_ns].name;
        if let Some(link) = v.link {
            return self
                .by_ifindex(sock_ns, link)
                .map(|u| (u, "bound to it (dev)".to_string()))
                .ok_or_else(|| {
                    format!("unknown: bound to ifindex {link}, not found in {sock_name}")
                });
        }
        let mut why = Vec::new();
        if let Some(local) = v.local {
            let holder = self.namespaces[sock_ns]
                .addresses
                .iter()
                .find(|(_, a, _)| *a == local)
                .and_then(|(i, _, _)| self.by_ifindex(sock_ns, *i));
            if let Some(u) = holder {
                return Ok((u, format!("holds the local address {local}")));
            }
            why.push(format!(
                "no device in {sock_name} holds its local address {local}"
            ));
        }
        if let Some(remote) = v.remote.filter(|r| !r.is_multicast()) {
            let on_link = self.namespaces[sock_ns]
                .addresses
                .iter()
                .filter(|(_, a, p)| same_subnet(*a, remote, *p))
                .max_by_key(|(_, _, p)| *p)
                .and_then(|(i, a, p)| Some((self.by_ifindex(sock_ns, *i)?, *a, *p)));
            if let Some((u, a, p)) = on_link {
                return Ok((u, format!("its subnet {a}/{p} holds the remote {remote}")));
            }
            why.push(format!(
                "no device in {sock_name} is on the subnet of its remote {remote}"
            ));
        }
        // Docker's vxlan0: no local, remote or dev; its remotes are in the
        // FDB, and the socket's namespace routes to them.
        let routed: Vec<(At, IpAddr)> = v
            .fdb_remotes
            .iter()
            .filter_map(|r| {
                let (_, oif) = self.namespaces[sock_ns]
                    .routes
                    .iter()
                    .find(|(dst, _)| dst == r)?;
                Some((self.by_ifindex(sock_ns, *oif)?, *r))
            })
            .collect();
        // Several remotes by several devices: the smallest MTU bites first.
        if let Some((u, r)) = routed.iter().min_by_key(|(u, _)| self.dev(*u).mtu) {
            return Ok((
                u.to_owned(),
                format!("{sock_name} routes its FDB remote {r} by it"),
            ));
        }
        if !v.fdb_remotes.is_empty() {
            let list: Vec<String> = v.fdb_remotes.iter().map(|r| r.to_string()).collect();
            why.push(format!(
                "{sock_name} has no route to its FDB remotes {}",
                list.join(", ")
            ));
        }
        if why.is_empty() {
            why.push(
                "it is bound to no device and has no local or unicast remote address, nor \
                 remotes in its FDB"
                    .into(),
            );
        }
        Err(format!("unknown: {}", why.join("; ")))
    }

    fn path(&self, at: At, v: &Vxlan) -> VxlanPath {
        let dev = self.dev(at);
        let ipv6 = v.ipv6();
        let overhead = vxlan_overhead(ipv6);
        let (underlay, underlay_how) = match self.underlay(at, v) {
            Ok((u, how)) => (Some(self.devref(u)), how),
            Err(why) => (None, why),
        };
        let limit = underlay.as_ref().map(|u| u.mtu.saturating_sub(overhead));
        let bridge = dev.master.and_then(|m| self.by_ifindex(at.0, m));
        let mut ports = Vec::new();
        let mut senders = Vec::new();
        let bridge_has_address = bridge.is_some_and(|b| self.has_address(b));
        if let Some(b) = bridge {
            let bifindex = self.dev(b).ifindex;
            if bridge_has_address {
                senders.push(self.dev(b).mtu);
            }
            for (i, p) in self.namespaces[at.0].devices.iter().enumerate() {
                if p.master != Some(bifindex) || i == at.1 {
                    continue;
                }
                let (peer, note) = match self.peer((at.0, i)) {
                    Some(Peer::Traced(q)) => (Some(self.devref(q)), None),
                    Some(Peer::Untraced(id)) => (
                        None,
                        Some(format!(
                            "its peer is in a namespace that is not traced{}",
                            id.map(|id| format!(" (nsid {id})")).unwrap_or_default()
                        )),
                    ),
                    None => (None, None),
                };
                let sends_up_to = peer.as_ref().map_or(p.mtu, |q| q.mtu.min(p.mtu));
                senders.push(sends_up_to);
                ports.push(Port {
                    port: self.devref((at.0, i)),
                    peer,
                    sends_up_to,
                    note,
                });
            }
        }
        let inner_max = senders.iter().max().map_or(dev.mtu, |m| (*m).min(dev.mtu));
        VxlanPath {
            vxlan: self.devref(at),
            vni: v.vni,
            port: v.port,
            ipv6,
            overhead,
            underlay,
            underlay_how,
            limit,
            bridge: bridge.map(|b| self.devref(b)),
            bridge_has_address,
            ports,
            inner_max,
        }
    }

    fn vxlans(&self) -> impl Iterator<Item = (At, &Vxlan)> + '_ {
        self.all().filter_map(|at| match &self.dev(at).kind {
            Kind::Vxlan(v) => Some((at, v)),
            _ => None,
        })
    }
}

fn same_subnet(a: IpAddr, b: IpAddr, prefix: u8) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// Per VXLAN device of the traced namespaces: overlay MTU, overhead,
/// underlay and its MTU, and what feeds it, even when nothing is wrong.
pub fn path_mtu_summary(topo: &Topology) -> Vec<VxlanPath> {
    topo.vxlans().map(|(at, v)| topo.path(at, v)).collect()
}

/// Every MTU problem of the traced namespaces.
pub fn findings(topo: &Topology) -> Vec<Finding> {
    let mut out = Vec::new();
    for (at, v) in topo.vxlans() {
        let path = topo.path(at, v);
        out.extend(vxlan_overhead_finding(topo, at, v, &path));
        out.extend(overlay_port_finding(&path));
    }
    out.extend(veth_findings(topo));
    out
}

fn vxlan_overhead_finding(topo: &Topology, at: At, v: &Vxlan, path: &VxlanPath) -> Option<Finding> {
    let (underlay, limit) = (path.underlay.as_ref()?, path.limit?);
    let vx = &path.vxlan;
    if vx.mtu <= limit {
        return None;
    }
    let bridged = topo.dev(at).master.is_some();
    let what = if path.ipv6 {
        format!("are dropped on {underlay} (outer IPv6 packets are not fragmented)")
    } else if v.df == OuterDf::Set {
        format!("are dropped on {underlay} (the VXLAN device sets DF on the outer header)")
    } else if v.df == OuterDf::Inherit && !bridged {
        format!("fragment on {underlay} (are dropped there if they have DF set)")
    } else {
        format!("fragment on {underlay}")
    };
    let mut text = format!(
        "overlay MTU {} + {} VXLAN > underlay MTU {}: packets over {limit} bytes on {vx} {what}",
        vx.mtu, path.overhead, underlay.mtu
    );
    if bridged {
        // skb_tunnel_check_pmtu(): a VXLAN device that is a bridge port
        // answers a forwarded inner packet too big for the underlay, if it
        // has DF set or is IPv6, with an ICMP "too big" itself.
        text += &format!(
            " (those with DF set, and IPv6 ones, are refused with ICMP \"too big\", MTU {limit})"
        );
    }
    if let Some(bridge) = &path.bridge {
        let mut over: Vec<String> = path
            .ports
            .iter()
            .filter(|p| p.sends_up_to > limit)
            .map(|p| {
                let who = p.peer.as_ref().unwrap_or(&p.port);
                format!("{who} up to {}", p.sends_up_to.min(vx.mtu))
            })
            .collect();
        if path.bridge_has_address && bridge.mtu > limit {
            over.push(format!("{bridge} itself up to {}", bridge.mtu.min(vx.mtu)));
        }
        if !over.is_empty() {
            text += &format!("; sending that much through {bridge}: {}", over.join(", "));
        } else if !path.ports.is_empty() {
            text += &format!(
                "; the ports of {bridge} send at most {}, so no container traffic is affected",
                path.inner_max
            );
        }
    }
    Some(Finding {
        kind: FindingKind::VxlanOverhead,
        devices: vec![vx.clone(), underlay.clone()],
        overhead: Some(path.overhead),
        limit,
        finding: text,
        watch: vec![
            Watch::Plain {
                netns: vx.netns.clone(),
                iface: vx.name.clone(),
                dir: Direction::Egress,
            },
            Watch::Encapsulated {
                netns: underlay.netns.clone(),
                iface: underlay.name.clone(),
                dir: Direction::Egress,
                vni: v.vni,
                overhead: path.overhead,
            },
        ],
    })
}

fn overlay_port_finding(path: &VxlanPath) -> Option<Finding> {
    let bridge = path.bridge.as_ref()?;
    let vx = &path.vxlan;
    let over: Vec<&Port> = path
        .ports
        .iter()
        .filter(|p| p.sends_up_to > vx.mtu)
        .collect();
    if over.is_empty() {
        return None;
    }
    let mut devices = vec![vx.clone()];
    let mut names = Vec::new();
    let mut watch = Vec::new();
    for p in &over {
        devices.push(p.port.clone());
        let mut name = format!("{} mtu {}", p.port, p.port.mtu);
        if let Some(q) = &p.peer {
            devices.push(q.clone());
            name += &format!(" (peer {q} mtu {})", q.mtu);
        }
        names.push(name);
        watch.push(Watch::Plain {
            netns: p.port.netns.clone(),
            iface: p.port.name.clone(),
            dir: Direction::Ingress,
        });
    }
    Some(Finding {
        kind: FindingKind::OverlayPortMtu,
        devices,
        overhead: None,
        limit: vx.mtu,
        finding: format!(
            "{bridge} ports take larger packets than {vx} mtu {}: {}: packets over {} bytes from them to {} are dropped by the bridge (with bridge-nf-call-iptables on, those without DF are fragmented instead)",
            vx.mtu,
            names.join(", "),
            vx.mtu,
            vx.name
        ),
        watch,
    })
}

fn veth_findings(topo: &Topology) -> Vec<Finding> {
    let mut out = Vec::new();
    for at in topo.all() {
        match topo.peer(at) {
            Some(Peer::Traced(p)) if at < p => {
                let (a, b) = (topo.devref(at), topo.devref(p));
                if a.mtu == b.mtu {
                    continue;
                }
                let (big, small) = if a.mtu > b.mtu { (a, b) } else { (b, a) };
                out.push(Finding {
                    kind: FindingKind::VethMtuMismatch,
                    finding: format!(
                        "veth ends differ: {big} mtu {}, {small} mtu {}: packets over {} bytes sent from {} are dropped on the way to {} (drop reason NOT_SPECIFIED at __dev_forward_skb)",
                        big.mtu, small.mtu, small.mtu, big.name, small.name
                    ),
                    overhead: None,
                    limit: small.mtu,
                    watch: vec![Watch::Plain {
                        netns: big.netns.clone(),
                        iface: big.name.clone(),
                        dir: Direction::Egress,
                    }],
                    devices: vec![big, small],
                });
            }
            Some(Peer::Untraced(id)) => {
                let d = topo.devref(at);
                out.push(Finding {
                    kind: FindingKind::VethPeerUntraced,
                    finding: format!(
                        "veth {d} mtu {}: its peer is in a namespace that is not traced{}, so the MTUs of its two ends cannot be compared",
                        d.mtu,
                        id.map(|id| format!(" (nsid {id})")).unwrap_or_default()
                    ),
                    overhead: None,
                    limit: d.mtu,
                    watch: Vec::new(),
                    devices: vec![d],
                });
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests;
