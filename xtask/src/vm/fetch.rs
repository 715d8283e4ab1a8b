//! Everything that comes from apt: the suites with the kernels (pinned low),
//! qemu, busybox and kmod on the host, and each kernel unpacked into the cache
//! with its module index. A cached kernel is used as it is: no apt query, no
//! download (remove its directory to pick up a newer package).

use std::{
    fs,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use xtask::cmd::{exists, run};

use super::kernels::{self, Spec};
use crate::setup::{apt_install, installed};

pub const CACHE_DIR: &str = "/var/cache/tracer-vm";
const SOURCES: &str = "/etc/apt/sources.list.d/tracer-vm.sources";
const PREFERENCES: &str = "/etc/apt/preferences.d/tracer-vm";
/// Suites this machine may lack. qemu comes from bookworm-backports: the
/// image's qemu-utils is from there, and bookworm's qemu-system-x86 breaks it.
const SUITES: &[&str] = &[
    "bullseye",
    "bookworm",
    "bookworm-security",
    "bookworm-backports",
];
const QEMU: &str = "qemu-system-x86_64";
pub const BUSYBOX: &str = "/bin/busybox";

/// A kernel unpacked in the cache.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub spec: &'static Spec,
    /// The cache directory: `boot/` and `lib/modules/<release>/` of the package.
    pub dir: PathBuf,
    pub package: String,
    pub version: String,
    /// `uname -r` of the guest.
    pub release: String,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir.join(format!("boot/vmlinuz-{}", self.release))
    }

    pub fn modules(&self) -> PathBuf {
        self.dir.join(format!("lib/modules/{}", self.release))
    }
}

/// Installs qemu, busybox-static and kmod if missing, and makes sure the host
/// has the mount point the guest puts its modules on.
pub fn host_tools() -> Result<()> {
    if !exists(QEMU) {
        sources()?;
        eprintln!("vm: installing qemu-system-x86 from bookworm-backports");
        apt_install(&["qemu-system-x86"], Some("bookworm-backports"))?;
        if !exists(QEMU) {
            bail!("no {QEMU} after installing qemu-system-x86");
        }
    }
    let missing: Vec<&str> = ["busybox-static", "kmod"]
        .into_iter()
        .filter(|p| !installed(p))
        .collect();
    if !missing.is_empty() {
        eprintln!("vm: installing {}", missing.join(" "));
        run("apt-get", &["update", "-qq"])?;
        apt_install(&missing, None)?;
    }
    if !Path::new(BUSYBOX).exists() || !exists("depmod") {
        bail!("{BUSYBOX} or depmod still missing after installing busybox-static and kmod");
    }
    // The guest sees the host's root read-only and mounts its kernel's modules
    // on /lib/modules, which needs the directory; a host whose kernel has no
    // modules may not have it.
    fs::create_dir_all("/usr/lib/modules").context("create /usr/lib/modules")?;
    Ok(())
}

/// The cached kernel of `spec`, fetched and unpacked first if not there.
pub fn kernel(spec: &'static Spec) -> Result<Kernel> {
    let dir = Path::new(CACHE_DIR).join(spec.name);
    if let Some(k) = read_info(spec, &dir)? {
        return Ok(k);
    }
    fs::create_dir_all(CACHE_DIR).with_context(|| format!("create {CACHE_DIR}"))?;
    let _lock = Lock::take(&Path::new(CACHE_DIR).join(".lock"))?;
    // Someone else may have fetched it while we waited.
    if let Some(k) = read_info(spec, &dir)? {
        return Ok(k);
    }
    sources()?;
    let (package, version) = newest(spec)?;
    eprintln!("vm: fetching {package} {version}");
    let partial = Path::new(CACHE_DIR).join(format!("{}.partial", spec.name));
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial)?;
    let out = Command::new("apt-get")
        .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
        .arg(format!("{package}={version}"))
        .current_dir(&partial)
        .output()
        .context("run apt-get download")?;
    if !out.status.success() {
        bail!(
            "download of {package} {version} failed: {}",
            last_line(&out.stderr)
        );
    }
    let deb = fs::read_dir(&partial)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", partial.display()))?;
    run("dpkg-deb", &["-x", path_str(&deb)?, path_str(&partial)?])?;
    fs::remove_file(&deb)?;
    let release = unpacked_release(&partial)?;
    // The guest's modprobe needs modules.dep and modules.alias; depmod of the
    // host writes them for any kernel.
    run("depmod", &["-b", path_str(&partial)?, &release])?;
    fs::write(
        partial.join("kernel.txt"),
        format!("package={package}\nversion={version}\nrelease={release}\n"),
    )?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&partial, &dir)?;
    read_info(spec, &dir)?.context("kernel.txt unreadable right after writing it")
}

fn read_info(spec: &'static Spec, dir: &Path) -> Result<Option<Kernel>> {
    let Ok(text) = fs::read_to_string(dir.join("kernel.txt")) else {
        return Ok(None);
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
            .with_context(|| format!("{}: no {name}", dir.join("kernel.txt").display()))
    };
    let k = Kernel {
        spec,
        dir: dir.to_path_buf(),
        package: field("package")?,
        version: field("version")?,
        release: field("release")?,
    };
    if !k.vmlinuz().exists() || !k.modules().join("modules.dep").exists() {
        bail!(
            "the cached kernel in {} is incomplete: remove the directory",
            dir.display()
        );
    }
    Ok(Some(k))
}

