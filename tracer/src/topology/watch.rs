//! Following a live host: namespaces that appear and vanish (`docker run`,
//! `docker rm`, an overlay network's namespace made when its first local
//! container joins), devices created and deleted in the traced ones.
//!
//! The namespace directories are listed at every poll (a readdir and one
//! stat per entry); each traced namespace has a netlink socket subscribed to its
//! link events, so that its devices are read again only when they changed.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Result;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::{
    sys::netns::{self, Listing, Netns, Resolver},
    topology::{
        self, Target, devices,
        docker::{self, Engine},
        links::Links,
        mtu::{self, Topology},
    },
};

/// How often the watcher looks: within a second of a change it is traced.
pub const POLL: Duration = Duration::from_millis(400);
/// How often a VXLAN device whose underlay is unknown is looked at again
/// (Docker fills in its FDB after the device appears).
const UNDERLAY_RETRY: Duration = Duration::from_secs(2);

/// `RTMGRP_LINK`: link created, changed, deleted.
const RTMGRP_LINK: u32 = 1;

/// A namespace's link events, readable without blocking.
struct LinkEvents(Socket);

impl LinkEvents {
    fn open(ns: &Netns) -> Option<Self> {
        let open = || -> std::io::Result<Socket> {
            let mut s = Socket::new(NETLINK_ROUTE)?;
            s.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
            s.set_non_blocking(true)?;
            Ok(s)
        };
        netns::run_in(&ns.path, open).ok()?.ok().map(LinkEvents)
    }

    /// Whether anything arrived since the last call (what it was does not
    /// matter: the namespace is read again). A full socket buffer is
    /// something too.
    fn pending(&mut self) -> bool {
        let mut buf = vec![0u8; 16384];
        let mut any = false;
        loop {
            match self.0.recv(&mut &mut buf[..], 0) {
                Ok(0) => return any,
                Ok(_) => any = true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return any,
                Err(_) => return true,
            }
        }
    }
}

/// How long a new Docker namespace waits for Docker to name it: the
/// sandbox file appears while the container is still being started.
const NAMING: Duration = Duration::from_secs(2);
/// How long Docker is asked again about a namespace it has not named yet
/// (followed under its id meanwhile): a container on a busy host can take
/// this long to start.
const ASKING: Duration = Duration::from_secs(60);
/// The longest wait between two such questions. They come at every poll at
/// first, then ever less often: Docker's own namespaces (`ingress_sbox`, an
/// overlay's `lb_` sandbox) are never named, and asking at every poll for
/// a minute kept dockerd and tracer busy while Docker started containers.
const ASKING_GAP: Duration = Duration::from_secs(2);

/// Names from Docker, asked for only when a namespace Docker may know appears.
struct DockerNames {
    engine: Option<Engine>,
    names: docker::Names,
    /// Docker namespace files already asked about.
    seen: HashMap<PathBuf, Asked>,
    /// Docker could not be asked: said once.
    told: bool,
}

impl DockerNames {
    /// Renames the namespaces Docker knows: containers by name, overlay
    /// networks' namespaces by the network's name. With `hold`, a new
    /// Docker namespace that Docker does not name yet is left out for a
    /// moment (it is named in a poll or two), so that it is followed under
    /// its name.
    fn apply(&mut self, listing: &Listing, namespaces: &mut Vec<Netns>, hold: bool) {
        let entries = listing.docker_entries();
        let now = Instant::now();
        self.seen.retain(|p, _| entries.iter().any(|(_, e)| e == p));
        let mut ask = false;
        for (_, p) in &entries {
            let a = self.seen.entry(p.clone()).or_insert_with(|| {
                ask = true;
                Asked {
                    first: now,
                    next: now,
                }
            });
            ask |= self.names.of(p).is_none() && due(a.next, now) && now - a.first < ASKING;
        }
        if let Some(engine) = &mut self.engine
            && ask
        {
            for a in self.seen.values_mut() {
                if due(a.next, now) {
                    a.next = ask_again(a.first, now);
                }
            }
            match engine.sandbox_names() {
                Ok(n) => self.names = n,
                Err(e) if !self.told => {
                    eprintln!("tracer: namespaces keep Docker's ids: {e:#}");
                    self.told = true;
                }
                Err(_) => {}
            }
        }
        let waiting = |ns: &Netns| {
            hold && self.engine.is_some()
                && entries.iter().any(|(i, p)| {
                    *i == ns.inode
                        && self.names.of(p).is_none()
                        && self.seen.get(p).is_some_and(|a| now - a.first < NAMING)
                })
        };
        namespaces.retain(|ns| !waiting(ns));
        let mut taken: HashSet<String> = HashSet::new();
        for ns in namespaces.iter_mut() {
            let docker_name = entries
                .iter()
                .find(|(i, _)| *i == ns.inode)
                .and_then(|(_, p)| Some((self.names.of(p)?, p)));
            if let Some((name, path)) = docker_name {
                let file = path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                ns.name = if taken.contains(&name) {
                    format!("{name}-{file}")
                } else {
                    name
                };
            }
            taken.insert(ns.name.clone());
        }
    }
}

