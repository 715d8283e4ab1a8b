//! The live view of the real binary in a real terminal (tmux), on an
//! overlay whose receiving host drops VXLAN: the path and its drop show,
//! stay after the traffic stopped, the hops show on Enter, and q quits
//! leaving nothing behind.

mod common;

use std::{
    net::SocketAddrV4,
    path::PathBuf,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use common::*;
use xtask::{
    bpf::tcx_attached,
    lab::{Overlay, OverlayOpts, iptables},
    peers::nstat,
    traffic::send_udp,
};

const N: u64 = 15;
const RULE: &str = "-A INPUT -p udp -m udp --dport 4789 -j DROP";

/// A tmux server of this test's own (its own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        Tmux {
            socket: format!(
                "tracer-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "tracer"]).stdout)
            .into_owned()
    }

    fn keys(&self, keys: &str) {
        assert!(
            self.run(&["send-keys", "-t", "tracer", keys])
                .status
                .success()
        );
    }

    fn alive(&self) -> bool {
        self.run(&["has-session", "-t", "tracer"]).status.success()
    }

    /// Waits until the screen satisfies `ok`; the last screen either way.
    fn wait_screen(&self, ok: impl Fn(&str) -> bool) -> (bool, String) {
        let mut last = String::new();
        let found = wait_until(|| {
            last = self.screen();
            ok(&last)
        });
        (found, last)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

fn shows_the_drop(screen: &str, flow: &str) -> bool {
    screen.lines().any(|l| {
        l.contains(flow)
            && l.contains("NETFILTER_DROP")
            && l.contains(RULE)
            && l.split_whitespace().any(|w| w == N.to_string())
    })
}

#[test]
fn live_view_in_tmux_shows_the_path_and_the_drop_and_quits() {
    let lab = Overlay::new(OverlayOpts::default()).unwrap();
    let hb = &lab.b.ns;
    iptables(
        hb,
        &["-A", "INPUT", "-p", "udp", "--dport", "4789", "-j", "DROP"],
    )
    .unwrap();
    let ready = PathBuf::from(format!("/tmp/tracer-live-ready-{}", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    let mut cmd = vec![tracer_bin().display().to_string()];
    for ns in lab.namespaces() {
        cmd.extend(["--netns".into(), ns.clone()]);
    }
    cmd.extend([
        "--output".into(),
        "table".into(),
        "--interval".into(),
        "0.5".into(),
        "--ready-file".into(),
        ready.display().to_string(),
    ]);
    let tmux = Tmux::new();
    let started = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "tracer",
        "-x",
        "220",
        "-y",
        "30",
        &cmd.join(" "),
    ]);
    assert!(started.status.success(), "{started:?}");
    let pid: u32 = String::from_utf8_lossy(
        &tmux
            .run(&["display-message", "-p", "-t", "tracer", "#{pane_pid}"])
            .stdout,
    )
    .trim()
    .parse()
    .expect("pane pid");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready.exists() {
        assert!(tmux.alive(), "tracer exited: {}", tmux.screen());
        assert!(Instant::now() < deadline, "not ready: {}", tmux.screen());
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(&ready);

    let before = nstat(hb, "IpInReceives").unwrap();
    let (from, to) = (
        SocketAddrV4::new(lab.c1.ip, 41000),
        SocketAddrV4::new(lab.c2.ip, 5001),
    );
    send_udp(&lab.c1.ns, from, to, N as u32, 100).unwrap();
    wait_received(hb, before, N);
    let flow = format!("udp {from} > {to}");
    let (found, screen) = tmux.wait_screen(|s| shows_the_drop(s, &flow));
    assert!(found, "{screen}");
    // One line for the flow, not one per hop.
    assert_eq!(
        screen.lines().filter(|l| l.contains(&flow)).count(),
        1,
        "{screen}"
    );
    assert!(screen.contains("health ok"), "{screen}");

    // Ten seconds after the traffic stopped it is still there.
    std::thread::sleep(Duration::from_secs(10));
    let screen = tmux.screen();
    assert!(shows_the_drop(&screen, &flow), "{screen}");
    eprintln!("CAPTURE\n{screen}\nCAPTURE");

    // Enter: the hops in the order of travel, then the loss.
    tmux.keys("Enter");
    let hops = [
        format!("{}/eth0 out", lab.c1.ns),
        format!("{}/vc1 in", lab.a.ns),
        format!("{}/vx0 out", lab.a.ns),
        format!("{}/ul0 out", lab.a.ns),
        format!("{hb}/ul0 in"),
        format!("x {N} lost in {hb}/ul0: NETFILTER_DROP at input: {RULE}"),
    ];
    let (found, screen) = tmux.wait_screen(|s| {
        let at: Vec<Option<usize>> = hops.iter().map(|h| s.find(h.as_str())).collect();
        at.iter().all(Option::is_some) && at.windows(2).all(|w| w[0] < w[1])
    });
    assert!(found, "hops in order: {screen}");
    eprintln!("CAPTURE\n{}\nCAPTURE", tmux.screen());

    tmux.keys("q");
    assert!(
        wait_until(|| !tmux.alive()),
        "still running: {}",
        tmux.screen()
    );
    assert!(
        wait_until(|| !PathBuf::from(format!("/proc/{pid}")).exists()),
        "tracer {pid} still running"
    );
    for (ns, dev) in [(&lab.a.ns, "ul0"), (hb, "ul0"), (&lab.c1.ns, "eth0")] {
        assert_eq!(
            tcx_attached(ns, dev).unwrap(),
            (vec![], vec![]),
            "{ns}/{dev}"
        );
    }
}
