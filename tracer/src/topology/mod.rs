//! Choosing what to trace: namespaces, the devices in them, and the VXLAN ports.

pub mod devices;
pub mod docker;
pub mod links;
pub mod mtu;
pub mod names;
pub mod watch;

use std::collections::BTreeSet;

use anyhow::{Result, bail};
use tracer_ebpf::MAX_VXLAN_PORTS;

use crate::{
    sys::netns::Netns,
    topology::devices::{Device, Kind},
};

/// The standard VXLAN port (RFC 7348), always decoded.
pub const IANA_VXLAN_PORT: u16 = 4789;

/// One namespace and what tracer does in it.
#[derive(Debug, Clone)]
pub struct Target {
    pub netns: Netns,
    /// Every device of the namespace (to name the ones that show up in drops, too).
    pub devices: Vec<Device>,
    /// The devices the TC programs attach to.
    pub traced: Vec<Device>,
}

/// Picks the traced devices of each namespace: `ifaces` if given (each must
/// exist somewhere), else every veth, bridge and VXLAN device. None at all
/// is not an error: they may come later.
pub fn select(found: Vec<(Netns, Vec<Device>)>, ifaces: &[String]) -> Result<Vec<Target>> {
    for name in ifaces {
        if !found
            .iter()
            .any(|(_, devs)| devs.iter().any(|d| &d.name == name))
        {
            let mut listing: Vec<String> = found
                .iter()
                .map(|(ns, devs)| {
                    let names: Vec<&str> = devs.iter().map(|d| d.name.as_str()).collect();
                    format!("{}: {}", ns.name, names.join(" "))
                })
                .collect();
            listing.sort();
            bail!(
                "unknown interface '{name}' (devices in {}: {})",
                if found.len() == 1 {
                    "the namespace"
                } else {
                    "the namespaces"
                },
                listing.join("; ")
            );
        }
    }
    let mut targets = Vec::new();
    for (netns, devices) in found {
        let traced: Vec<Device> = devices
            .iter()
            .filter(|d| {
                if ifaces.is_empty() {
                    d.traced_by_default()
                } else {
                    ifaces.contains(&d.name)
                }
            })
            .cloned()
            .collect();
        for d in &traced {
            if !d.ethernet {
                bail!(
                    "interface '{}' in {} is not an Ethernet device ({}); tracer parses Ethernet frames",
                    d.name,
                    netns.name,
                    d.kind_name()
                );
            }
        }
        targets.push(Target {
            netns,
            devices,
            traced,
        });
    }
    Ok(targets)
}

/// [`select`] on a live host, later in the run: devices `ifaces` names that
/// are not there (yet), or not Ethernet, are simply not traced.
pub fn select_available(found: Vec<(Netns, Vec<Device>)>, ifaces: &[String]) -> Vec<Target> {
    found
        .into_iter()
        .map(|(netns, devices)| {
            let traced = devices
                .iter()
                .filter(|d| {
                    d.ethernet
                        && if ifaces.is_empty() {
                            d.traced_by_default()
                        } else {
                            ifaces.contains(&d.name)
                        }
                })
                .cloned()
                .collect();
            Target {
                netns,
                devices,
                traced,
            }
        })
        .collect()
}

/// The UDP ports decoded as VXLAN: 4789, the user's, and those of VXLAN devices found.
pub fn vxlan_ports(user: &[u16], targets: &[Target]) -> Result<[u16; MAX_VXLAN_PORTS]> {
    let mut ports = BTreeSet::from([IANA_VXLAN_PORT]);
    ports.extend(user.iter().copied());
    for t in targets {
        for d in &t.devices {
            if let Kind::Vxlan(v) = &d.kind {
                ports.insert(v.port);
            }
        }
    }
    if ports.len() > MAX_VXLAN_PORTS {
        bail!(
            "too many VXLAN ports ({:?}); at most {MAX_VXLAN_PORTS} are supported",
            ports
        );
    }
    let mut out = [0u16; MAX_VXLAN_PORTS];
    for (slot, p) in out.iter_mut().zip(ports) {
        *slot = p;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::topology::devices::Vxlan;

    fn ns(name: &str) -> Netns {
        Netns {
            name: name.into(),
            path: PathBuf::from("/x"),
            inode: 1,
        }
    }

    fn dev(ifindex: u32, name: &str, kind: Kind) -> Device {
        Device {
            ifindex,
            name: name.into(),
            kind,
            mtu: 1500,
            ethernet: true,
            master: None,
            ..Device::default()
        }
    }

    fn host() -> Vec<Device> {
        vec![
            Device {
                ethernet: false,
                ..dev(1, "lo", Kind::Other(String::new()))
            },
            dev(2, "eth0", Kind::Other(String::new())),
            dev(3, "veth0", Kind::Veth),
            dev(4, "br0", Kind::Bridge),
            dev(
                5,
                "vx0",
                Kind::Vxlan(Vxlan {
                    vni: Some(42),
                    port: 8472,
                    link: None,
                    ..Vxlan::default()
                }),
            ),
        ]
    }

    fn names(t: &Target) -> Vec<&str> {
        t.traced.iter().map(|d| d.name.as_str()).collect()
    }

    #[test]
    fn default_is_veth_bridge_and_vxlan() {
        let t = select(vec![(ns("a"), host())], &[]).unwrap();
        assert_eq!(names(&t[0]), ["veth0", "br0", "vx0"]);
    }

    #[test]
    fn iface_narrows_and_may_name_other_kinds() {
        let t = select(vec![(ns("a"), host())], &["eth0".into(), "br0".into()]).unwrap();
        assert_eq!(names(&t[0]), ["eth0", "br0"]);
    }

    #[test]
    fn unknown_iface_lists_what_exists() {
        let e = select(vec![(ns("a"), host())], &["nope".into()])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "unknown interface 'nope' (devices in the namespace: a: lo eth0 veth0 br0 vx0)"
        );
    }

    #[test]
    fn non_ethernet_device_is_refused() {
        let e = select(vec![(ns("a"), host())], &["lo".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("'lo' in a is not an Ethernet device"), "{e}");
    }

    #[test]
    fn nothing_to_trace_yet_is_not_an_error() {
        let only_eth = vec![dev(2, "eth0", Kind::Other(String::new()))];
        let t = select(vec![(ns("a"), only_eth.clone())], &[]).unwrap();
        assert!(t[0].traced.is_empty());
        // Later, a device --iface names that is not Ethernet is left alone.
        let t = select_available(vec![(ns("a"), host())], &["lo".into(), "br0".into()]);
        assert_eq!(names(&t[0]), ["br0"]);
        assert!(
            select_available(vec![(ns("a"), only_eth)], &[])[0]
                .traced
                .is_empty()
        );
    }

    #[test]
    fn vxlan_ports_merge_default_user_and_devices() {
        let t = select(vec![(ns("a"), host())], &[]).unwrap();
        let p = vxlan_ports(&[4790, 4789], &t).unwrap();
        assert_eq!(p, [4789, 4790, 8472, 0, 0, 0, 0, 0]);
        let too_many: Vec<u16> = (1..=8).collect();
        assert!(vxlan_ports(&too_many, &t).is_err());
    }
}