/// When a Docker namespace file was first seen, and when Docker is asked
/// about it again if it still does not name it.
struct Asked {
    first: Instant,
    next: Instant,
}

/// When to ask Docker again about a namespace first seen at `first`,
/// asked about at `now`: after as long as it has waited, within
/// [`POLL`]..[`ASKING_GAP`].
fn ask_again(first: Instant, now: Instant) -> Instant {
    now + (now - first).clamp(POLL, ASKING_GAP)
}

/// Whether a question due at `next` is asked at the poll at `now`: polls
/// come a little before or after their time, and one that comes early
/// would put the question off to the poll after.
fn due(next: Instant, now: Instant) -> bool {
    now + POLL / 2 >= next
}

/// What is traced now, kept in step with the host.
pub struct Watcher {
    resolver: Resolver,
    ifaces: Vec<String>,
    docker: DockerNames,
    events: HashMap<u64, LinkEvents>,
    pub targets: Vec<Target>,
    pub topo: Topology,
    last_read: Instant,
}

impl Watcher {
    /// What `--netns` and `--iface` name now. Bad input is an error; a host
    /// with nothing to trace yet is not: tracer says so and waits.
    pub fn start(specs: &[String], ifaces: &[String]) -> Result<Self> {
        let mut resolver = Resolver::new(specs);
        let listing = Listing::now();
        let mut namespaces = resolver.resolve_in(&listing, true)?;
        let mut docker = DockerNames {
            engine: Engine::find(),
            names: docker::Names::default(),
            seen: HashMap::new(),
            told: false,
        };
        docker.apply(&listing, &mut namespaces, false);
        // One that vanished since it was resolved is left out: a live host.
        let (namespaces, topo) = devices::topology_lenient(&namespaces);
        let found = namespaces
            .into_iter()
            .zip(&topo.namespaces)
            .map(|(ns, t)| (ns, t.devices.clone()))
            .collect();
        let targets = topology::select(found, ifaces)?;
        if targets.iter().all(|t| t.traced.is_empty()) {
            let names: Vec<&str> = targets.iter().map(|t| t.netns.name.as_str()).collect();
            eprintln!(
                "tracer: no {} in {} yet: waiting for them",
                if ifaces.is_empty() {
                    "veth, bridge or VXLAN device".to_string()
                } else {
                    format!("device named {}", ifaces.join(" or "))
                },
                names.join(", ")
            );
        }
        let events = targets
            .iter()
            .filter_map(|t| Some((t.netns.inode, LinkEvents::open(&t.netns)?)))
            .collect();
        Ok(Watcher {
            resolver,
            ifaces: ifaces.to_vec(),
            docker,
            events,
            targets,
            topo,
            last_read: Instant::now(),
        })
    }

    /// The traced namespaces.
    pub fn namespaces(&self) -> Vec<Netns> {
        self.targets.iter().map(|t| t.netns.clone()).collect()
    }

