//! Installs what a fresh machine lacks; fast and silent when all is there.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use xtask::cmd::{exists, run};

/// Debian packages the tests and the demo use.
const RUNTIME_PACKAGES: &[&str] = &[
    "iproute2",
    "iptables",
    "nftables",
    "iputils-ping",
    "procps",
    "tcpdump",
    "iperf3",
    "bpftool",
    "bpftrace",
    // The live view's test drives the real binary in a terminal.
    "tmux",
    // The readers the export tests check tracer's pcapng and /metrics with.
    "tshark",
    "python3-prometheus-client",
    // The Docker tests start a real dockerd (this package's; PID 1 starts
    // none here) and build their image from busybox-static.
    "docker.io",
    "busybox-static",
];
/// What building bpf-linker against the nightly's LLVM 22 needs.
const LINKER_BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
];
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn setup() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("setup needs root: it installs packages, and tracer loads eBPF programs");
    }
    let linker_ok = bpf_linker_works();
    let mut wanted: Vec<&str> = RUNTIME_PACKAGES.to_vec();
    if !linker_ok {
        wanted.extend(LINKER_BUILD_PACKAGES);
    }
    let missing: Vec<&str> = wanted.into_iter().filter(|p| !installed(p)).collect();
    if !missing.is_empty() {
        eprintln!("setup: installing {}", missing.join(" "));
        run("apt-get", &["update", "-qq"])?;
        if missing.contains(&"tshark") {
            // wireshark-common asks whether non-root users may capture: no question, no.
            preseed("wireshark-common wireshark-common/install-setuid boolean false")?;
        }
        apt_install(&missing, None)?;
    }
    rust_src()?;
    if !linker_ok {
        install_bpf_linker()?;
    }
    tracefs()
}

/// `apt-get install` of `packages`, from `release` if given (`-t`).
pub(crate) fn apt_install(packages: &[&str], release: Option<&str>) -> Result<()> {
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    if let Some(release) = release {
        args.extend(["-t", release]);
    }
    args.extend(packages);
    let status = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("run apt-get")?;
    if !status.success() {
        bail!("apt-get install {} failed", packages.join(" "));
    }
    Ok(())
}

/// Answers a debconf question before the package that asks it is installed.
fn preseed(answer: &str) -> Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("debconf-set-selections")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("run debconf-set-selections")?;
    writeln!(child.stdin.take().expect("piped"), "{answer}")?;
    if !child.wait()?.success() {
        bail!("debconf-set-selections failed for {answer}");
    }
    Ok(())
}

pub(crate) fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn bpf_linker_works() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `-Z build-std=core` for the bpf target needs the nightly's library sources.
fn rust_src() -> Result<()> {
    let toolchains = run("rustup", &["toolchain", "list"])?;
    if !String::from_utf8_lossy(&toolchains.stdout).contains("nightly") {
        eprintln!("setup: installing the nightly toolchain");
        run(
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
        )?;
    }
    let comps = run(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )?;
    if !String::from_utf8_lossy(&comps.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        eprintln!("setup: adding rust-src to nightly");
        run(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", "nightly"],
        )?;
    }
    Ok(())
}

fn install_bpf_linker() -> Result<()> {
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} (a few minutes, once)");
    // The nightly links LLVM 22; bpf-linker's default feature wants LLVM 23.
    let status = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22")
        .env("RUSTFLAGS", "-L native=/usr/lib/llvm-22/lib")
        .status()
        .context("run cargo install")?;
    if !status.success() || !bpf_linker_works() {
        bail!("installing bpf-linker failed");
    }
    Ok(())
}

fn tracefs() -> Result<()> {
    if !Path::new("/sys/kernel/tracing/events").exists() {
        eprintln!("setup: mounting tracefs");
        run("mount", &["-t", "tracefs", "nodev", "/sys/kernel/tracing"])?;
    }
    for tool in ["ip", "bridge", "ping", "sysctl"] {
        if !exists(tool) {
            bail!("{tool} is still missing after setup");
        }
    }
    Ok(())
}
