//! `cargo xtask bench`: tracer's overhead next to no tracer, a bpftrace script
//! and tcpdump, on three lab datapaths, with interleaved repetitions; then
//! tracer's accuracy and cost with more flows than its map holds and with
//! many active flows. Writes bench/results.json and bench/RESULTS.md.

mod arms;
mod counts;
mod empty;
mod firewall;
mod loads;
mod paths;
mod report;
mod results;
mod stats;
mod sys;

use std::{
    collections::BTreeMap,
    net::SocketAddrV4,
    path::{Path as FsPath, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use xtask::{lab::netns_inode, tracer::TracerRun, traffic::UdpSink};

use arms::{Arm, Output, Tool, Window};
use counts::Hop;
use loads::{Blast, IPERF_PORT, IperfServer, RR_PORT, STATS_PORT};
use paths::{Path, PathKind};
use results::{FlowLoad, Meta, Results, Sample, Settings, TracerCounts};
use sys::check_interrupted;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Repetitions of each arm on each path. Nine: on a small VM single
    /// repetitions of the UDP-64 ratio range over tens of points, and the
    /// floors are judged on medians.
    #[arg(long, default_value_t = 9)]
    pub reps: u32,
    /// Seconds of each iperf3 load (TCP, then UDP-64).
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Seconds of the extra UDP-64 load of arms B, C and E during which BPF
    /// statistics are on, for the programs' ns per run.
    #[arg(long, default_value_t = 2.0)]
    pub stats_seconds: f64,
    /// Round trips of the request/response load.
    #[arg(long, default_value_t = 20_000)]
    pub requests: u32,
    /// Datapaths to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = PathKind::ALL)]
    pub paths: Vec<PathKind>,
    /// Arms to run: A none, B tracer, C bpftrace, D tcpdump, E tracer with
    /// the hooks of kernels before 6.2 (clsact over netlink, skb->dev by
    /// bpf_probe_read_kernel).
    #[arg(long, value_enum, value_delimiter = ',', ignore_case = true, default_values_t = Arm::ALL)]
    pub arms: Vec<Arm>,
    /// Distinct flows of the churn load (more than --churn-map-size holds).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(0..=50_000))]
    pub churn_flows: u32,
    /// Packets per flow of the churn load.
    #[arg(long, default_value_t = 3)]
    pub churn_packets: u32,
    /// Seconds the churn load is spread over.
    #[arg(long, default_value_t = 5.0)]
    pub churn_seconds: f64,
    /// tracer's --flow-map-size for the churn load.
    #[arg(long, default_value_t = 1024)]
    pub churn_map_size: u32,
    /// Flows of the active-flows load (each sends a packet every second).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(0..=50_000))]
    pub active_flows: u32,
    /// Runs of the active-flows load: tracer's CPU is judged on their
    /// median (one run of 10 s moves by tenths of a point between runs,
    /// up to seven here: a median of five is moved by two runs at least).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub active_runs: u32,
    /// Seconds of the active-flows load.
    #[arg(long, default_value_t = 10)]
    pub active_seconds: u32,
    /// Packets of each flood into a firewall rule (an ACCEPT and a DROP
    /// rule, three rounds each); 0 skips them.
    #[arg(long, default_value_t = 300_000)]
    pub firewall_packets: u64,
    /// Where results.json and RESULTS.md go (default: bench/ in the workspace).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Only render RESULTS.md again from this results.json.
    #[arg(long, value_name = "RESULTS_JSON")]
    pub render: Option<PathBuf>,
}

/// The bench's arm F in its own process: see [`empty`].
pub fn hold_empty_tc(devices: &[String]) -> Result<()> {
    empty::hold(devices)
}

/// Floods into each firewall rule.
const FIREWALL_ROUNDS: usize = 3;

/// Destination port of the many-flows loads, and their first source port.
const SINK_PORT: u16 = 9000;
const FIRST_SPORT: u16 = 10_000;
/// Payload giving 64-byte frames (14 + 20 + 8 + 18 = 60, padded to 64 with FCS).
const FLOW_PAYLOAD: usize = 18;

pub fn bench(args: Args) -> Result<()> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| crate::demo::workspace().join("bench"));
    if let Some(json) = &args.render {
        let text =
            std::fs::read_to_string(json).with_context(|| format!("read {}", json.display()))?;
        let r = serde_json::from_str::<Results>(&text)
            .context("parse results")?
            .upgrade();
        return write(&out, &report::with_summaries(r));
    }
    if !(args.seconds > 0.0 && args.churn_seconds > 0.0 && args.stats_seconds > 0.0) {
        bail!("--seconds, --stats-seconds and --churn-seconds must be positive");
    }
    sys::catch_signals();
    let started = Instant::now();
    let loadavg_before = loadavg();
    // Before anything is built: the tree the measured binaries come from.
    let commit = commit();
    let tracer = crate::demo::build_tracer(true)?;
    let per_arm =
        2.0 * args.seconds + args.stats_seconds / 2.0 + 4.0 + args.requests as f64 / 15_000.0;
    eprintln!(
        "bench: {} repetitions x {} paths x {} arms, about {:.0} minutes",
        args.reps,
        args.paths.len(),
        args.arms.len(),
        (per_arm * (args.reps as usize * args.paths.len() * args.arms.len()) as f64
            + args.paths.len() as f64 * (args.churn_seconds + 5.0)
            + args.active_seconds as f64
            + 30.0)
            / 60.0
    );
    // BPF statistics cost two clock reads per program run: off for the
    // measured loads (restored when `_no_stats` is dropped, on every exit
    // path), on only in each arm's statistics pass.
    let _no_stats = sys::Sysctl::set("kernel.bpf_stats_enabled", "0")?;
    let paths: Vec<Path> = args
        .paths
        .iter()
        .map(|&k| Path::build(k))
        .collect::<Result<_>>()?;
    let _servers: Vec<IperfServer> = paths
        .iter()
        .flat_map(|p| [IPERF_PORT, STATS_PORT].map(|port| (p, port)))
        .map(|(p, port)| IperfServer::start(&p.server.ns, p.server.ip, port))
        .collect::<Result<_>>()?;
    // One short unrecorded run per path, so that the first arm measured is
    // not also the first to touch the path.
    for p in &paths {
        loads::tcp(&p.client.ns, p.server.ip, 1.0)?;
    }

    let mut samples = Vec::new();
    for rep in 1..=args.reps as usize {
        for p in &paths {
            for arm in rep_order(&args.arms, rep) {
                check_interrupted()?;
                let s = run_arm(&tracer, p, arm, rep, &args)
                    .with_context(|| format!("repetition {rep}, {}, arm {arm:?}", p.kind.name()))?;
                progress(&s, args.reps);
                samples.push(s);
            }
        }
    }

    let mut churn = Vec::new();
    if args.churn_flows > 0 {
        for p in &paths {
            check_interrupted()?;
            let f = flow_load(
                &tracer,
                p,
                FlowShape {
                    flows: args.churn_flows,
                    packets_per_flow: args.churn_packets,
                    map_size: Some(args.churn_map_size),
                    seconds: args.churn_seconds,
                    round_robin: false,
                },
            )
            .with_context(|| format!("churn load on {}", p.kind.name()))?;
            eprintln!(
                "bench: churn {}: {} counted + {} flow_map_full of {} kernel packets",
                p.kind.name(),
                f.tracer_packets,
                f.health.flow_map_full,
                f.kernel_packets
            );
            churn.push(f);
        }
    }
    // Below capacity with the default map: the path with the fewest hops
    // keeps flows x hops entries per interval well under 65536.
    let mut active_runs = Vec::new();
    if let Some(p) = paths.iter().min_by_key(|p| p.hops)
        && args.active_flows > 0
        && args.active_seconds > 0
    {
        for _ in 0..args.active_runs {
            check_interrupted()?;
            let f = flow_load(
                &tracer,
                p,
                FlowShape {
                    flows: args.active_flows,
                    packets_per_flow: args.active_seconds,
                    map_size: None,
                    seconds: args.active_seconds as f64,
                    round_robin: true,
                },
            )
            .context("active-flows load")?;
            eprintln!(
                "bench: {} active flows on {}: tracer {:.2}% of a core, peak RSS {:.1} MiB, missing {}",
                f.flows,
                p.kind.name(),
                f.cost.cpu_pct,
                f.cost.peak_rss_kib as f64 / 1024.0,
                f.missing()
            );
            active_runs.push(f);
        }
    }
    // On the path with the fewest hops, as the active flows.
    let mut floods = Vec::new();
    if let Some(p) = paths.iter().min_by_key(|p| p.hops)
        && args.firewall_packets > 0
    {
        for round in 0..FIREWALL_ROUNDS {
            for rule in firewall::Rule::BOTH {
                check_interrupted()?;
                let f = firewall::flood(&tracer, p, rule, args.firewall_packets)
                    .with_context(|| format!("firewall flood, {} rule", rule.name()))?;
                eprintln!(
                    "bench: firewall {} flood {round} on {}: sent {}, accepted {}, dropped {}, \
                     drops {}; nf_filter_in {} ns/run, kfree_skb {} ns/run",
                    rule.name(),
                    p.kind.name(),
                    f.sent,
                    f.accepted,
                    f.dropped,
                    f.drops,
                    f.cost
                        .ns_per_run(|n| n == "nf_filter_in")
                        .map_or(0.0, |v| v.round()),
                    f.cost
                        .ns_per_run(|n| n == "kfree_skb")
                        .map_or(0.0, |v| v.round()),
                );
                floods.push(f);
            }
        }
    }
    drop(_servers);
    drop(paths);

    let results = report::with_summaries(Results {
        meta: meta(commit, loadavg_before, started.elapsed()),
        settings: Settings {
            reps: args.reps as usize,
            seconds: args.seconds,
            stats_seconds: args.stats_seconds,
            requests: args.requests,
            paths: args.paths.clone(),
            arms: args.arms.clone(),
            alternate: true,
            churn_flows: args.churn_flows,
            churn_packets: args.churn_packets,
            churn_seconds: args.churn_seconds,
            churn_map_size: args.churn_map_size,
            active_flows: args.active_flows,
            active_seconds: args.active_seconds,
            firewall_packets: args.firewall_packets,
        },
        samples,
        summaries: vec![],
        churn,
        active_runs,
        active_one: None,
        firewall: floods,
    });
    write(&out, &results)
}

