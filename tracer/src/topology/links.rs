//! How the devices of the traced namespaces connect (veth peers, bridge
//! ports, VXLAN devices and their underlays), named as rows name them: what
//! the path analysis orders a flow's hops by.
//!
//! Built from the same [`Topology`] the MTU arithmetic reads, with its
//! peer and underlay lookups, so both agree on what is connected to what.

use std::collections::HashMap;

use crate::topology::{
    devices::Kind,
    mtu::{Peer, Topology},
};

/// (namespace, device), as rows name them.
pub type DevName = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkKind {
    Veth,
    Bridge,
    Vxlan,
    #[default]
    Other,
}

/// One device and what it leads to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub kind: LinkKind,
    /// The TC programs are attached to it: its traffic shows as hops.
    pub hooked: bool,
    /// A veth's other end, or why it cannot be followed.
    pub peer: Option<Result<DevName, String>>,
    /// The bridge it is a port of (same namespace).
    pub master: Option<String>,
    pub vxlan: Option<VxlanLink>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanLink {
    pub vni: Option<u32>,
    pub port: u16,
    /// The device its encapsulated packets leave and arrive by, or why unknown.
    pub underlay: Result<DevName, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Links {
    devices: HashMap<DevName, Link>,
}

impl Links {
    /// The links of `topo`; `hooked(netns, device)` says which devices are traced.
    pub fn new(topo: &Topology, hooked: impl Fn(&str, &str) -> bool) -> Self {
        let mut links = Links::default();
        let name = |at: (usize, usize)| -> DevName {
            (
                topo.namespaces[at.0].name.clone(),
                topo.dev(at).name.clone(),
            )
        };
        for at in topo.all() {
            let dev = topo.dev(at);
            let (ns, dname) = name(at);
            let mut link = Link {
                hooked: hooked(&ns, &dname),
                master: dev
                    .master
                    .and_then(|m| topo.by_ifindex(at.0, m))
                    .map(|b| topo.dev(b).name.clone()),
                ..Link::default()
            };
            match &dev.kind {
                Kind::Veth => {
                    link.kind = LinkKind::Veth;
                    link.peer = topo.peer(at).map(|p| match p {
                        Peer::Traced(q) => Ok(name(q)),
                        Peer::Untraced(_) => Err(format!(
                            "the peer of {dname} is in a namespace that is not traced"
                        )),
                    });
                }
                Kind::Bridge => link.kind = LinkKind::Bridge,
                Kind::Vxlan(v) => {
                    link.kind = LinkKind::Vxlan;
                    link.vxlan = Some(VxlanLink {
                        vni: v.vni,
                        port: v.port,
                        underlay: topo
                            .underlay(at, v)
                            .map(|(u, _)| name(u))
                            .map_err(|why| format!("the underlay of {dname} is {why}")),
                    });
                }
                Kind::Other(_) => {}
            }
            links.devices.insert((ns, dname), link);
        }
        links
    }

    /// Adds or replaces a device (for tests and hand-built topologies).
    pub fn insert(&mut self, netns: &str, dev: &str, link: Link) {
        self.devices
            .insert((netns.to_string(), dev.to_string()), link);
    }

    /// `dev`, and for a veth whose other end is in another traced
    /// namespace (a container's), that namespace: `veth1a2b3c(web)`.
    pub fn tied(&self, netns: &str, dev: &str) -> String {
        match self.get(netns, dev).and_then(|l| l.peer.as_ref()) {
            Some(Ok((peer_ns, _))) if peer_ns != netns => format!("{dev}({peer_ns})"),
            _ => dev.to_string(),
        }
    }

    pub fn get(&self, netns: &str, dev: &str) -> Option<&Link> {
        self.devices.get(&(netns.to_string(), dev.to_string()))
    }

    /// The ports of bridge `bridge` in `netns`.
    pub fn ports<'a>(&'a self, netns: &'a str, bridge: &'a str) -> impl Iterator<Item = &'a str> {
        self.devices.iter().filter_map(move |((ns, d), l)| {
            (ns == netns && l.master.as_deref() == Some(bridge)).then_some(d.as_str())
        })
    }

    /// The VXLAN devices whose underlay is `dev` in `netns`, for UDP port
    /// `port` and VNI `vni` (any if unknown).
    pub fn vxlans_over(
        &self,
        netns: &str,
        dev: &str,
        port: Option<u16>,
        vni: Option<u32>,
    ) -> Vec<DevName> {
        let mut out: Vec<DevName> = self
            .devices
            .iter()
            .filter(|(_, l)| {
                l.vxlan.as_ref().is_some_and(|v| {
                    matches!(&v.underlay, Ok((n, d)) if n == netns && d == dev)
                        && port.is_none_or(|p| p == v.port)
                        && (vni.is_none() || v.vni.is_none() || v.vni == vni)
                })
            })
            .map(|(k, _)| k.clone())
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod fixture {
    use super::*;

    fn test_veth(peer: (&str, &str)) -> Link {
        Link {
            kind: LinkKind::Veth,
            hooked: true,
            peer: Some(Ok((peer.0.into(), peer.1.into()))),
            ..Link::default()
        }
    }

    fn test_port(l: Link) -> Link {
        Link {
            master: Some("br0".into()),
            ..l
        }
    }

    impl Links {
        /// Two hosts (bridge, VXLAN device and underlay in the host namespace) and a
        /// container on each, as `xtask::lab::Overlay` builds them.
        pub fn test_overlay() -> Links {
            let mut l = Links::default();
            for (c, h, vc, other) in [("c1", "ha", "vc1", "hb"), ("c2", "hb", "vc2", "ha")] {
                l.insert(c, "eth0", test_veth((h, vc)));
                l.insert(h, vc, test_port(test_veth((c, "eth0"))));
                l.insert(
                    h,
                    "br0",
                    Link {
                        kind: LinkKind::Bridge,
                        hooked: true,
                        ..Link::default()
                    },
                );
                l.insert(
                    h,
                    "vx0",
                    test_port(Link {
                        kind: LinkKind::Vxlan,
                        hooked: true,
                        vxlan: Some(VxlanLink {
                            vni: Some(4242),
                            port: 4789,
                            underlay: Ok((h.into(), "ul0".into())),
                        }),
                        ..Link::default()
                    }),
                );
                l.insert(h, "ul0", test_veth((other, "ul0")));
            }
            l
        }
    }
}
