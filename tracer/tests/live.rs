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
    lab::{Overlay, OverlayOpts, iptables},
    peers::nstat,
    traffic::{UdpSink, send_udp},
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

    /// The program in the window has exited (the window stays: remain-on-exit).
    fn dead(&self) -> bool {
        let out = self.run(&["display-message", "-p", "-t", "tracer", "#{pane_dead}"]);
        !out.status.success() || String::from_utf8_lossy(&out.stdout).trim() == "1"
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

/// A path line of `flow` with `n` lost, NETFILTER_DROP and `rule`.
fn shows_the_drop(screen: &str, flow: &str, n: u64, rule: &str) -> bool {
    screen.lines().any(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        l.starts_with(flow)
            && w.get(7) == Some(&n.to_string().as_str())
            && l.contains("NETFILTER_DROP")
            && l.contains(rule)
    })
}

/// Starts the real binary's live view on `namespaces` in a 220x30 tmux
/// window that stays after it exits (to read what it printed), and waits
/// until it is ready. Returns tmux and tracer's pid.
fn start_live(namespaces: &[String]) -> (Tmux, u32) {
    let tmux = Tmux::new();
    let ready = PathBuf::from(format!("/tmp/{}.ready", tmux.socket));
    let _ = std::fs::remove_file(&ready);
    let mut cmd = vec![tracer_bin().display().to_string()];
    for ns in namespaces {
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
    // tracer waits for its programs to attach before it draws or exits:
    // remain-on-exit is set in time.
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
        ";",
        "set-option",
        "-t",
        "tracer",
        "remain-on-exit",
        "on",
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
        assert!(!tmux.dead(), "tracer exited: {}", tmux.screen());
        assert!(Instant::now() < deadline, "not ready: {}", tmux.screen());
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(&ready);
    (tmux, pid)
}

/// q: tracer exits, prints the run's paths on the terminal it gives back,
/// and leaves no program attached to `devices`.
fn quit_and_check(tmux: &Tmux, pid: u32, path_line: &str, devices: &[(&String, &str)]) {
    tmux.keys("q");
    assert!(
        wait_until(|| tmux.dead()),
        "still running: {}",
        tmux.screen()
    );
    // Exited: gone, or a zombie tmux has not reaped yet (it has closed
    // every descriptor, its eBPF links included).
    let exited = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|st| st.rsplit(") ").next().is_some_and(|r| r.starts_with('Z')))
            .unwrap_or(true)
    };
    assert!(wait_until(exited), "tracer {pid} still running");
    let screen = tmux.screen();
    assert!(
        screen
            .lines()
            .any(|l| l.starts_with("path total") && l.contains(path_line)),
        "totals after quitting: {screen}"
    );
    for (ns, dev) in devices {
        assert_nothing_attached(ns, dev);
    }
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
    let (tmux, pid) = start_live(lab.namespaces());
    let before = nstat(hb, "IpInReceives").unwrap();
    let (from, to) = (
        SocketAddrV4::new(lab.c1.ip, 41000),
        SocketAddrV4::new(lab.c2.ip, 5001),
    );
    send_udp(&lab.c1.ns, from, to, N as u32, 100).unwrap();
    wait_received(hb, before, N);
    let flow = format!("udp {from} > {to}");
    let (found, screen) = tmux.wait_screen(|s| shows_the_drop(s, &flow, N, RULE));
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
    assert!(shows_the_drop(&screen, &flow, N, RULE), "{screen}");

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
    quit_and_check(
        &tmux,
        pid,
        &format!("{flow} vni=4242 sent={N} arrived=0 lost={N}"),
        &[(&lab.a.ns, "ul0"), (hb, "ul0"), (&lab.c1.ns, "eth0")],
    );
}

/// The demo lab: one flow delivered, one dropped by container 2's firewall.
#[test]
fn live_view_in_tmux_on_the_demo_lab() {
    let lab = Overlay::new(OverlayOpts::default()).unwrap();
    let (c1, c2) = (&lab.c1, &lab.c2);
    iptables(
        &c2.ns,
        &["-A", "INPUT", "-p", "udp", "--dport", "5353", "-j", "DROP"],
    )
    .unwrap();
    let (ok, blocked) = (
        SocketAddrV4::new(c2.ip, 5001),
        SocketAddrV4::new(c2.ip, 5353),
    );
    let sink = UdpSink::start(&c2.ns, ok).unwrap();
    let (tmux, pid) = start_live(lab.namespaces());
    let (from_ok, from_blocked) = (
        SocketAddrV4::new(c1.ip, 41000),
        SocketAddrV4::new(c1.ip, 41001),
    );
    send_udp(&c1.ns, from_ok, ok, 50, 200).unwrap();
    send_udp(&c1.ns, from_blocked, blocked, 10, 60).unwrap();
    assert!(sink.wait_for(50, Duration::from_secs(10)));
    let dropped = format!("udp {from_blocked} > {blocked}");
    let delivered = format!("udp {from_ok} > {ok}");
    let rule = "-A INPUT -p udp -m udp --dport 5353 -j DROP";
    let (found, screen) = tmux.wait_screen(|s| {
        shows_the_drop(s, &dropped, 10, rule)
            && s.lines().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                l.starts_with(&delivered) && w[5..8] == ["50", "50", "0"]
            })
    });
    assert!(found, "{screen}");
    // The drop is after container 2's own interface: every hop passed.
    let line = screen.lines().find(|l| l.contains(&dropped)).unwrap();
    assert!(line.contains(&format!("{}/eth0 in", c2.ns)), "{screen}");
    quit_and_check(
        &tmux,
        pid,
        &format!("{dropped} vni=4242 sent=10 arrived=0 lost=10"),
        &[(&c1.ns, "eth0"), (&c2.ns, "eth0")],
    );
}