/// The arms in the order one repetition runs them: as given on odd
/// repetitions, reversed on even ones (A B C, C B A, ...). Drift that spans
/// a repetition, the VM's neighbours' load say, then favours no arm over
/// the others, and arm B still runs next to arm A every time.
fn rep_order(arms: &[Arm], rep: usize) -> Vec<Arm> {
    let mut order = arms.to_vec();
    if rep.is_multiple_of(2) {
        order.reverse();
    }
    order
}

fn write(dir: &FsPath, r: &Results) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let json = dir.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(r)? + "\n")
        .with_context(|| format!("write {}", json.display()))?;
    let md = dir.join("RESULTS.md");
    std::fs::write(&md, report::markdown(r)).with_context(|| format!("write {}", md.display()))?;
    eprintln!("bench: wrote {} and {}", md.display(), json.display());
    for f in report::floors(r) {
        eprintln!(
            "  {} {}: {} (target {})",
            if f.met { "met   " } else { "MISSED" },
            f.what,
            f.measured,
            f.target
        );
    }
    Ok(())
}

/// IP packets the server's namespace received that were the UDP-64 load's:
/// all of them (IpInReceives) less TCP segments (iperf3's control
/// connection), ICMP and the request/response requests. Not the UDP
/// counters: UdpInDatagrams counts datagrams the application read, so those
/// still queued when iperf3 closes its socket are in no UDP counter.
fn udp64_in(counters: &BTreeMap<String, u64>, rr_requests: u64) -> u64 {
    let n = |k: &str| counters.get(k).copied().unwrap_or(0);
    n("IpInReceives").saturating_sub(n("TcpInSegs") + n("IcmpInMsgs") + rr_requests)
}

