//! The three datapaths measured, each a lab with a client and a server end.

use std::{any::Any, net::Ipv4Addr};

use anyhow::Result;
use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use xtask::lab::{Bridged, Overlay, OverlayOpts, Pair};

use super::sys::link_stats;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Two namespaces joined by one veth pair.
    Veth,
    /// veth - bridge - veth: two containers on one bridge.
    Bridge,
    /// Container to container over VXLAN on a veth underlay.
    Vxlan,
}

impl PathKind {
    pub const ALL: [PathKind; 3] = [PathKind::Veth, PathKind::Bridge, PathKind::Vxlan];

    pub fn name(self) -> &'static str {
        match self {
            PathKind::Veth => "veth",
            PathKind::Bridge => "bridge",
            PathKind::Vxlan => "vxlan",
        }
    }

    /// Traced device crossings of one client -> server packet.
    pub fn hops(self) -> u64 {
        match self {
            // a/v0 egress, b/v0 ingress
            PathKind::Veth => 2,
            // c1 eth0 egress, vc1 ingress, vc2 egress, c2 eth0 ingress
            // (frames forwarded by the bridge do not pass br0 itself)
            PathKind::Bridge => 4,
            // c1 eth0, vc1, vx0, ul0 on host A; ul0, vx0, vc2, c2 eth0 on host B
            PathKind::Vxlan => 8,
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            PathKind::Veth => "veth pair",
            PathKind::Bridge => "veth - bridge - veth",
            PathKind::Vxlan => "VXLAN over veth (container c1 -> c2)",
        }
    }
}

/// One end of a path: the namespace, its device towards the other end, its address.
#[derive(Debug, Clone)]
pub struct End {
    pub ns: String,
    pub dev: String,
    pub ip: Ipv4Addr,
}

pub struct Path {
    pub kind: PathKind,
    pub namespaces: Vec<String>,
    /// Every device but loopback in the lab's namespaces: what tracer traces
    /// and where tcpdump listens.
    pub devices: Vec<(String, String)>,
    pub client: End,
    pub server: End,
    /// Traced device crossings of one client -> server packet.
    pub hops: u64,
    /// The lab itself: its namespaces go when the path is dropped.
    _lab: Box<dyn Any>,
}

impl Path {
    pub fn build(kind: PathKind) -> Result<Path> {
        let end = |ns: &str, dev: &str, ip| End {
            ns: ns.to_string(),
            dev: dev.to_string(),
            ip,
        };
        let (namespaces, client, server, hops, lab): (Vec<String>, _, _, _, Box<dyn Any>) =
            match kind {
                PathKind::Veth => {
                    let p = Pair::new(1500)?;
                    (
                        p.namespaces().to_vec(),
                        end(&p.a.ns, &p.a.dev, p.a.ip),
                        end(&p.b.ns, &p.b.dev, p.b.ip),
                        kind.hops(),
                        Box::new(p),
                    )
                }
                PathKind::Bridge => {
                    let b = Bridged::new(1500)?;
                    (
                        b.namespaces().to_vec(),
                        end(&b.c1.ns, &b.c1.dev, b.c1.ip),
                        end(&b.c2.ns, &b.c2.dev, b.c2.ip),
                        kind.hops(),
                        Box::new(b),
                    )
                }
                PathKind::Vxlan => {
                    let o = Overlay::new(OverlayOpts::default())?;
                    (
                        o.namespaces().to_vec(),
                        end(&o.c1.ns, &o.c1.dev, o.c1.ip),
                        end(&o.c2.ns, &o.c2.dev, o.c2.ip),
                        kind.hops(),
                        Box::new(o),
                    )
                }
            };
        let mut devices = Vec::new();
        for ns in &namespaces {
            for l in link_stats(ns)? {
                devices.push((ns.clone(), l.name));
            }
        }
        Ok(Path {
            kind,
            namespaces,
            devices,
            client,
            server,
            hops,
            _lab: lab,
        })
    }

    /// `--netns` for each of the lab's namespaces.
    pub fn tracer_args(&self) -> Vec<String> {
        self.namespaces
            .iter()
            .flat_map(|ns| ["--netns".to_string(), ns.clone()])
            .collect()
    }

    /// The kernel's packet count over every device of the lab: received plus
    /// sent, so one packet crossing `hops` traced device directions counts `hops`.
    pub fn kernel_packets(&self) -> Result<u64> {
        let mut n = 0;
        for ns in &self.namespaces {
            for l in link_stats(ns)? {
                n += l.rx_packets + l.tx_packets;
            }
        }
        Ok(n)
    }
}
