//! The guest's first stage: an initramfs of static busybox and the modules
//! that reach the host's root over 9p. Its /init mounts the host's root
//! read-only, puts tmpfs where the tests write and the guest kernel's modules
//! on /lib/modules, mounts the results share, and switches root to run the
//! second stage ([`super::guest`]) from that share.

use std::{
    collections::{BTreeSet, HashMap},
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::fetch::{BUSYBOX, Kernel};

/// The 9p mount tags qemu gives the two shares.
pub const ROOT_TAG: &str = "hostroot";
pub const RESULTS_TAG: &str = "results";
/// Where the results share appears in the guest.
pub const RESULTS_MOUNT: &str = "/run/tracer-vm";
/// The second stage, in the results share.
pub const STAGE2: &str = "stage2.sh";
/// What /init prints when it hands over; the host times the boot by it.
pub const HANDOVER: &str = "tracer-vm: root switched";

/// Covered by a tmpfs in the guest: dockerd writes there (see
/// `xtask::docker`), and the host's root is shared read-only.
pub const DOCKER_LIB: &str = "/var/lib/docker";

/// The host's directories the guest covers with a tmpfs of its own, and
/// its mode: the guest writes there, and nothing it runs may live there.
pub const TMPFS: &[(&str, u32)] = &[
    ("/run", 0o755),
    ("/tmp", 0o1777),
    ("/var/tmp", 0o1777),
    ("/usr/lib/modules", 0o755),
    // dockerd writes under it whatever its --data-root (an overlay's
    // load-balancer files): the host made the directory to mount on.
    (DOCKER_LIB, 0o711),
];

/// What the initramfs must load, with their dependencies, unless built in.
const MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

/// The initramfs for `kernel`, built once and kept in its cache directory.
pub fn build(kernel: &Kernel) -> Result<PathBuf> {
    // The guest mounts on it, and cannot make it on the read-only share.
    fs::create_dir_all(DOCKER_LIB).with_context(|| format!("create {DOCKER_LIB}"))?;
    let modules = closure(&kernel.modules())?;
    let init = init_script(kernel);
    let busybox = fs::metadata(BUSYBOX).with_context(|| format!("stat {BUSYBOX}"))?;
    // Anything that changes what the image holds changes the key.
    let key = format!(
        "{init}\n{:?} {}\n{}\n",
        busybox.modified().ok(),
        busybox.len(),
        modules
            .iter()
            .map(|m| m.display().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let image = kernel.dir.join("initramfs.cpio");
    let key_file = kernel.dir.join("initramfs.key");
    if image.exists() && fs::read_to_string(&key_file).is_ok_and(|k| k == key) {
        return Ok(image);
    }
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "sys", "newroot", "modules"] {
        cpio.dir(dir);
    }
    cpio.file("bin/busybox", 0o755, &fs::read(BUSYBOX)?);
    cpio.file("init", 0o755, init.as_bytes());
    let mut order = String::new();
    for (i, path) in modules.iter().enumerate() {
        let name = format!("{i:02}.ko");
        cpio.file(&format!("modules/{name}"), 0o644, &module_bytes(path)?);
        order.push_str(&format!("{name} {}\n", path.display()));
    }
    cpio.file("modules/order", 0o644, order.as_bytes());
    let tmp = image.with_extension("partial");
    fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(&cpio.finish()))
        .with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, &image)?;
    fs::write(&key_file, key)?;
    Ok(image)
}