/// One arm on one path: start its tool, run the three loads, read the tool's
/// cost, stop it and read what it counted.
fn run_arm(tracer: &FsPath, p: &Path, arm: Arm, rep: usize, args: &Args) -> Result<Sample> {
    let mut targs = p.tracer_args();
    targs.extend(["--interval".into(), "1".into()]);
    let tool = Tool::start(arm, tracer, &targs, &p.devices)?;
    let pids = tool.pids();
    let mut window = Window::open(&pids)?;
    let (others, started) = (sys::OtherCpu::snapshot(), Instant::now());

    let tcp = loads::tcp(&p.client.ns, p.server.ip, args.seconds)?;
    let before = sys::nstat_all(&p.server.ns)?;
    let udp = loads::udp64(&p.client.ns, p.server.ip, IPERF_PORT, args.seconds)?;
    let rr = loads::udp_rr(
        &p.client.ns,
        p.client.ip,
        &p.server.ns,
        SocketAddrV4::new(p.server.ip, RR_PORT),
        args.requests,
    )?;
    // Read after the request/response load: under a flood the kernel may
    // still be working through its backlog queues when iperf3 exits.
    let server_counters = sys::counter_deltas(&before, &sys::nstat_all(&p.server.ns)?);
    let kernel_udp_in = udp64_in(&server_counters, rr.served);

    let cost = if pids.is_empty() {
        None
    } else {
        // Saturated like the UDP-64 load, to another server port so that
        // the accuracy counts above are the measured load's alone.
        window.with_stats(|| {
            loads::udp64(&p.client.ns, p.server.ip, STATS_PORT, args.stats_seconds)
        })?;
        Some(window.close(&pids)?)
    };
    let other_cpu_pct =
        others.since(&sys::OtherCpu::snapshot()) / started.elapsed().as_secs_f64() * 100.0;
    let mut sample = Sample {
        rep,
        path: p.kind,
        arm,
        tcp,
        udp,
        rr,
        kernel_udp_in,
        server_counters,
        cost,
        tracer: None,
        bpftrace_udp_rx: None,
        tcpdump: None,
        other_cpu_pct,
    };
    match tool.stop()? {
        Output::None => {}
        Output::Tracer(f) => {
            let client = Hop {
                netns: &p.client.ns,
                iface: &p.client.dev,
                dir: "egress",
            };
            let server = Hop {
                netns: &p.server.ns,
                iface: &p.server.dev,
                dir: "ingress",
            };
            sample.tracer = Some(TracerCounts {
                udp_sender_egress: counts::flow_packets(&f.rows, &client, "udp", IPERF_PORT),
                udp_receiver_ingress: counts::flow_packets(&f.rows, &server, "udp", IPERF_PORT),
                rr_sender_egress: counts::flow_packets(&f.rows, &client, "udp", RR_PORT),
                drops: counts::all_drops(&f.rows),
                server_drops: counts::drops_by_reason(&f.rows, &p.server.ns),
                health: counts::health(&f.rows),
            });
        }
        Output::Bpftrace(text) => {
            let inode = netns_inode(&p.server.ns)?;
            sample.bpftrace_udp_rx = Some(counts::bpftrace_flow_packets(
                &text, "@rx_pkts", inode, 17, IPERF_PORT,
            ));
        }
        Output::Tcpdump(t) => sample.tcpdump = Some(t),
    }
    Ok(sample)
}

