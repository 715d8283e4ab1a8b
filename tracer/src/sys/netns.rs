//! Network namespaces: resolving what the user named, and running code inside one.

use std::{
    fs::File,
    os::{
        fd::{AsRawFd as _, RawFd},
        unix::{fs::MetadataExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use anyhow::{Context as _, Result, anyhow};

/// `/var/run`, where `ip netns` and Docker keep namespaces, resolved once:
/// on most hosts it is a link to `/run`. The watcher lists the directories
/// under it and looks at each entry several times a second; through the
/// link, every look walked it again (in a 5.10 VM whose `/var/run` is on
/// 9p, three quarters of tracer's CPU).
pub fn var_run() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        std::fs::canonicalize("/var/run").unwrap_or_else(|_| PathBuf::from("/var/run"))
    })
}

/// Where `ip netns add` puts named namespaces (`/var/run/netns`).
pub fn named_dir() -> PathBuf {
    var_run().join("netns")
}

/// Where Docker keeps the namespaces of containers and overlay networks
/// (`/var/run/docker/netns`).
pub fn docker_dir() -> PathBuf {
    var_run().join("docker/netns")
}

/// The files of [`named_dir`] and [`docker_dir`], each with its inode
/// (`None`: gone since it was listed), read once: a poll of the watcher
/// looks them up for the namespaces, their names and Docker's, and a
/// Docker host holds hundreds.
#[derive(Debug, Default)]
pub struct Listing {
    named: Vec<(PathBuf, Option<u64>)>,
    docker: Vec<(PathBuf, Option<u64>)>,
}

impl Listing {
    pub fn now() -> Self {
        let stat = |dir: &Path| -> Vec<(PathBuf, Option<u64>)> {
            list_dir(dir)
                .into_iter()
                .map(|p| {
                    let inode = inode_of(&p);
                    (p, inode)
                })
                .collect()
        };
        Listing {
            named: stat(&named_dir()),
            docker: stat(&docker_dir()),
        }
    }

    /// (inode, path) of every namespace file Docker keeps (an unmounted one
    /// has the inode of the file itself).
    pub fn docker_entries(&self) -> Vec<(u64, PathBuf)> {
        self.docker
            .iter()
            .filter_map(|(p, i)| Some(((*i)?, p.clone())))
            .collect()
    }

    /// Names of every named and Docker namespace, by inode, and tracer's
    /// own namespace, [`HOST`] unless it has a name.
    pub fn known_names(&self) -> Vec<(u64, String)> {
        let mut names: Vec<(u64, String)> = self
            .named
            .iter()
            .chain(&self.docker)
            .filter_map(|(p, i)| Some(((*i)?, p.file_name()?.to_string_lossy().into_owned())))
            .collect();
        if let Some(own) = inode_of(Path::new("/proc/self/ns/net"))
            && !names.iter().any(|(i, _)| *i == own)
        {
            names.push((own, HOST.to_string()));
        }
        names
    }
}

/// A network namespace tracer works in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    /// Its name if it has one (a file under [`named_dir`] or [`docker_dir`]), else its inode.
    pub name: String,
    /// A path that opens it.
    pub path: PathBuf,
    /// The nsfs inode: what `ls -l /proc/PID/ns/net` shows and what the kernel's `ns.inum` holds.
    pub inode: u64,
}

/// Resolves the `--netns` arguments; none means tracer's own namespace.
///
/// What the user named must be a namespace (else an error); entries found
/// by listing [`named_dir`] and [`docker_dir`] for `all` are what a live host
/// holds: one that is not (yet, or any more) a namespace, like the sandbox
/// file `docker rm` leaves behind, is skipped with one line on stderr.
pub fn resolve(specs: &[String]) -> Result<Vec<Netns>> {
    Resolver::new(specs).resolve(true)
}

/// Resolves the `--netns` arguments again and again, as namespaces come and go.
#[derive(Debug, Default)]
pub struct Resolver {
    specs: Vec<String>,
    /// Listed entries that were not namespaces, said once each.
    told: std::collections::HashSet<PathBuf>,
    /// Paths found to be namespaces, with their inode: not entered again
    /// while the path still has that inode.
    checked: std::collections::HashMap<PathBuf, u64>,
}

impl Resolver {
    pub fn new(specs: &[String]) -> Self {
        Resolver {
            specs: specs.to_vec(),
            told: Default::default(),
            checked: Default::default(),
        }
    }

    /// The namespaces the specs name now. `strict` (at start): a named one
    /// that is missing or not a namespace is an error; later it is left out
    /// (it went away) and taken again when it comes back.
    pub fn resolve(&mut self, strict: bool) -> Result<Vec<Netns>> {
        self.resolve_in(&Listing::now(), strict)
    }