/// The shell script the kernel runs as /init (busybox sh).
fn init_script(kernel: &Kernel) -> String {
    let modules = kernel.modules();
    let release = &kernel.release;
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
die() {{
    echo "tracer-vm: init failed: $*"
    echo o > /proc/sysrq-trigger
    sleep 10
}}
while read -r ko what; do
    insmod "/modules/$ko" || die "insmod $what"
done < /modules/order
# Reads of the host's root are cached: nothing writes to it while we run.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 {ROOT_TAG} /newroot || die "mount the host root"
for d in {tmpfs}; do
    mount -t tmpfs -o "mode=${{d#*:}}" tmpfs "/newroot${{d%:*}}" || die "tmpfs on $d"
done
mkdir /newroot/usr/lib/modules/{release}
mount -o bind /newroot{modules} /newroot/usr/lib/modules/{release} || die "bind the modules"
mkdir -p /newroot{RESULTS_MOUNT}
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 {RESULTS_TAG} /newroot{RESULTS_MOUNT} || die "mount the results share"
for d in /dev /proc /sys; do
    mount -o move "$d" "/newroot$d" || die "move $d"
done
echo "{HANDOVER}"
exec switch_root /newroot /bin/bash {RESULTS_MOUNT}/{STAGE2}
"#,
        modules = modules.display(),
        tmpfs = TMPFS
            .iter()
            .map(|(dir, mode)| format!("{dir}:{mode:04o}"))
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// The module files of [`MODULES`] and their dependencies, each after what it
/// needs; built-in ones are left out.
fn closure(dir: &Path) -> Result<Vec<PathBuf>> {
    let dep = fs::read_to_string(dir.join("modules.dep"))
        .with_context(|| format!("read {}/modules.dep", dir.display()))?;
    let builtin = fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    // "kernel/fs/9p/9p.ko: kernel/fs/netfs/netfs.ko kernel/net/9p/9pnet.ko"
    let deps: HashMap<&str, Vec<&str>> = dep
        .lines()
        .filter_map(|l| {
            let (m, d) = l.split_once(':')?;
            Some((m.trim(), d.split_whitespace().collect()))
        })
        .collect();
    let by_name: HashMap<String, &str> = deps.keys().map(|p| (module_name(p), *p)).collect();
    let builtin: BTreeSet<String> = builtin.lines().map(module_name).collect();
    let mut order = Vec::new();
    fn visit<'a>(path: &'a str, deps: &HashMap<&str, Vec<&'a str>>, order: &mut Vec<&'a str>) {
        if order.contains(&path) {
            return;
        }
        for d in deps.get(path).into_iter().flatten() {
            visit(d, deps, order);
        }
        order.push(path);
    }
    for m in MODULES {
        match by_name.get(*m) {
            Some(path) => visit(path, &deps, &mut order),
            None if builtin.contains(*m) => {}
            None => bail!(
                "module {m} is neither in {}/modules.dep nor built in",
                dir.display()
            ),
        }
    }
    Ok(order.into_iter().map(|p| dir.join(p)).collect())
}

/// "kernel/net/9p/9pnet_virtio.ko.xz" -> "9pnet_virtio" (as modprobe names it).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// A module file's contents, uncompressed: busybox's insmod may not read xz.
fn module_bytes(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko") {
        return fs::read(path).with_context(|| format!("read {name}"));
    } else if name.ends_with(".ko.xz") {
        "xz"
    } else if name.ends_with(".ko.zst") {
        "zstd"
    } else if name.ends_with(".ko.gz") {
        "gzip"
    } else {
        bail!("{name}: unknown module compression");
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("run {tool} to unpack {name}"))?;
    if !out.status.success() {
        bail!("{tool} -dc {name} failed");
    }
    Ok(out.stdout)
}

/// A newc cpio archive, the format the kernel unpacks as initramfs.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    inode: u32,
}

impl Cpio {
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, 2, &[]);
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | mode, 1, data);
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, data: &[u8]) {
        self.inode += 1;
        let header = format!(
            "070701{:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.inode,
            0, // uid
            0, // gid
            0, // mtime
            data.len(),
            0, // dev major, minor
            0,
            0, // rdev major, minor
            0,
            name.len() + 1,
            0, // checksum (unused by newc)
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names() {
        assert_eq!(
            module_name("kernel/net/9p/9pnet_virtio.ko.xz"),
            "9pnet_virtio"
        );
        assert_eq!(
            module_name("kernel/drivers/virtio/virtio_pci.ko"),
            "virtio_pci"
        );
        assert_eq!(module_name("kernel/fs/9p/9p.ko"), "9p");
    }

    #[test]
    fn closure_puts_dependencies_first() {
        let dir = std::env::temp_dir().join(format!("tracer-vm-closure-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("modules.dep"),
            "kernel/fs/9p/9p.ko: kernel/fs/netfs/netfs.ko kernel/net/9p/9pnet.ko\n\
             kernel/fs/netfs/netfs.ko:\n\
             kernel/net/9p/9pnet.ko:\n\
             kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko\n",
        )
        .unwrap();
        fs::write(
            dir.join("modules.builtin"),
            "kernel/drivers/virtio/virtio_pci.ko\n",
        )
        .unwrap();
        let got: Vec<String> = closure(&dir)
            .unwrap()
            .iter()
            .map(|p| module_name(&p.to_string_lossy()))
            .collect();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(got, ["9pnet", "9pnet_virtio", "netfs", "9p"]);
    }

    #[test]
    fn cpio_entries_are_aligned() {
        let mut c = Cpio::default();
        c.file("init", 0o755, b"abc");
        let out = c.finish();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
    }
}