fn progress(s: &Sample, reps: u32) {
    let cost = s
        .cost
        .as_ref()
        .map(|c| {
            format!(
                ", tool {:.1}% cpu {:.0} MiB",
                c.cpu_pct,
                c.peak_rss_kib as f64 / 1024.0
            )
        })
        .unwrap_or_default();
    eprintln!(
        "bench: rep {}/{reps} {:<6} {:<24} tcp {:6.2} Gbit/s  udp64 {:6.1} kpps  rr p50 {:5.1} p99 {:6.1} us{cost}",
        s.rep,
        s.path.name(),
        s.arm.label(),
        s.tcp.gbps,
        s.udp.pps / 1e3,
        s.rr.p50_us,
        s.rr.p99_us,
    );
}

struct FlowShape {
    flows: u32,
    packets_per_flow: u32,
    /// tracer's --flow-map-size; its default if none.
    map_size: Option<u32>,
    seconds: f64,
    /// Every flow once per round (all active at once), or each flow's
    /// packets back to back (flows come and go).
    round_robin: bool,
}

/// Many distinct flows under tracer alone: its counts and flow_map_full
/// against the kernel's device counters, and its cost.
fn flow_load(tracer: &FsPath, p: &Path, shape: FlowShape) -> Result<FlowLoad> {
    let dst = SocketAddrV4::new(p.server.ip, SINK_PORT);
    let sink = UdpSink::start(&p.server.ns, dst)?;
    let mut targs = p.tracer_args();
    targs.extend(["--interval".into(), "1".into()]);
    if let Some(m) = shape.map_size {
        targs.extend(["--flow-map-size".into(), m.to_string()]);
    }
    let run = TracerRun::start(tracer, &targs)?;
    let pids = [run.pid()];
    let mut window = Window::open(&pids)?;
    let kernel_before = p.kernel_packets()?;
    let blast = Blast {
        src: p.client.ip,
        dst,
        payload: FLOW_PAYLOAD,
        packets: shape.flows as u64 * shape.packets_per_flow as u64,
        duration: Duration::from_secs_f64(shape.seconds),
    };
    let (flows, ppf) = (shape.flows as u64, shape.packets_per_flow as u64);
    // Nothing measures throughput here: statistics stay on throughout.
    let sent = window.with_stats(|| {
        blast.run(&p.client.ns, move |i| {
            let flow = if shape.round_robin {
                i % flows
            } else {
                i / ppf
            };
            FIRST_SPORT + flow as u16
        })
    })?;
    sink.wait_for(sent, Duration::from_secs(5));
    let kernel_packets = p.kernel_packets()? - kernel_before;
    let cost = window.close(&pids)?;
    let f = run.stop()?;
    if !f.status.success() {
        bail!("tracer failed ({}): {}", f.status, f.stderr.trim());
    }
    Ok(FlowLoad {
        path: p.kind,
        flows: shape.flows,
        packets_per_flow: shape.packets_per_flow,
        map_size: shape.map_size.unwrap_or(65536),
        seconds: shape.seconds,
        sent,
        sink_received: sink.received(),
        hops: p.hops,
        kernel_packets,
        tracer_packets: counts::all_packets(&f.rows),
        health: counts::health(&f.rows),
        cost,
    })
}

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// HEAD, and whether the tree differs from it.
fn commit() -> String {
    let ws = crate::demo::workspace();
    let ws = ws.to_string_lossy();
    let mut commit = first_line("git", &["-C", &ws, "rev-parse", "--short", "HEAD"]);
    if !first_line(
        "git",
        &["-C", &ws, "status", "--porcelain", "--untracked-files=no"],
    )
    .is_empty()
    {
        commit.push_str(" (with uncommitted changes)");
    }
    commit
}

