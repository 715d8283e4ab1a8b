//! Names of the namespaces and devices that kernel keys refer to by number.

use std::collections::HashMap;

use crate::topology::Target;

/// Netns inode -> (namespace name, ifindex -> device name).
#[derive(Debug, Default)]
pub struct Names {
    netns: HashMap<u64, (String, HashMap<u32, String>)>,
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
            let (name, devices) = self
                .netns
                .entry(t.netns.inode)
                .or_insert_with(|| (t.netns.name.clone(), HashMap::new()));
            name.clone_from(&t.netns.name);
            for d in &t.devices {
                devices.insert(d.ifindex, d.name.clone());
            }
        }
    }

    /// (name, inode) of every namespace known, present or gone.
    pub fn inodes(&self) -> Vec<(String, u64)> {
        self.netns
            .iter()
            .map(|(inode, (name, _))| (name.clone(), *inode))
            .collect()
    }

    /// The namespace's name, else its inode.
    pub fn netns(&self, inode: u64) -> String {
        match self.netns.get(&inode) {
            Some((name, _)) => name.clone(),
            None => inode.to_string(),
        }
    }

    /// (namespace, device) names of `ifindex` in the namespace with `inode`;
    /// an unknown device is `if<N>`.
    pub fn device(&self, inode: u64, ifindex: u32) -> (String, String) {
        let unknown = || format!("if{ifindex}");
        match self.netns.get(&inode) {
            Some((ns, devs)) => (
                ns.clone(),
                devs.get(&ifindex).cloned().unwrap_or_else(unknown),
            ),
            None => (inode.to_string(), unknown()),
        }
    }
}