    /// [`Resolver::resolve`] with the namespace files as `listing` found them.
    pub fn resolve_in(&mut self, listing: &Listing, strict: bool) -> Result<Vec<Netns>> {
        // (path, named by the user, its inode now)
        let mut paths: Vec<(PathBuf, bool, Option<u64>)> = Vec::new();
        let user = |p: PathBuf| {
            let inode = inode_of(&p);
            (p, true, inode)
        };
        let own = || user(PathBuf::from("/proc/self/ns/net"));
        if self.specs.is_empty() {
            paths.push(own());
        }
        for spec in &self.specs {
            match named_path(spec) {
                Named::All => {
                    paths.push(own());
                    let listed = listing.named.iter().chain(&listing.docker);
                    paths.extend(listed.map(|(p, i)| (p.clone(), false, *i)));
                }
                Named::Path(p) => paths.push(user(p)),
                Named::Bad(e) if strict => return Err(e),
                Named::Bad(_) => {}
            }
        }
        let names = listing.known_names();
        let mut out: Vec<Netns> = Vec::new();
        let mut checked = std::collections::HashMap::new();
        for (path, named, inode) in paths {
            let known = inode.filter(|i| self.checked.get(&path) == Some(i));
            let opened = match known {
                Some(inode) => Ok(Netns {
                    name: name_of(inode, &names),
                    path: path.clone(),
                    inode,
                }),
                None => open(&path, &names),
            };
            let ns = match opened {
                Ok(ns) => ns,
                Err(e) if named && strict => return Err(e),
                Err(e) => {
                    // Said once per entry; a fixed one is said again if it breaks again.
                    if !named && self.told.insert(path.clone()) {
                        eprintln!("tracer: skipping {}: {e:#}", path.display());
                    }
                    continue;
                }
            };
            self.told.remove(&path);
            checked.insert(path, ns.inode);
            if !out.iter().any(|n| n.inode == ns.inode) {
                out.push(ns);
            }
        }
        self.checked = checked;
        Ok(out)
    }
}

enum Named {
    All,
    Path(PathBuf),
    Bad(anyhow::Error),
}

/// The path one `--netns` argument names.
fn named_path(spec: &str) -> Named {
    if spec == "all" {
        return Named::All;
    }
    if let Some(pid) = spec.strip_prefix("pid:") {
        let Ok(pid) = pid.parse::<u32>() else {
            return Named::Bad(anyhow!("--netns {spec}: expected pid:<number>"));
        };
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        if !path.exists() {
            return Named::Bad(anyhow!("--netns {spec}: no process with pid {pid}"));
        }
        return Named::Path(path);
    }
    if spec.contains('/') {
        if !Path::new(spec).exists() {
            return Named::Bad(anyhow!("--netns {spec}: no such file"));
        }
        return Named::Path(PathBuf::from(spec));
    }
    let path = named_dir().join(spec);
    if !path.exists() {
        let known: Vec<String> = list_dir(&named_dir())
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        return Named::Bad(anyhow!(
            "unknown network namespace '{spec}' (named namespaces: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ));
    }
    Named::Path(path)
}

/// A path that opens the namespace with `inode`: `hint` if it still does,
/// else a named or Docker namespace, or the initial one; `None` if the
/// namespace is gone.
pub fn find_by_inode(inode: u64, hint: &Path) -> Option<PathBuf> {
    let candidates = std::iter::once(hint.to_path_buf())
        .chain(list_dir(&named_dir()))
        .chain(list_dir(&docker_dir()))
        .chain([
            PathBuf::from("/proc/1/ns/net"),
            PathBuf::from("/proc/self/ns/net"),
        ]);
    candidates.into_iter().find(|p| inode_of(p) == Some(inode))
}

/// The name of tracer's own namespace when it has no other: on a host
/// that is the host's.
pub const HOST: &str = "host";

/// The display name of the namespace with `inode`: its name, else the inode.
pub fn name_of(inode: u64, names: &[(u64, String)]) -> String {
    names
        .iter()
        .find(|(i, _)| *i == inode)
        .map(|(_, n)| n.clone())
        .unwrap_or_else(|| inode.to_string())
}

fn open(path: &Path, names: &[(u64, String)]) -> Result<Netns> {
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let inode = file.metadata()?.ino();
    run_in(path, || ())
        .with_context(|| format!("{} is not a network namespace", path.display()))?;
    Ok(Netns {
        name: name_of(inode, names),
        path: path.to_path_buf(),
        inode,
    })
}

/// The inode of the file at `path`, if there is one.
fn inode_of(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

fn list_dir(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs `f` on a thread that has entered the namespace at `path`.
///
/// `setns(CLONE_NEWNET)` only moves the calling thread, so the rest of the
/// process stays where it was. File descriptors made inside (sockets, BPF
/// links) keep the namespace they were made in after the thread ends.
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(file.as_raw_fd()).map_err(|e| anyhow!("setns {}: {e}", path.display()))?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow!("thread in {} panicked", path.display()))?
    })
}

/// Moves the calling thread into the network namespace open as `fd`.
fn enter(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: a plain syscall; a bad fd is an error, not undefined behaviour.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `cmd` run in the network namespace open as `netns`: the child
/// enters it between fork and exec. `netns` must stay open until the child
/// has started.
pub fn command_in(cmd: &mut Command, netns: &File) {
    let fd = netns.as_raw_fd();
    // SAFETY: setns is async-signal-safe, so it may run between fork and
    // exec; `fd` is open in the child, which inherits it.
    unsafe {
        cmd.pre_exec(move || enter(fd));
    }
}
