//! Network namespaces: resolving what the user named, and running code inside one.

use std::{
    fs::File,
    os::{
        fd::{AsRawFd as _, RawFd},
        unix::{fs::MetadataExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

/// Where `ip netns add` puts named namespaces.
pub const NAMED_DIR: &str = "/var/run/netns";
/// Where Docker keeps the namespaces of containers and overlay networks.
pub const DOCKER_DIR: &str = "/var/run/docker/netns";

/// A network namespace tracer works in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    /// Its name if it has one (a file under [`NAMED_DIR`] or [`DOCKER_DIR`]), else its inode.
    pub name: String,
    /// A path that opens it.
    pub path: PathBuf,
    /// The nsfs inode: what `ls -l /proc/PID/ns/net` shows and what the kernel's `ns.inum` holds.
    pub inode: u64,
}

/// Resolves the `--netns` arguments; none means tracer's own namespace.
pub fn resolve(specs: &[String]) -> Result<Vec<Netns>> {
    let mut paths = Vec::new();
    if specs.is_empty() {
        paths.push(PathBuf::from("/proc/self/ns/net"));
    }
    for spec in specs {
        if spec == "all" {
            paths.push(PathBuf::from("/proc/self/ns/net"));
            paths.extend(list_dir(NAMED_DIR));
            paths.extend(list_dir(DOCKER_DIR));
        } else if let Some(pid) = spec.strip_prefix("pid:") {
            let pid: u32 = pid
                .parse()
                .map_err(|_| anyhow!("--netns {spec}: expected pid:<number>"))?;
            let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
            if !path.exists() {
                bail!("--netns {spec}: no process with pid {pid}");
            }
            paths.push(path);
        } else if spec.contains('/') {
            if !Path::new(spec).exists() {
                bail!("--netns {spec}: no such file");
            }
            paths.push(PathBuf::from(spec));
        } else {
            let path = Path::new(NAMED_DIR).join(spec);
            if !path.exists() {
                let known: Vec<String> = list_dir(NAMED_DIR)
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect();
                bail!(
                    "unknown network namespace '{spec}' (named namespaces: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                );
            }
            paths.push(path);
        }
    }
    let names = known_names();
    let mut out: Vec<Netns> = Vec::new();
    for path in paths {
        let ns = open(&path, &names)?;
        if !out.iter().any(|n| n.inode == ns.inode) {
            out.push(ns);
        }
    }
    Ok(out)
}

/// A path that opens the namespace with `inode`: `hint` if it still does,
/// else a named or Docker namespace, or the initial one; `None` if the
/// namespace is gone.
pub fn find_by_inode(inode: u64, hint: &Path) -> Option<PathBuf> {
    let candidates = std::iter::once(hint.to_path_buf())
        .chain(list_dir(NAMED_DIR))
        .chain(list_dir(DOCKER_DIR))
        .chain([
            PathBuf::from("/proc/1/ns/net"),
            PathBuf::from("/proc/self/ns/net"),
        ]);
    candidates
        .into_iter()
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.ino() == inode))
}

/// Names of every named and Docker namespace, by inode.
pub fn known_names() -> Vec<(u64, String)> {
    list_dir(NAMED_DIR)
        .into_iter()
        .chain(list_dir(DOCKER_DIR))
        .filter_map(|p| {
            let inode = std::fs::metadata(&p).ok()?.ino();
            Some((inode, p.file_name()?.to_string_lossy().into_owned()))
        })
        .collect()
}

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

fn list_dir(dir: &str) -> Vec<PathBuf> {
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
