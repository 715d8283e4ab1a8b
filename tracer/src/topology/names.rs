//! Names of the namespaces and devices that kernel keys refer to by number.

use std::collections::HashMap;

use crate::topology::Target;

/// Netns inode -> its names.
#[derive(Debug, Default)]
pub struct Names {
    netns: HashMap<u64, Known>,
}

/// A namespace's name, and by ifindex its devices' (namespace, device)
/// names as last seen. A device keeps the name its namespace had then: the
/// kernel gives a new namespace a freed one's inode (a container removed,
/// another started), and the rows of the gone one's devices keep their names.
#[derive(Debug, Default)]
struct Known {
    name: String,
    devices: HashMap<u32, (String, String)>,
}

impl Names {
    pub fn new(targets: &[Target]) -> Self {
        let mut names = Names::default();
        names.update(targets);
        names
    }

    /// Learns the names of `targets`, keeping those of namespaces and
    /// devices that are gone (their rows keep their names).
    pub fn update(&mut self, targets: &[Target]) {
        for t in targets {
            let known = self.netns.entry(t.netns.inode).or_default();
            known.name.clone_from(&t.netns.name);
            for d in &t.devices {
                known
                    .devices
                    .insert(d.ifindex, (t.netns.name.clone(), d.name.clone()));
            }
        }
    }

    /// (name, inode) of every namespace known, present or gone.
    pub fn inodes(&self) -> Vec<(String, u64)> {
        self.netns
            .iter()
            .map(|(inode, known)| (known.name.clone(), *inode))
            .collect()
    }

    /// (namespace, device) names of `ifindex` in the namespace with `inode`;
    /// an unknown device is `if<N>`.
    pub fn device(&self, inode: u64, ifindex: u32) -> (String, String) {
        match self.netns.get(&inode) {
            Some(known) => known
                .devices
                .get(&ifindex)
                .cloned()
                .unwrap_or_else(|| (known.name.clone(), format!("if{ifindex}"))),
            None => (inode.to_string(), format!("if{ifindex}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::{sys::netns::Netns, topology::devices::Device};

    fn target(netns: &str, inode: u64, devices: &[(u32, &str)]) -> Target {
        Target {
            netns: Netns {
                name: netns.into(),
                path: PathBuf::from("/x"),
                inode,
            },
            devices: devices
                .iter()
                .map(|&(ifindex, name)| Device {
                    ifindex,
                    name: name.into(),
                    ..Device::default()
                })
                .collect(),
            traced: Vec::new(),
        }
    }

    fn pair(ns: &str, dev: &str) -> (String, String) {
        (ns.into(), dev.into())
    }

    #[test]
    fn renamed_namespaces_and_devices_take_their_new_names() {
        let mut n = Names::new(&[target("7282b17bdf02", 9, &[(1, "lo"), (12, "veth1")])]);
        n.update(&[target("web", 9, &[(1, "lo"), (12, "eth0")])]);
        assert_eq!(n.device(9, 12), pair("web", "eth0"));
        assert_eq!(n.device(9, 30), pair("web", "if30"));
        assert_eq!(n.device(8, 30), pair("8", "if30"));
    }

    #[test]
    fn a_gone_namespaces_devices_keep_its_name_when_its_inode_is_reused() {
        let mut n = Names::new(&[target("web", 9, &[(12, "eth0")])]);
        // web removed, db started: the kernel gives db's namespace web's inode.
        n.update(&[target("db", 9, &[(14, "eth0")])]);
        assert_eq!(n.device(9, 12), pair("web", "eth0"));
        assert_eq!(n.device(9, 14), pair("db", "eth0"));
        assert_eq!(n.inodes(), [("db".to_string(), 9)]);
    }
}
