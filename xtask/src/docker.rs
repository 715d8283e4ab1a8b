//! A real dockerd for tests, as a user's host has one: each daemon in a
//! network namespace of a [`Lab`] and a mount namespace of its own (a
//! private `/run`, so its socket, containerd, sandbox files and iptables
//! lock are its own; its own data root), so that tests run in parallel, and
//! two daemons make a two-node Swarm on one machine.
//!
//! From inside that mount and network namespace (`nsenter -t PID -m -n`,
//! [`Daemon::enter`]) it is a Docker host: `/var/run/docker.sock`,
//! `/var/run/docker/netns/`, `docker0`. tracer is run there the same way.
//!
//! No registry is reachable: the image is busybox-static, imported from a
//! tarball. Containers run `sleep`; tests send and receive their traffic
//! from inside the containers' network namespaces.
//!
//! Dropping a [`Daemon`] removes its containers, stops it, kills whatever
//! is left in its mount namespace (containerd, shims, containers) and
//! deletes its data root, also when a test panics. A daemon left by a test
//! process that was killed is found by its pid file and stopped when its
//! lab number is taken again.

use std::{
    fs,
    net::Ipv4Addr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::lab::{LEASE_DIR, Lab};

/// The image every test container runs.
pub const IMAGE: &str = "tracer-test:1";

/// One dockerd in its lab namespace.
pub struct Daemon {
    /// The lab namespace it runs in (its host network namespace).
    pub ns: String,
    /// dockerd's pid (in this pid namespace).
    pub pid: u32,
    child: Child,
    /// Its data root, config and log.
    dir: PathBuf,
    /// Its mount namespace's inode: what is left there is killed on drop.
    mnt: u64,
    pidfile: PathBuf,
}

/// A running container.
#[derive(Debug, Clone)]
pub struct Container {
    pub name: String,
    pub id: String,
    /// Its init process, in this pid namespace.
    pub pid: u32,
    /// Its address on the network it was started on.
    pub ip: Ipv4Addr,
}

impl Container {
    /// A path that opens its network namespace, for [`crate::traffic`].
    pub fn netns(&self) -> String {
        format!("/proc/{}/ns/net", self.pid)
    }
}

/// The mount namespace setup and dockerd, run by `sh` in a new mount
/// namespace inside the lab namespace. `/sys` is mounted again so that it
/// shows this network namespace's devices, keeping the cgroup mounts.
/// `/etc/docker` is a tmpfs of its own: dockerd 20.10 writes its identity
/// key there, which fails on a VM's read-only root and would otherwise give
/// every test daemon (both Swarm nodes) the host's one identity.
const NODE_SCRIPT: &str = r#"set -e
mount -t tmpfs -o mode=755 tmpfs /run
[ -d /etc/docker ] || mkdir -p /etc/docker
mount -t tmpfs -o mode=700 tmpfs /etc/docker
mkdir /run/cg
mount --rbind /sys/fs/cgroup /run/cg
mount -t sysfs sysfs /sys
mount --move /run/cg /sys/fs/cgroup
rmdir /run/cg
exec dockerd "$@"
"#;

impl Daemon {
    /// Starts dockerd in a new lab namespace `role`; its default bridge
    /// gets `10.<lab>.<bridge_subnet>.0/24`. Returns once it answers.
    pub fn start(lab: &mut Lab, role: &str, bridge_subnet: u8) -> Result<Daemon> {
        let ns = lab.add_ns(role)?;
        let pidfile = PathBuf::from(format!("{LEASE_DIR}/dockerd-{ns}.pid"));
        stop_leftover(&pidfile);
        let dir = std::env::temp_dir().join(format!("tracer-dockerd-{ns}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("data"))?;
        fs::write(dir.join("daemon.json"), "{}\n")?;
        let log = fs::File::create(dir.join("dockerd.log"))?;
        let bip = format!("{}/24", lab.addr(bridge_subnet, 1));
        let pool = format!("base={}/20,size=24", lab.addr(208, 0));
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{ns}"))
            .args(["unshare", "-m", "--propagation", "private", "sh", "-c"])
            .arg(NODE_SCRIPT)
            .arg("dockerd")
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .arg("--data-root")
            .arg(dir.join("data"))
            .args([
                "--exec-root",
                "/run/docker",
                "--pidfile",
                "/run/docker.pid",
                "-H",
                "unix:///run/docker.sock",
                "--bip",
                &bip,
                "--default-address-pool",
                &pool,
                "--log-level",
                "warn",
                // No daemon of this test to wait for on the way out.
                "--shutdown-timeout",
                "2",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start dockerd (is docker.io installed?)")?;
        let pid = child.id();
        fs::write(&pidfile, format!("{pid}\n"))?;
        let mut daemon = Daemon {
            ns,
            pid,
            child,
            dir,
            mnt: 0,
            pidfile,
        };
        // A guard against a daemon that never comes up, not a timing check.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = daemon.child.try_wait()? {
                bail!(
                    "dockerd exited ({status}): {}",
                    daemon.log().lines().last().unwrap_or("")
                );
            }
            if daemon.mnt == 0 {
                // Until `unshare` ran, the child is still in this mount
                // namespace: that one must never be the daemon's to kill.
                daemon.mnt = mount_ns(pid)
                    .ok()
                    .filter(|&m| Some(m) != own_mount_ns())
                    .unwrap_or(0);
            }
            if daemon
                .docker(&["version", "--format", "{{.Server.Version}}"])
                .is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("dockerd did not answer within 120 s: {}", daemon.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        daemon.mnt = mount_ns(pid)?;
        daemon.import_image()?;
        Ok(daemon)
    }

    /// What dockerd wrote to its log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// The last lines of its log, for an error of a command it failed:
    /// Docker's own messages say "check manager logs".
    fn log_tail(&self) -> String {
        let log = self.log();
        // Without IPVS in a namespace, swarm logs each sysctl it cannot
        // read, again and again: not what failed.
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("error reading the kernel parameter"))
            .collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("dockerd {} log ends:\n{tail}", self.ns)
    }

    /// `nsenter` arguments that run a command on this Docker host: in the
    /// daemon's mount and network namespaces.
    pub fn enter(&self) -> Vec<String> {
        vec![
            "nsenter".into(),
            "-t".into(),
            self.pid.to_string(),
            "-m".into(),
            "-n".into(),
            "--".into(),
        ]
    }

    /// Runs `program args...` on this Docker host; its standard output.
    pub fn sh(&self, program: &str, args: &[&str]) -> Result<String> {
        self.sh_with_input(program, args, None)
    }

    fn sh_with_input(&self, program: &str, args: &[&str], input: Option<&Path>) -> Result<String> {
        let enter = self.enter();
        let mut cmd = Command::new(&enter[0]);
        cmd.args(&enter[1..]).arg(program).args(args);
        cmd.stdin(match input {
            Some(p) => Stdio::from(fs::File::open(p)?),
            None => Stdio::null(),
        });
        let out = cmd.output().with_context(|| format!("run {program}"))?;
        if !out.status.success() {
            bail!(
                "`{program} {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `docker args...` against this daemon.
    pub fn docker(&self, args: &[&str]) -> Result<String> {
        self.sh("docker", args)
    }

    /// `iptables args...` on this Docker host.
    pub fn iptables(&self, args: &[&str]) -> Result<String> {
        self.sh("iptables", args)
    }

    fn import_image(&self) -> Result<()> {
        let tar = image_tarball()?;
        self.sh_with_input("docker", &["import", "-", IMAGE], Some(&tar))?;
        Ok(())
    }

    /// `docker run -d --name NAME ARGS... IMAGE sleep ...`: a container that
    /// stays up until removed. `network`: its network's name, for its address.
    pub fn run(&self, name: &str, network: &str, args: &[&str]) -> Result<Container> {
        let mut all = vec!["run", "-d", "--name", name, "--network", network];
        all.extend_from_slice(args);
        all.extend([IMAGE, "sleep", "1000000"]);
        let id = match self.docker(&all) {
            // runc's prestart hook (libnetwork-setkey) failed once in CI
            // with "no such file or directory" before the container ran:
            // Docker's, not tracer's. Once more, after removing what it left.
            Err(e) if format!("{e}").contains("OCI runtime create failed") => {
                eprintln!("docker run {name} failed, once more: {e}");
                let _ = self.docker(&["rm", "-f", name]);
                self.docker(&all).with_context(|| self.log_tail())?
            }
            r => r.with_context(|| self.log_tail())?,
        };
        self.container(name, network)
            .with_context(|| format!("container {name} ({id})"))
    }

    /// A running container's pid and address on `network`.
    pub fn container(&self, name: &str, network: &str) -> Result<Container> {
        let format = format!(
            "{{{{.Id}}}} {{{{.State.Pid}}}} {{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"
        );
        let out = self.docker(&["inspect", "-f", &format, name])?;
        let mut it = out.split_whitespace();
        let (Some(id), Some(pid), Some(ip)) = (it.next(), it.next(), it.next()) else {
            bail!("docker inspect {name}: unexpected {out:?}");
        };
        Ok(Container {
            name: name.to_string(),
            id: id.to_string(),
            pid: pid.parse()?,
            ip: ip.parse()?,
        })
    }

    /// The sandbox file of a container (`/var/run/docker/netns/<id>`), as a
    /// path on this Docker host.
    pub fn sandbox_key(&self, name: &str) -> Result<String> {
        self.docker(&["inspect", "-f", "{{.NetworkSettings.SandboxKey}}", name])
    }

    /// Whether a file exists on this Docker host.
    pub fn exists(&self, path: &str) -> bool {
        self.sh("test", &["-e", path]).is_ok()
    }
}

/// Where dockerd keeps each overlay's load-balancer files whatever its
/// `--data-root` (a path fixed in libnetwork): `lb_<network id>`.
const LB_FILES: &str = "/var/lib/docker/network/files";

impl Drop for Daemon {
    fn drop(&mut self) {
        let overlays = self
            .docker(&[
                "network",
                "ls",
                "-q",
                "--no-trunc",
                "--filter",
                "driver=overlay",
            ])
            .unwrap_or_default();
        if let Ok(ids) = self.docker(&["ps", "-aq"]) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.docker(&args);
            }
        }
        // SAFETY: plain syscall, on the daemon this handle started.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.mnt != 0 {
            kill_mount_ns(self.mnt);
        }
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_file(&self.pidfile);
        for id in overlays.split_whitespace() {
            let _ = fs::remove_dir_all(Path::new(LB_FILES).join(format!("lb_{id}")));
        }
    }
}

fn mount_ns(pid: u32) -> Result<u64> {
    Ok(fs::metadata(format!("/proc/{pid}/ns/mnt"))?.ino())
}

/// Processes as (pid, parent pid).
fn processes() -> Vec<(u32, u32)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The name in parentheses may hold spaces: the fields after the last ')'.
            let after = &stat[stat.rfind(')')? + 2..];
            let ppid = after.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect()
}

/// This process's mount namespace.
fn own_mount_ns() -> Option<u64> {
    mount_ns(std::process::id()).ok()
}

/// Kills every process in mount namespace `mnt` (containerd and its shims)
/// and their descendants (the containers, in mount namespaces of their own).
fn kill_mount_ns(mnt: u64) {
    if Some(mnt) == own_mount_ns() {
        // Everything here, this test included: not a daemon's to kill.
        return;
    }
    for _ in 0..5 {
        let procs = processes();
        let mut doomed: Vec<u32> = procs
            .iter()
            .filter(|(pid, _)| mount_ns(*pid).is_ok_and(|m| m == mnt))
            .map(|(pid, _)| *pid)
            .collect();
        let mut i = 0;
        while i < doomed.len() {
            let parent = doomed[i];
            for (pid, ppid) in &procs {
                if *ppid == parent && !doomed.contains(pid) {
                    doomed.push(*pid);
                }
            }
            i += 1;
        }
        if doomed.is_empty() {
            return;
        }
        for pid in doomed {
            // SAFETY: plain syscall; these are processes this daemon started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Stops a daemon a killed test process left under this pid file.
fn stop_leftover(pidfile: &Path) {
    let Some(pid) = fs::read_to_string(pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return;
    };
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() == "dockerd"
        && let Ok(mnt) = mount_ns(pid)
    {
        kill_mount_ns(mnt);
    }
    let _ = fs::remove_file(pidfile);
}

/// The image's root filesystem as a tarball: busybox-static and the
/// applets the tests use. Made once per process.
fn image_tarball() -> Result<PathBuf> {
    // Kept open and unlinked: nothing is left in /tmp when the test
    // process ends, however it ends. Each import opens it afresh through
    // /proc (its own offset), so parallel tests do not share a position.
    static MADE: Mutex<Option<fs::File>> = Mutex::new(None);
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(f) = made.as_ref() {
        return Ok(proc_fd(f));
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox is missing: install busybox-static");
    }
    let root = std::env::temp_dir().join(format!("tracer-image-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(root.join("bin"))?;
    fs::copy(busybox, root.join("bin/busybox"))?;
    for applet in ["sh", "sleep", "ip", "ping", "cat", "ls"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    let tar = root.with_extension("tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()?;
    let _ = fs::remove_dir_all(&root);
    let opened = fs::File::open(&tar);
    let _ = fs::remove_file(&tar);
    if !out.status.success() {
        bail!("tar: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let file = opened.with_context(|| format!("open {}", tar.display()))?;
    let path = proc_fd(&file);
    *made = Some(file);
    Ok(path)
}

/// A path that opens `f` again, unlinked or not.
fn proc_fd(f: &fs::File) -> PathBuf {
    use std::os::fd::AsRawFd as _;
    PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

/// Two daemons in a Swarm, joined by an underlay veth (`ul0`,
/// `10.<lab>.1.1` and `.2`), with an attachable overlay network
/// [`Swarm::OVERLAY`] on `10.<lab>.100.0/24`. The overlay's namespace on a
/// node appears when the first container there joins it.
pub struct Swarm {
    pub manager: Daemon,
    pub worker: Daemon,
    pub manager_ip: Ipv4Addr,
    pub worker_ip: Ipv4Addr,
}

impl Swarm {
    /// The overlay's name. Not a possible ID prefix (Swarm's IDs are
    /// `[0-9a-z]`): until a node has a container on an attachable network,
    /// its daemon resolves `--network NAME` by ID prefix among the networks
    /// it has, and a name like `ov` picked `ingress` once its random ID
    /// began with "ov" ("network ingress not manually attachable").
    pub const OVERLAY: &str = "ov-net";

    pub fn new(lab: &mut Lab, underlay_mtu: u32) -> Result<Swarm> {
        let manager = Daemon::start(lab, "n1", 201)?;
        let worker = Daemon::start(lab, "n2", 202)?;
        let (manager_ip, worker_ip) = (lab.addr(1, 1), lab.addr(1, 2));
        lab.veth(
            (&manager.ns, "ul0"),
            (&worker.ns, "ul0"),
            underlay_mtu,
            (&lab.mac(1, 1), &lab.mac(1, 2)),
        )?;
        for (d, ip) in [(&manager, manager_ip), (&worker, worker_ip)] {
            crate::lab::addr(&d.ns, "ul0", ip, 24)?;
        }
        let m = manager_ip.to_string();
        manager.docker(&["swarm", "init", "--advertise-addr", &m, "--listen-addr", &m])?;
        let token = manager.docker(&["swarm", "join-token", "-q", "worker"])?;
        let w = worker_ip.to_string();
        worker.docker(&[
            "swarm",
            "join",
            "--token",
            &token,
            "--advertise-addr",
            &w,
            "--listen-addr",
            &w,
            &format!("{m}:2377"),
        ])?;
        let subnet = format!("{}/24", lab.addr(100, 0));
        manager.docker(&[
            "network",
            "create",
            "-d",
            "overlay",
            "--attachable",
            "--subnet",
            &subnet,
            Self::OVERLAY,
        ])?;
        Ok(Swarm {
            manager,
            worker,
            manager_ip,
            worker_ip,
        })
    }
}
