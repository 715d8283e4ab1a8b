//! tracer on a real dockerd (Debian's docker.io, started by the test in a
//! lab namespace and a mount namespace of its own), run on that Docker host
//! as a user would run it: `tracer --netns all`.

mod common;

use std::net::SocketAddrV4;

use common::*;
use serde_json::Value;
use xtask::{
    docker::{Container, Daemon},
    lab::Lab,
    tracer::{Finished, TracerRun},
    traffic::{UdpSink, send_udp},
};

/// Starts tracer on `daemon`'s host with `--netns all` and `extra`.
fn start_on(daemon: &Daemon, extra: &[&str]) -> TracerRun {
    let mut args: Vec<String> = vec!["--netns".into(), "all".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    TracerRun::start_in(&daemon.enter(), tracer_bin(), &args, None).expect("start tracer")
}

/// Sends `n` datagrams from `from` to `to`:`port` and waits until they arrived.
fn udp(from: &Container, to: &Container, sport: u16, port: u16, n: u32) {
    let sink = UdpSink::start(&to.netns(), SocketAddrV4::new(to.ip, port)).unwrap();
    send_udp(
        &from.netns(),
        SocketAddrV4::new(from.ip, sport),
        SocketAddrV4::new(to.ip, port),
        n,
        100,
    )
    .unwrap();
    assert!(
        wait_until(|| sink.received() >= u64::from(n)),
        "{} of {n} arrived",
        sink.received()
    );
    assert_eq!(sink.received(), u64::from(n));
}

fn flow_total<'a>(f: &'a Finished, netns: &str, iface: &str, dir: &str, sport: u16) -> &'a Value {
    let rows = flows_at(f, netns, iface, dir);
    let matching: Vec<&&Value> = rows.iter().filter(|r| r["sport"] == sport).collect();
    let anywhere: Vec<&Value> = f
        .totals("flow")
        .into_iter()
        .filter(|r| r["sport"] == sport)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "{netns}/{iface} {dir} sport {sport}: {rows:#?}\nsport {sport} anywhere: \
         {anywhere:#?}\ntracer said: {}",
        f.stderr
    );
    matching[0]
}

/// The host-side veth of a container: the bridge port whose peer it is.
fn host_veth(daemon: &Daemon, c: &Container) -> String {
    // eth0's peer ifindex, then the host's device with that index.
    let iflink =
        std::fs::read_to_string(format!("/proc/{}/root/sys/class/net/eth0/iflink", c.pid)).unwrap();
    let links = daemon.sh("ip", &["-o", "link"]).unwrap();
    links
        .lines()
        .find_map(|l| {
            let (index, rest) = l.split_once(": ")?;
            (index == iflink.trim()).then(|| rest.split(['@', ':']).next().unwrap().to_string())
        })
        .unwrap_or_else(|| panic!("no host veth with ifindex {iflink} in {links}"))
}

