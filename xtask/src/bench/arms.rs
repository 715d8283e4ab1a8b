//! The arms: nothing, tracer, a bpftrace script doing the closest equivalent,
//! tcpdump on every traced device, and tracer with the hooks of kernels before
//! tcx and bpf_cast_to_kern_ctx (clsact filters over netlink, skb->dev by
//! bpf_probe_read_kernel); each started, measured and stopped.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use xtask::{
    peers::Bpftrace,
    tracer::{Finished, TracerRun},
};

use super::{
    empty,
    sys::{self, BpfStats, CpuTime, Proc, ProgStat},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ValueEnum)]
pub enum Arm {
    A,
    B,
    C,
    D,
    /// tracer with the hooks of kernels before 6.2: clsact filters over
    /// netlink (tcx is 6.6) and `skb->dev` by bpf_probe_read_kernel (no
    /// bpf_cast_to_kern_ctx).
    E,
    /// An eBPF program that returns at once, on the same TC hooks: what any
    /// program pays per run, which tracer's figure is judged net of.
    F,
}

impl Arm {
    pub const ALL: [Arm; 6] = [Arm::A, Arm::B, Arm::C, Arm::D, Arm::E, Arm::F];

    pub fn label(self) -> &'static str {
        match self {
            Arm::A => "A: no tracer",
            Arm::B => "B: tracer",
            Arm::C => "C: bpftrace",
            Arm::D => "D: tcpdump",
            Arm::E => "E: tracer, pre-6.2 hooks",
            Arm::F => "F: empty TC program",
        }
    }
}

/// Per-reason drops plus per-flow packets and bytes on receive and transmit,
/// keyed like tracer's rows: namespace, device, addresses, protocol, ports.
/// On receive `skb->data` is at the network header (after eth_type_trans);
/// on transmit the network header offset is set. IPv4 only, no VXLAN inner flow.
pub const BPFTRACE_SCRIPT: &str = r#"
tracepoint:skb:kfree_skb { @drops[args->reason] = count(); }
tracepoint:net:netif_receive_skb {
  $skb = (struct sk_buff *)args->skbaddr;
  if ($skb->protocol == 0x0008) {
    $ip = $skb->data;
    $l4 = $ip + (*(uint8 *)$ip & 0xf) * 4;
    $ns = $skb->dev->nd_net.net->ns.inum;
    $if = $skb->dev->ifindex;
    $src = ntop(*(uint32 *)($ip + 12));
    $dst = ntop(*(uint32 *)($ip + 16));
    $proto = *(uint8 *)($ip + 9);
    $sport = bswap(*(uint16 *)$l4);
    $dport = bswap(*(uint16 *)($l4 + 2));
    @rx_pkts[$ns, $if, $src, $dst, $proto, $sport, $dport] = count();
    @rx_bytes[$ns, $if, $src, $dst, $proto, $sport, $dport] = sum(args->len);
  }
}
tracepoint:net:net_dev_queue {
  $skb = (struct sk_buff *)args->skbaddr;
  if ($skb->protocol == 0x0008) {
    $ip = $skb->head + $skb->network_header;
    $l4 = $ip + (*(uint8 *)$ip & 0xf) * 4;
    $ns = $skb->dev->nd_net.net->ns.inum;
    $if = $skb->dev->ifindex;
    $src = ntop(*(uint32 *)($ip + 12));
    $dst = ntop(*(uint32 *)($ip + 16));
    $proto = *(uint8 *)($ip + 9);
    $sport = bswap(*(uint16 *)$l4);
    $dport = bswap(*(uint16 *)($l4 + 2));
    @tx_pkts[$ns, $if, $src, $dst, $proto, $sport, $dport] = count();
    @tx_bytes[$ns, $if, $src, $dst, $proto, $sport, $dport] = sum(args->len);
  }
}
"#;

/// Programs the script loads: one per probe.
const BPFTRACE_PROGS: usize = 3;

