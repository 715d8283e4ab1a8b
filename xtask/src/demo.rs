//! The main job for a newcomer: a VXLAN lab, known traffic across it, and
//! tracer's view of it, then the lab is torn down.

use std::{
    net::SocketAddrV4,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use xtask::{
    lab::{Overlay, OverlayOpts, iptables},
    traffic::{UdpSink, send_udp},
};

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// Builds tracer and returns the binary's path.
pub fn build_tracer(release: bool) -> Result<PathBuf> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(workspace())
        .args(["build", "--package", "tracer"]);
    if release {
        cmd.arg("--release");
    }
    if !cmd.status()?.success() {
        bail!("building tracer failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    Ok(target
        .join(if release { "release" } else { "debug" })
        .join("tracer"))
}

pub fn demo() -> Result<()> {
    let tracer = build_tracer(false)?;
    let lab = Overlay::new(OverlayOpts::default())?;
    let (c1, c2) = (&lab.c1, &lab.c2);
    // A firewall in container 2 that drops one port, as in the DNS write-ups.
    iptables(
        &c2.ns,
        &["-A", "INPUT", "-p", "udp", "--dport", "5353", "-j", "DROP"],
    )?;
    println!(
        "lab: hosts {} ({}) and {} ({}) joined by veth ul0; on each, VXLAN vx0 (VNI {}, UDP {}) \
         on bridge br0;\ncontainers {} ({}) and {} ({}); in {}, iptables drops UDP to port 5353.\n\
         traffic: 50 UDP datagrams {}:41000 -> {}:5001, then 10 to port 5353.\n",
        lab.a.ns,
        lab.a.underlay_ip,
        lab.b.ns,
        lab.b.underlay_ip,
        lab.opts.vni,
        lab.opts.vxlan_port,
        c1.ns,
        c1.ip,
        c2.ns,
        c2.ip,
        c2.ns,
        c1.ip,
        c2.ip,
    );
    let ready = std::env::temp_dir().join(format!("tracer-demo-{}", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    let mut args: Vec<String> = Vec::new();
    for ns in lab.namespaces() {
        args.extend(["--netns".to_string(), ns.clone()]);
    }
    args.extend(["--duration".into(), "4".into(), "--ready-file".into()]);
    args.push(ready.display().to_string());
    let mut child = Command::new(&tracer)
        .args(&args)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", tracer.display()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready.exists() {
        if let Some(status) = child.try_wait()? {
            bail!("tracer exited early: {status}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("tracer did not get ready");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let to = SocketAddrV4::new(c2.ip, 5001);
    let sink = UdpSink::start(&c2.ns, to)?;
    send_udp(&c1.ns, SocketAddrV4::new(c1.ip, 41000), to, 50, 200)?;
    send_udp(
        &c1.ns,
        SocketAddrV4::new(c1.ip, 41001),
        SocketAddrV4::new(c2.ip, 5353),
        10,
        60,
    )?;
    sink.wait_for(50, Duration::from_secs(5));
    let status = child.wait()?;
    let _ = std::fs::remove_file(&ready);
    println!(
        "\n{} of 50 datagrams arrived; the totals above count them at every hop: container veth, \
         bridge port, VXLAN device, and the underlay with VNI {} and the container flow inside.\n\
         The 10 datagrams to port 5353 are NETFILTER_DROP drops in {} and 'dropped' verdicts \
         at its input hook.\nThe path lines put each flow's hops in the order of travel: the \
         second passed all 8 and was lost after {}/{} in, with the rule that dropped it.",
        sink.received(),
        lab.opts.vni,
        c2.ns,
        c2.ns,
        c2.dev
    );
    if !status.success() {
        bail!("tracer failed: {status}");
    }
    Ok(())
}