    /// Looks at the host again; when what is traced changed, returns what
    /// to say on stderr once the new targets are attached to: then
    /// [`Watcher::targets`] and [`Watcher::topo`] are new.
    pub fn poll(&mut self) -> Result<Option<Vec<String>>> {
        // Listed once: the namespaces, their names and Docker's are looked up in it.
        let listing = Listing::now();
        let mut namespaces = self.resolver.resolve_in(&listing, false)?;
        // Those already followed are not held back again.
        let traced: Vec<u64> = self.targets.iter().map(|t| t.netns.inode).collect();
        let (mut known, mut new): (Vec<Netns>, Vec<Netns>) = namespaces
            .into_iter()
            .partition(|n| traced.contains(&n.inode));
        self.docker.apply(&listing, &mut known, false);
        self.docker.apply(&listing, &mut new, true);
        known.extend(new);
        namespaces = known;
        let same_namespaces = namespaces.len() == self.targets.len()
            && namespaces
                .iter()
                .zip(&self.targets)
                .all(|(a, b)| a.inode == b.netns.inode && a.name == b.netns.name);
        let mut links_moved = false;
        for e in self.events.values_mut() {
            links_moved |= e.pending();
        }
        let underlay_unknown = mtu::path_mtu_summary(&self.topo)
            .iter()
            .any(|p| p.underlay.is_none());
        let retry = underlay_unknown && self.last_read.elapsed() >= UNDERLAY_RETRY;
        if same_namespaces && !links_moved && !retry {
            return Ok(None);
        }
        self.last_read = Instant::now();
        let (kept, topo) = devices::topology_lenient(&namespaces);
        if kept == self.namespaces() && topo == self.topo {
            return Ok(None);
        }
        let found = kept
            .into_iter()
            .zip(&topo.namespaces)
            .map(|(ns, t)| (ns, t.devices.clone()))
            .collect();
        let targets = topology::select_available(found, &self.ifaces);
        let links = Links::new(&topo, |ns, dev| {
            targets
                .iter()
                .any(|t| t.netns.name == ns && t.traced.iter().any(|d| d.name == dev))
        });
        let mut said = changes(&self.targets, &targets, &links);
        self.events
            .retain(|inode, _| targets.iter().any(|t| t.netns.inode == *inode));
        for t in &targets {
            if !self.events.contains_key(&t.netns.inode)
                && let Some(e) = LinkEvents::open(&t.netns)
            {
                self.events.insert(t.netns.inode, e);
            }
        }
        let old = mtu::path_mtu_summary(&self.topo);
        for p in mtu::path_mtu_summary(&topo) {
            if !old.contains(&p) {
                said.push(format!("tracer: {}", p.summary()));
            }
        }
        self.targets = targets;
        self.topo = topo;
        Ok(Some(said))
    }
}

/// One line per namespace that came, went or whose traced devices changed.
fn changes(old: &[Target], new: &[Target], links: &Links) -> Vec<String> {
    let mut said = Vec::new();
    let devs = |t: &Target| -> Vec<String> { t.traced.iter().map(|d| d.name.clone()).collect() };
    let tied = |ns: &str, v: &[&String]| -> String {
        v.iter()
            .map(|d| links.tied(ns, d))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for t in new {
        match old.iter().find(|o| o.netns.inode == t.netns.inode) {
            None => said.push(format!(
                "tracer: following {} [{}]",
                t.netns.name,
                tied(&t.netns.name, &devs(t).iter().collect::<Vec<_>>())
            )),
            Some(o) => {
                if o.netns.name != t.netns.name {
                    said.push(format!(
                        "tracer: {} is now named {}",
                        o.netns.name, t.netns.name
                    ));
                }
                let (was, now) = (devs(o), devs(t));
                let added: Vec<&String> = now.iter().filter(|d| !was.contains(d)).collect();
                let removed: Vec<&String> = was.iter().filter(|d| !now.contains(d)).collect();
                if !added.is_empty() || !removed.is_empty() {
                    let list = |v: &[&String]| tied(&t.netns.name, v);
                    said.push(format!(
                        "tracer: {}: devices {}{}",
                        t.netns.name,
                        if added.is_empty() {
                            String::new()
                        } else {
                            format!("added [{}]", list(&added))
                        },
                        if removed.is_empty() {
                            String::new()
                        } else {
                            format!(
                                "{}gone [{}]",
                                if added.is_empty() { "" } else { ", " },
                                list(&removed)
                            )
                        },
                    ));
                }
            }
        }
    }
    for o in old {
        if !new.iter().any(|t| t.netns.inode == o.netns.inode) {
            said.push(format!(
                "tracer: {} is gone; its rows keep their names",
                o.netns.name
            ));
        }
    }
    said
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_is_asked_ever_less_often_about_a_namespace_it_does_not_name() {
        let first = Instant::now();
        let mut at = first;
        let mut asked = Vec::new();
        while at - first < ASKING {
            asked.push((at - first).as_millis());
            at = ask_again(first, at);
        }
        assert_eq!(asked[..6], [0, 400, 800, 1600, 3200, 5200]);
        // Every poll for a minute was 150 questions.
        assert_eq!(asked.len(), 33, "{asked:?}");
    }
}