/// Waits until process `pid` holds `n` BPF programs: bpftrace says
/// "Attaching N probes..." before it loads them.
fn wait_for_progs(pid: u32, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while sys::prog_ids(pid)?.len() < n {
        if Instant::now() > deadline {
            bail!("bpftrace did not load its {n} programs within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A tcpdump on one device, writing to /dev/null.
pub struct Tcpdump {
    proc: Proc,
    stderr: mpsc::Receiver<String>,
}

impl Tcpdump {
    pub fn start(ns: &str, dev: &str) -> Result<Self> {
        let mut proc = Proc::spawn(
            Command::new("ip")
                .args(["netns", "exec", ns, "tcpdump", "-n", "-i", dev])
                .args(["-s", "96", "-w", "/dev/null"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
            "tcpdump",
        )?;
        let (tx, rx) = mpsc::channel();
        let stderr = proc.child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains("listening on") => break,
                Ok(_) => {}
                Err(_) => bail!("tcpdump on {ns}/{dev} did not start listening"),
            }
        }
        Ok(Tcpdump { proc, stderr: rx })
    }

    /// SIGINT, then the statistics tcpdump prints on exit.
    fn stop(mut self) -> Result<TcpdumpStats> {
        self.proc.stop_with(libc::SIGINT, Duration::from_secs(10))?;
        let text: Vec<String> = self.stderr.iter().collect();
        Ok(parse_tcpdump_stats(&text.join("\n")))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpdumpStats {
    pub captured: u64,
    pub dropped_by_kernel: u64,
}

/// Reads "N packets captured" and "N packets dropped by kernel".
pub fn parse_tcpdump_stats(stderr: &str) -> TcpdumpStats {
    let count = |suffix: &str| {
        stderr
            .lines()
            .find_map(|l| l.trim().strip_suffix(suffix)?.trim().parse().ok())
            .unwrap_or(0)
    };
    TcpdumpStats {
        captured: count("packets captured"),
        dropped_by_kernel: count("packets dropped by kernel"),
    }
}

/// This program again as `bench-empty-tc`, holding [`empty`]'s program on
/// `devices` until it is stopped; returns once the links are in place.
fn start_empty(devices: &[(String, String)]) -> Result<Proc> {
    let mut proc = Proc::spawn(
        Command::new(std::env::current_exe()?)
            .arg("bench-empty-tc")
            .args(devices.iter().map(|(ns, dev)| format!("{ns}/{dev}")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        "empty TC program",
    )?;
    let mut line = String::new();
    let stdout = proc.child.stdout.take().expect("piped");
    BufReader::new(stdout).read_line(&mut line)?;
    if line.trim() != empty::READY {
        let mut err = String::new();
        if let Some(mut e) = proc.child.stderr.take() {
            use std::io::Read as _;
            let _ = e.read_to_string(&mut err);
        }
        bail!("empty TC program did not attach: {}", err.trim());
    }
    Ok(proc)
}

/// What an arm runs while the loads run.
pub enum Tool {
    None,
    Tracer(TracerRun),
    Bpftrace(Bpftrace),
    Tcpdump(Vec<Tcpdump>),
    Empty(Proc),
}

/// What a tool printed when stopped.
pub enum Output {
    None,
    Tracer(Finished),
    Bpftrace(String),
    Tcpdump(TcpdumpStats),
}

impl Tool {
    /// Starts the tool of `arm` on `devices` ((namespace, device) pairs) and
    /// waits until it is attached.
    pub fn start(
        arm: Arm,
        tracer: &Path,
        tracer_args: &[String],
        devices: &[(String, String)],
    ) -> Result<Tool> {
        Ok(match arm {
            Arm::A => Tool::None,
            Arm::B => Tool::Tracer(TracerRun::start(tracer, tracer_args)?),
            Arm::E => {
                let mut args = tracer_args.to_vec();
                args.extend(["--tc-attach", "netlink", "--no-kfuncs"].map(String::from));
                Tool::Tracer(TracerRun::start(tracer, &args)?)
            }
            Arm::C => {
                let b = Bpftrace::start(BPFTRACE_SCRIPT)?;
                wait_for_progs(b.pid(), BPFTRACE_PROGS)?;
                Tool::Bpftrace(b)
            }
            Arm::D => Tool::Tcpdump(
                devices
                    .iter()
                    .map(|(ns, dev)| Tcpdump::start(ns, dev))
                    .collect::<Result<_>>()?,
            ),
            Arm::F => Tool::Empty(start_empty(devices)?),
        })
    }

    pub fn pids(&self) -> Vec<u32> {
        match self {
            Tool::None => vec![],
            Tool::Tracer(t) => vec![t.pid()],
            Tool::Bpftrace(b) => vec![b.pid()],
            Tool::Tcpdump(t) => t.iter().map(|t| t.proc.pid()).collect(),
            Tool::Empty(p) => vec![p.pid()],
        }
    }

    pub fn stop(self) -> Result<Output> {
        Ok(match self {
            Tool::None => Output::None,
            Tool::Tracer(t) => {
                let f = t.stop()?;
                if !f.status.success() {
                    bail!("tracer failed ({}): {}", f.status, f.stderr.trim());
                }
                Output::Tracer(f)
            }
            Tool::Bpftrace(b) => Output::Bpftrace(b.stop()?),
            Tool::Tcpdump(all) => {
                let mut sum = TcpdumpStats::default();
                for t in all {
                    let s = t.stop()?;
                    sum.captured += s.captured;
                    sum.dropped_by_kernel += s.dropped_by_kernel;
                }
                Output::Tcpdump(sum)
            }
            Tool::Empty(mut p) => {
                p.stop_with(libc::SIGTERM, Duration::from_secs(10))?;
                Output::None
            }
        })
    }
}

/// What a tool cost while the loads ran.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolCost {
    /// Length of the measured window (from attached to just before stopping).
    pub window_s: f64,
    /// CPU (user + system) used in the window, summed over the tool's processes.
    pub cpu_s: f64,
    /// The system part of `cpu_s`: time in syscalls (map reads, writes).
    #[serde(default)]
    pub cpu_system_s: f64,
    /// `cpu_s` as a percentage of one core.
    pub cpu_pct: f64,
    /// Whether `cpu_s` is the threads' run time in nanoseconds (schedstat)
    /// rather than utime + stime in clock ticks: see [`Window::close`].
    #[serde(default)]
    pub cpu_exact: bool,
    /// CPU since the processes started, start-up included.
    pub cpu_total_s: f64,
    /// Largest peak RSS (VmHWM) of the tool's processes.
    pub peak_rss_kib: u64,
    /// Seconds BPF statistics were on (the statistics pass); 0 in results
    /// from before there was one, when they were on for the whole window.
    #[serde(default)]
    pub stats_s: f64,
    /// Program runs counted while statistics were meant to be off: another
    /// process on the machine had them on during the measured loads.
    #[serde(default)]
    pub runs_outside_stats: u64,
    /// Run time of each of the tool's BPF programs while statistics were on.
    pub progs: Vec<ProgStat>,
}

impl ToolCost {
    /// Nanoseconds per run over the programs whose name passes `pick`.
    pub fn ns_per_run(&self, pick: impl Fn(&str) -> bool) -> Option<f64> {
        let (t, n) = self
            .progs
            .iter()
            .filter(|p| pick(&p.name))
            .fold((0u64, 0u64), |(t, n), p| (t + p.run_time_ns, n + p.run_cnt));
        (n > 0).then(|| t as f64 / n as f64)
    }

    /// Seconds over which `progs` were counted.
    pub fn progs_s(&self) -> f64 {
        if self.stats_s > 0.0 {
            self.stats_s
        } else {
            self.window_s
        }
    }

    /// Share of one core spent inside the tool's BPF programs.
    pub fn bpf_cpu_pct(&self) -> f64 {
        let ns: u64 = self.progs.iter().map(|p| p.run_time_ns).sum();
        let s = self.progs_s();
        if s > 0.0 {
            ns as f64 / 1e9 / s * 100.0
        } else {
            0.0
        }
    }
}

/// Snapshot at the start of a measured window.
pub struct Window {
    start: Instant,
    cpu: CpuTime,
    /// Run time of each thread of the tools, by thread id.
    runs: BTreeMap<u32, u64>,
    prog_ids: Vec<u32>,
    /// Statistics at the start, to tell whether anything counted runs
    /// outside the statistics pass.
    progs_at_start: Vec<ProgStat>,
    stats_s: f64,
    progs: Vec<ProgStat>,
}

impl Window {
    pub fn open(pids: &[u32]) -> Result<Window> {
        let mut prog_ids = Vec::new();
        let mut cpu = CpuTime::default();
        let mut runs = BTreeMap::new();
        for &pid in pids {
            prog_ids.extend(sys::prog_ids(pid)?);
            cpu = cpu + sys::cpu_time(pid)?;
            runs.extend(sys::run_times(pid)?);
        }
        let progs_at_start = stats_of(&prog_ids)?;
        Ok(Window {
            start: Instant::now(),
            cpu,
            runs,
            prog_ids,
            progs_at_start,
            stats_s: 0.0,
            progs: vec![],
        })
    }

    /// Runs `load` with BPF statistics on and adds what the tool's programs
    /// did meanwhile to the window's program statistics.
    pub fn with_stats<T>(&mut self, load: impl FnOnce() -> Result<T>) -> Result<T> {
        let stats = BpfStats::enable()?;
        let before = stats_of(&self.prog_ids)?;
        let started = Instant::now();
        let out = load();
        let after = stats_of(&self.prog_ids)?;
        self.stats_s += started.elapsed().as_secs_f64();
        drop(stats);
        let delta = sys::prog_deltas(&before, &after);
        self.progs = if self.progs.is_empty() {
            delta
        } else {
            sys::prog_sums(&self.progs, &delta)
        };
        out
    }

    /// Reads the cost so far; call just before stopping the tool.
    ///
    /// CPU is the threads' run time in nanoseconds where it accounts for all
    /// of it: every thread of the start is still there, and the clock ticks
    /// of the processes (which keep what ended threads used) exceed it by
    /// no more than their rounding. Otherwise it is the ticks.
    pub fn close(&self, pids: &[u32]) -> Result<ToolCost> {
        let window_s = self.start.elapsed().as_secs_f64();
        let mut total = CpuTime::default();
        let mut runs = BTreeMap::new();
        let mut peak_rss_kib = 0;
        for &pid in pids {
            total = total + sys::cpu_time(pid)?;
            runs.extend(sys::run_times(pid)?);
            peak_rss_kib = peak_rss_kib.max(sys::peak_rss_kib(pid)?);
        }
        let all_runs: u64 = sys::prog_deltas(&self.progs_at_start, &stats_of(&self.prog_ids)?)
            .iter()
            .map(|p| p.run_cnt)
            .sum();
        let stats_runs: u64 = self.progs.iter().map(|p| p.run_cnt).sum();
        let used = total - self.cpu;
        let ran = exact_run_s(&self.runs, &runs, used.total(), pids.len());
        let cpu_s = ran.unwrap_or(used.total());
        Ok(ToolCost {
            window_s,
            cpu_s,
            cpu_system_s: used.system,
            cpu_pct: cpu_s / window_s * 100.0,
            cpu_exact: ran.is_some(),
            cpu_total_s: total.total(),
            peak_rss_kib,
            stats_s: self.stats_s,
            runs_outside_stats: all_runs.saturating_sub(stats_runs),
            progs: self.progs.clone(),
        })
    }
}

/// Seconds the threads ran between two readings of their run times, if
/// that is all the processes used: no thread of `before` is gone, and the
/// processes' ticks (`ticks_s`) are no more than two ticks of rounding, at
/// each end, for user and for system, above it.
fn exact_run_s(
    before: &BTreeMap<u32, u64>,
    after: &BTreeMap<u32, u64>,
    ticks_s: f64,
    processes: usize,
) -> Option<f64> {
    if before.keys().any(|tid| !after.contains_key(tid)) {
        return None;
    }
    let ns: u64 = after
        .iter()
        .map(|(tid, &a)| a.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum();
    let ran = ns as f64 / 1e9;
    (ticks_s <= ran + 4.0 * sys::tick_s() * processes as f64).then_some(ran)
}

fn stats_of(ids: &[u32]) -> Result<Vec<ProgStat>> {
    if ids.is_empty() {
        Ok(vec![])
    } else {
        sys::prog_stats(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcpdump_exit_statistics() {
        let s = "tcpdump: listening on v0, link-type EN10MB (Ethernet), snapshot length 96 bytes\n\
                 ^C\n123456 packets captured\n130000 packets received by filter\n6544 packets dropped by kernel\n";
        assert_eq!(
            parse_tcpdump_stats(s),
            TcpdumpStats {
                captured: 123456,
                dropped_by_kernel: 6544
            }
        );
        assert_eq!(parse_tcpdump_stats("garbage"), TcpdumpStats::default());
    }

    #[test]
    fn run_time_is_exact_only_where_it_holds_all_the_cpu() {
        let before = BTreeMap::from([(10, 1_000_000_000), (11, 500_000_000)]);
        // 0.25 s and 0.05 s more, and a new thread with 0.1 s.
        let after = BTreeMap::from([(10, 1_250_000_000), (11, 550_000_000), (12, 100_000_000)]);
        let ran = exact_run_s(&before, &after, 0.40, 1).unwrap();
        assert!((ran - 0.40).abs() < 1e-9, "{ran}");
        // The ticks round: a little above or below is the same run time.
        assert!(exact_run_s(&before, &after, 0.42, 1).is_some());
        assert!(exact_run_s(&before, &after, 0.38, 1).is_some());
        // A thread that ran in the window and ended: its time is only in the ticks.
        assert_eq!(exact_run_s(&before, &after, 0.90, 1), None);
        // A thread of the start is gone.
        let gone = BTreeMap::from([(10, 1_250_000_000)]);
        assert_eq!(exact_run_s(&before, &gone, 0.25, 1), None);
    }

    #[test]
    fn ns_per_run_weights_by_runs() {
        let p = |name: &str, t, n| ProgStat {
            id: 1,
            name: name.into(),
            run_time_ns: t,
            run_cnt: n,
        };
        let c = ToolCost {
            window_s: 2.0,
            progs: vec![
                p("tc_ingress", 1000, 10),
                p("tc_egress", 3000, 10),
                p("kfree_skb", 50, 1),
            ],
            ..ToolCost::default()
        };
        assert_eq!(c.ns_per_run(|n| n.starts_with("tc_")), Some(200.0));
        assert_eq!(c.ns_per_run(|n| n == "nothing"), None);
        // Old results: statistics over the whole window.
        assert_eq!(c.bpf_cpu_pct(), 4050.0 / 1e9 / 2.0 * 100.0);
        // A statistics pass of 0.5 s in the window.
        let c = ToolCost { stats_s: 0.5, ..c };
        assert_eq!(c.bpf_cpu_pct(), 4050.0 / 1e9 / 0.5 * 100.0);
    }
}