#[test]
fn default_bridge_rows_name_containers_and_the_host_and_count_exactly() {
    let mut lab = Lab::new().unwrap();
    let d = Daemon::start(&mut lab, "d", 201).unwrap();
    let web = d.run("web", "bridge", &[]).unwrap();
    let db = d.run("db", "bridge", &[]).unwrap();
    let run = start_on(&d, &[]);
    udp(&web, &db, 41000, 5001, 20);
    let f = stop(run);

    // The sender's eth0, its host veth, the bridge port of the receiver, its eth0.
    let out = flow_total(&f, "web", "eth0", "egress", 41000);
    assert_eq!(out["packets"], 20);
    assert!(endpoints_are(
        out,
        "udp",
        &web.ip.to_string(),
        &db.ip.to_string(),
        Some((41000, 5001))
    ));
    let web_veth = host_veth(&d, &web);
    assert_eq!(
        flow_total(&f, "host", &web_veth, "ingress", 41000)["packets"],
        20
    );
    let db_veth = host_veth(&d, &db);
    assert_eq!(
        flow_total(&f, "host", &db_veth, "egress", 41000)["packets"],
        20
    );
    assert_eq!(
        flow_total(&f, "db", "eth0", "ingress", 41000)["packets"],
        20
    );
    // The inode beside the name: the container's namespace.
    let inode = std::fs::metadata(web.netns()).unwrap();
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(out["netns_inode"], inode.ino());
    // The start-up line ties the host's veths to their containers.
    assert!(
        f.stderr.contains(&format!("{web_veth}(web)")),
        "{}",
        f.stderr
    );
    // The path runs from container to container through the host.
    let paths: Vec<&Value> = f
        .totals("path")
        .into_iter()
        .filter(|p| p["sport"] == 41000)
        .collect();
    assert_eq!(paths.len(), 1, "{paths:#?}");
    assert_eq!(
        (&paths[0]["sent"], &paths[0]["arrived"]),
        (&20.into(), &20.into())
    );
    let hops: Vec<String> = paths[0]["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            format!(
                "{}/{}",
                h["netns"].as_str().unwrap(),
                h["iface"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        hops,
        [
            "web/eth0".to_string(),
            format!("host/{web_veth}"),
            format!("host/{db_veth}"),
            "db/eth0".to_string()
        ]
    );
}

/// Docker's advice: put your rules in DOCKER-USER. A rule there is named
/// without --explain, with exact counts, in the intervals and the total.
#[test]
fn a_drop_in_docker_user_is_named() {
    let mut lab = Lab::new().unwrap();
    let d = Daemon::start(&mut lab, "d", 201).unwrap();
    let web = d.run("web", "bridge", &[]).unwrap();
    let db = d.run("db", "bridge", &[]).unwrap();
    d.iptables(&[
        "-I",
        "DOCKER-USER",
        "-p",
        "udp",
        "--dport",
        "5002",
        "-j",
        "DROP",
    ])
    .unwrap();
    let run = start_on(&d, &[]);
    let before = d
        .iptables(&["-L", "DOCKER-USER", "-v", "-x", "-n"])
        .unwrap();
    assert!(before.contains("dpt:5002"), "{before}");
    send_udp(
        &web.netns(),
        SocketAddrV4::new(web.ip, 41001),
        SocketAddrV4::new(db.ip, 5002),
        10,
        100,
    )
    .unwrap();
    // The rule's own counter is the ground truth.
    let counted = || docker_user_packets(&d, 5002);
    assert!(wait_until(|| counted() == 10), "counter at {}", counted());
    let f = stop(run);
    let rule = "-A DOCKER-USER -p udp -m udp --dport 5002 -j DROP";
    let v: Vec<&Value> = verdicts_at(&f, "host", "forward")
        .into_iter()
        .filter(|r| r["dport"] == 5002)
        .collect();
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(v[0]["dropped"], 10);
    assert_eq!(v[0]["rule"], rule, "{:#?}", v[0]);
    // Each interval row that dropped some names it too.
    let intervals: Vec<&Value> = f
        .rows
        .iter()
        .filter(|r| r["type"] == "verdict" && r["scope"] == "interval" && r["dport"] == 5002)
        .collect();
    let dropped: u64 = intervals
        .iter()
        .map(|r| r["dropped"].as_u64().unwrap())
        .sum();
    assert_eq!(dropped, 10);
    let drops: Vec<&Value> = drops_in(&f, "host")
        .into_iter()
        .filter(|r| r["dport"] == 5002)
        .collect();
    assert_eq!(drops.len(), 1, "{drops:#?}");
    assert_eq!(
        (&drops[0]["reason"], &drops[0]["count"]),
        (&"NETFILTER_DROP".into(), &10.into())
    );
}

/// A container started while tracer runs is traced from then on: its
/// namespace, its host veth; restarted, its new namespace under its name
/// again; removed, it is let go of cleanly.
#[test]
fn a_container_started_after_tracer_is_followed() {
    let mut lab = Lab::new().unwrap();
    let d = Daemon::start(&mut lab, "d", 201).unwrap();
    let web = d.run("web", "bridge", &[]).unwrap();
    let run = start_on(&d, &[]);
    let late = d.run("late", "bridge", &[]).unwrap();
    let veth = host_veth(&d, &late);
    // Said on stderr once attached, under the container's name or first
    // under its id where Docker was slow to name it; the host's veth may
    // come a poll before or after.
    wait_following(&run, "late", "eth0");
    wait_said(&run, &veth);
    udp(&web, &late, 41002, 5003, 10);
    // Restarted: a new sandbox, named again (tracer keeps what Docker said
    // of a container until it restarts).
    let gone = "tracer: late is gone; its rows keep their names";
    let sandbox = d.sandbox_key("late").unwrap();
    d.docker(&["restart", "-t", "0", "late"]).unwrap();
    let late = d.container("late", "bridge").unwrap();
    assert_ne!(d.sandbox_key("late").unwrap(), sandbox, "a new sandbox");
    wait_said(&run, gone);
    let after_restart = || {
        let err = run.stderr_so_far();
        err[err.find(gone).map_or(err.len(), |i| i + gone.len())..].to_string()
    };
    assert!(
        wait_until(|| {
            let err = after_restart();
            err.contains("tracer: following late [eth0") || err.contains(" is now named late")
        }),
        "the restarted container is not named: {}",
        run.stderr_so_far()
    );
    wait_said(&run, &host_veth(&d, &late));
    udp(&web, &late, 41012, 5003, 5);
    // Removed while tracer runs: let go of, its rows keep their names.
    d.docker(&["rm", "-f", "late"]).unwrap();
    assert!(
        wait_until(|| after_restart().contains(gone)),
        "{}",
        run.stderr_so_far()
    );
    let f = stop(run);
    assert_eq!(
        flow_total(&f, "late", "eth0", "ingress", 41002)["packets"],
        10
    );
    assert_eq!(
        flow_total(&f, "late", "eth0", "ingress", 41012)["packets"],
        5
    );
    assert_eq!(
        flow_total(&f, "host", &veth, "egress", 41002)["packets"],
        10
    );
    assert_eq!(health(&f)["attach_failed"], 0);
}

/// `docker rm` leaves the sandbox file behind, not a namespace any more:
/// tracer skips it with one line and runs.
#[test]
fn a_stale_sandbox_file_is_skipped() {
    let mut lab = Lab::new().unwrap();
    let d = Daemon::start(&mut lab, "d", 201).unwrap();
    let web = d.run("web", "bridge", &[]).unwrap();
    let gone = d.run("gone", "bridge", &[]).unwrap();
    let key = d.sandbox_key("gone").unwrap();
    d.docker(&["rm", "-f", "gone"]).unwrap();
    drop(gone);
    // Docker removes it about 50 s later; until then it is an empty file.
    // Should it be quicker, one is made the same way: a file, not a namespace.
    let stale = if d.exists(&key) {
        key
    } else {
        let path = "/var/run/docker/netns/0123456789ab".to_string();
        d.sh("touch", &[&path]).unwrap();
        path
    };
    let file = stale.rsplit('/').next().unwrap().to_string();
    let run = start_on(&d, &[]);
    let db = d.run("db", "bridge", &[]).unwrap();
    assert!(
        wait_until(|| {
            let e = run.stderr_so_far();
            e.contains("tracer: following db") || e.contains(" is now named db")
        }),
        "{}",
        run.stderr_so_far()
    );
    udp(&web, &db, 41003, 5004, 5);
    let f = stop(run);
    let skipped: Vec<&str> = f
        .stderr
        .lines()
        .filter(|l| l.starts_with("tracer: skipping ") && l.contains(&file))
        .collect();
    assert_eq!(skipped.len(), 1, "{}", f.stderr);
    assert!(
        skipped[0].contains("is not a network namespace"),
        "{}",
        skipped[0]
    );
    assert_eq!(flow_total(&f, "db", "eth0", "ingress", 41003)["packets"], 5);
}

/// Packets DOCKER-USER's rules for UDP port `dport` matched: the rule's
/// own counter, the ground truth.
fn docker_user_packets(d: &Daemon, dport: u16) -> u64 {
    d.iptables(&["-L", "DOCKER-USER", "-v", "-x", "-n"])
        .unwrap()
        .lines()
        .filter(|l| l.contains(&format!("dpt:{dport}")))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn health(f: &Finished) -> &Value {
    f.totals("health")[0]
}

/// Two tracers at once (the second's netfilter observers go next to the
/// first's), each with its own view of ping's echo replies: summarised as
/// benign by default, in full with --show-benign. Ping from the Docker host:
/// containers let ping use a ping socket (Docker sets ping_group_range),
/// which drops nothing.
#[test]
fn two_tracers_at_once_and_benign_noise() {
    let mut lab = Lab::new().unwrap();
    let d = Daemon::start(&mut lab, "d", 201).unwrap();
    let web = d.run("web", "bridge", &[]).unwrap();
    let db = d.run("db", "bridge", &[]).unwrap();
    d.iptables(&[
        "-I",
        "DOCKER-USER",
        "-p",
        "udp",
        "--dport",
        "5005",
        "-j",
        "DROP",
    ])
    .unwrap();
    let quiet = start_on(&d, &[]);
    let full = start_on(&d, &["--show-benign"]);
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", d.ns))
        .args(["ping", "-n", "-q", "-c", "5", "-i", "0.05", "-W", "2"])
        .arg(db.ip.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("5 received"), "{stdout}");
    send_udp(
        &web.netns(),
        SocketAddrV4::new(web.ip, 41005),
        SocketAddrV4::new(db.ip, 5005),
        10,
        100,
    )
    .unwrap();
    let counted = || docker_user_packets(&d, 5005);
    assert!(wait_until(|| counted() == 10), "counter at {}", counted());
    let (quiet, full) = (stop(quiet), stop(full));
    for f in [&quiet, &full] {
        // Observers are links (6.4); older kernels count with fexit or kprobes.
        let observers = if kernel().netfilter_links { 2 } else { 0 };
        assert!(
            f.stderr
                .contains(&format!("; {observers} netfilter observers")),
            "{}",
            f.stderr
        );
        let v: Vec<&Value> = verdicts_at(f, "host", "forward")
            .into_iter()
            .filter(|r| r["dport"] == 5005)
            .collect();
        assert_eq!(v.len(), 1, "{v:#?}");
        assert_eq!(v[0]["dropped"], 10);
        assert_eq!(
            v[0]["rule"],
            "-A DOCKER-USER -p udp -m udp --dport 5005 -j DROP"
        );
    }
    let echo = |f: &Finished| -> Vec<Value> {
        drops_in(f, "host")
            .into_iter()
            .filter(|r| {
                let at = r["location"].as_str().unwrap();
                tracer::analysis::benign::is_echo_reply(r["reason"].as_str(), at)
            })
            .cloned()
            .collect()
    };
    assert_eq!(echo(&quiet), Vec::<Value>::new());
    let benign = quiet.totals("benign");
    assert_eq!(benign.len(), 1, "{:#?}", quiet.rows);
    assert_eq!(benign[0]["echo_replies"], 5);
    let full_echo = echo(&full);
    assert_eq!(full_echo.len(), 1, "{full_echo:#?}");
    assert_eq!(full_echo[0]["count"], 5, "{full_echo:#?}");
    assert_eq!(full.totals("benign").len(), 0);
}

/// A published port: the flow after Docker's DNAT carries what the client
/// addressed (`orig`), from connection tracking.
#[test]
fn a_published_port_ties_the_dnat_flow_to_its_original() {
    let mut lab = Lab::new().unwrap();
    let d = Daemon::start(&mut lab, "d", 201).unwrap();
    let web = d.run("web", "bridge", &["-p", "8080:5001/udp"]).unwrap();
    // A client outside the Docker host, on a link of its own.
    let client = lab.add_ns("cl").unwrap();
    let (host_ip, client_ip) = (lab.addr(3, 1), lab.addr(3, 2));
    lab.veth(
        (&d.ns, "up0"),
        (&client, "cl0"),
        1500,
        (&lab.mac(3, 1), &lab.mac(3, 2)),
    )
    .unwrap();
    xtask::lab::addr(&d.ns, "up0", host_ip, 24).unwrap();
    xtask::lab::addr(&client, "cl0", client_ip, 24).unwrap();
    let run = start_on(&d, &[]);
    let sink = UdpSink::start(&web.netns(), SocketAddrV4::new(web.ip, 5001)).unwrap();
    send_udp(
        &client,
        SocketAddrV4::new(client_ip, 41010),
        SocketAddrV4::new(host_ip, 8080),
        10,
        100,
    )
    .unwrap();
    assert!(wait_until(|| sink.received() >= 10), "{}", sink.received());
    assert_eq!(sink.received(), 10);
    let f = stop(run);
    let published = format!("{host_ip}:8080");
    // Before the DNAT: to the published address, no orig.
    let before = flow_total(&f, "host", "up0", "ingress", 41010);
    assert!(endpoints_are(
        before,
        "udp",
        &client_ip.to_string(),
        &host_ip.to_string(),
        Some((41010, 8080))
    ));
    assert_eq!(
        (&before["packets"], &before["orig"]),
        (&10.into(), &Value::Null)
    );
    // After it: to the container, tied to the published address.
    let veth = host_veth(&d, &web);
    for (ns, iface, dir) in [
        ("host", veth.as_str(), "egress"),
        ("web", "eth0", "ingress"),
    ] {
        let after = flow_total(&f, ns, iface, dir, 41010);
        assert!(endpoints_are(
            after,
            "udp",
            &client_ip.to_string(),
            &web.ip.to_string(),
            Some((41010, 5001))
        ));
        assert_eq!(after["packets"], 10);
        assert_eq!(after["orig"], published.as_str(), "{after:#?}");
    }
}