fn meta(commit: String, loadavg_before: String, took: Duration) -> Meta {
    let loadavg_after = loadavg();
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            Some(
                l.strip_prefix("model name")?
                    .trim_start_matches([' ', '\t', ':'])
                    .to_string(),
            )
        })
        .unwrap_or_else(|| "unknown".into());
    let hypervisor = cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && l.contains(" hypervisor"));
    let virt = first_line("systemd-detect-virt", &["--vm"]);
    let machine = match (virt.as_str(), hypervisor) {
        ("" | "none", true) => "virtual machine".to_string(),
        ("" | "none", false) => "machine".to_string(),
        (v, _) => format!("virtual machine ({v})"),
    };
    let memory_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| {
            Some(
                l.strip_prefix("PRETTY_NAME=")?
                    .trim_matches('"')
                    .to_string(),
            )
        })
        .unwrap_or_default();
    Meta {
        date: first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        kernel: first_line("uname", &["-r"]),
        cpu,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_gib,
        machine,
        os,
        commit,
        tools: vec![
            first_line("bpftrace", &["--version"]),
            first_line("iperf3", &["--version"]),
            first_line("tcpdump", &["--version"]),
            first_line("bpftool", &["version"]),
        ],
        loadavg_before,
        loadavg_after,
        minutes: took.as_secs_f64() / 60.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp64_is_what_ip_received_less_the_other_loads() {
        let c: BTreeMap<String, u64> = [
            ("IpInReceives", 133_967),
            ("TcpInSegs", 16),
            ("UdpInDatagrams", 91_365),
            ("UdpInErrors", 42_586),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(udp64_in(&c, 5500), 133_967 - 16 - 5500);
        assert_eq!(udp64_in(&BTreeMap::new(), 5500), 0);
    }

    #[test]
    fn even_repetitions_run_the_arms_backwards() {
        let arms = [Arm::A, Arm::B, Arm::C];
        assert_eq!(rep_order(&arms, 1), arms);
        assert_eq!(rep_order(&arms, 2), [Arm::C, Arm::B, Arm::A]);
        assert_eq!(rep_order(&arms, 3), arms);
    }
}