/// The release the package's modules directory is named after; modules a
/// merged-/usr package puts under usr/lib move to lib/, where depmod -b looks.
fn unpacked_release(root: &Path) -> Result<String> {
    let usr = root.join("usr/lib/modules");
    if usr.is_dir() {
        fs::create_dir_all(root.join("lib"))?;
        fs::rename(&usr, root.join("lib/modules"))?;
    }
    let mut releases: Vec<String> = fs::read_dir(root.join("lib/modules"))
        .context("the kernel package has no lib/modules")?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if releases.len() != 1 {
        bail!("the kernel package holds modules for {releases:?}, not one release");
    }
    let release = releases.remove(0);
    if !root.join(format!("boot/vmlinuz-{release}")).exists() {
        bail!("the kernel package has no boot/vmlinuz-{release}");
    }
    Ok(release)
}

/// The newest package matching `spec` in its suites: (name, version).
fn newest(spec: &Spec) -> Result<(String, String)> {
    let names = run("apt-cache", &["pkgnames", "linux-image-"])?;
    let names: Vec<String> = String::from_utf8_lossy(&names.stdout)
        .lines()
        .filter(|n| kernels::matches(spec.package, n))
        .map(str::to_string)
        .collect();
    let none = || format!("no package {} in {}", spec.package, spec.suites.join(", "));
    if names.is_empty() {
        bail!(none());
    }
    let mut args = vec!["madison"];
    args.extend(names.iter().map(String::as_str));
    let madison = run("apt-cache", &args)?;
    // "name | version | http://deb.debian.org/debian bookworm/main amd64 Packages"
    let mut best: Option<(String, String)> = None;
    for line in String::from_utf8_lossy(&madison.stdout).lines() {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        let [name, version, source] = cols[..] else {
            continue;
        };
        let suite = source
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.split('/').next())
            .unwrap_or_default();
        if !source.ends_with("Packages") || !spec.suites.contains(&suite) {
            continue;
        }
        if best.as_ref().is_none_or(|(_, v)| newer(version, v)) {
            best = Some((name.to_string(), version.to_string()));
        }
    }
    best.with_context(none)
}

/// Debian version order, as dpkg defines it.
fn newer(a: &str, b: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
        .is_ok_and(|s| s.success())
}

/// Adds the suites the machine lacks in a file of their own, pinned to 50 so
/// nothing installed upgrades from them, and refreshes apt's lists when the
/// files changed or a list is missing.
fn sources() -> Result<()> {
    let targets = index_targets()?;
    let theirs = |suite: &str| {
        targets
            .iter()
            .any(|t| t.release == suite && t.entry_file != Path::new(SOURCES))
    };
    let ours: Vec<&str> = SUITES.iter().copied().filter(|s| !theirs(s)).collect();
    let mut sources = String::from(
        "# Written by `cargo xtask test --kernel`: Debian kernels and qemu for the\n\
         # VM test matrix, pinned low in /etc/apt/preferences.d/tracer-vm.\n",
    );
    let mut preferences = String::new();
    for (security, uri) in [
        (false, "http://deb.debian.org/debian"),
        (true, "http://deb.debian.org/debian-security"),
    ] {
        let suites: Vec<&str> = ours
            .iter()
            .copied()
            .filter(|s| s.ends_with("-security") == security)
            .collect();
        if suites.is_empty() {
            continue;
        }
        sources.push_str(&format!(
            "\nTypes: deb\nURIs: {uri}\nSuites: {}\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
            suites.join(" ")
        ));
    }
    for suite in &ours {
        preferences.push_str(&format!(
            "Package: *\nPin: release n={suite}\nPin-Priority: 50\n\n"
        ));
    }
    let changed =
        write_if_changed(SOURCES, &sources)? | write_if_changed(PREFERENCES, &preferences)?;
    let stale = index_targets()?.iter().any(|t| !t.list.exists());
    if changed || stale {
        eprintln!("vm: apt-get update");
        let out = Command::new("apt-get")
            .args(["update", "-qq"])
            .output()
            .context("run apt-get update")?;
        if !out.status.success() {
            bail!("apt-get update failed: {}", last_line(&out.stderr));
        }
    }
    Ok(())
}

struct IndexTarget {
    release: String,
    /// The sources file that configures it.
    entry_file: PathBuf,
    /// Where apt keeps its Packages list.
    list: PathBuf,
}

/// Every Packages index apt is configured for.
fn index_targets() -> Result<Vec<IndexTarget>> {
    let out = run(
        "apt-get",
        &[
            "indextargets",
            "--format",
            "$(IDENTIFIER)|$(RELEASE)|$(SOURCESENTRY)|$(FILENAME)",
        ],
    )?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split('|');
            if f.next()? != "Packages" {
                return None;
            }
            let release = f.next()?.to_string();
            // "/etc/apt/sources.list.d/debian.sources:1"
            let entry = f.next()?;
            let entry_file = PathBuf::from(entry.rsplit_once(':').map_or(entry, |(p, _)| p));
            // apt may keep the list compressed (".lz4") under another name.
            let list = PathBuf::from(f.next()?);
            Some(IndexTarget {
                release,
                entry_file,
                list,
            })
        })
        .collect())
}

fn write_if_changed(path: &str, text: &str) -> Result<bool> {
    if fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    fs::write(path, text).with_context(|| format!("write {path}"))?;
    Ok(true)
}

fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no output)")
        .trim()
        .to_string()
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// An exclusive flock, released when dropped (the file is closed).
struct Lock(#[allow(dead_code)] fs::File);

impl Lock {
    fn take(path: &Path) -> Result<Self> {
        let f = fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "lock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(Lock(f))
    }
}
