//! What the bench reads from and sets in the system: process CPU time and peak
//! memory, BPF program run-time statistics, device counters, a sysctl that is
//! put back, child processes that do not outlive the bench, and Ctrl-C.

use std::{
    collections::BTreeMap,
    process::{Child, Command},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use xtask::cmd::run;

/// (utime, stime) of a process from its `/proc/PID/stat` line, in clock
/// ticks. The command name may contain spaces and parentheses, so fields are
/// counted from the last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}

/// CPU time a process used so far, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTime {
    pub user: f64,
    pub system: f64,
}

impl CpuTime {
    pub fn total(&self) -> f64 {
        self.user + self.system
    }
}

impl std::ops::Add for CpuTime {
    type Output = CpuTime;
    fn add(self, o: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user + o.user,
            system: self.system + o.system,
        }
    }
}

impl std::ops::Sub for CpuTime {
    type Output = CpuTime;
    fn sub(self, o: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user - o.user,
            system: self.system - o.system,
        }
    }
}

/// Seconds in one clock tick, the unit of utime and stime in /proc.
pub fn tick_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    1.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

pub fn cpu_time(pid: u32) -> Result<CpuTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    let (user, system) = parse_stat_ticks(&stat).context("malformed /proc/PID/stat")?;
    Ok(CpuTime {
        user: user as f64 * tick_s(),
        system: system as f64 * tick_s(),
    })
}

/// Nanoseconds a task ran on a CPU, the first field of its
/// `/proc/PID/task/TID/schedstat` (run time, wait time, timeslices).
pub fn parse_schedstat(line: &str) -> Option<u64> {
    line.split_whitespace().next()?.parse().ok()
}

/// Nanoseconds each thread of `pid` has run so far, by thread id: exact,
/// where utime and stime come in clock ticks (10 ms, a tenth of a point of
/// a core over a 10 s window). A thread that exits takes its run time with
/// it; [`cpu_time`] keeps it.
pub fn run_times(pid: u32) -> Result<BTreeMap<u32, u64>> {
    let dir = format!("/proc/{pid}/task");
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("read {dir}"))? {
        let e = e?;
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        // A thread that ended since the directory was read is not an error.
        let Ok(line) = std::fs::read_to_string(e.path().join("schedstat")) else {
            continue;
        };
        let ns =
            parse_schedstat(&line).with_context(|| format!("malformed {dir}/{tid}/schedstat"))?;
        out.insert(tid, ns);
    }
    Ok(out)
}

/// (pid, ppid, comm, utime + stime ticks) from a `/proc/PID/stat` line.
pub fn parse_stat_family(stat: &str) -> Option<(u32, u32, &str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let pid = stat[..open].trim().parse().ok()?;
    let comm = &stat[open + 1..close];
    let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let n = |i: usize| f.get(i)?.parse::<u64>().ok();
    // From field 3 (state): ppid is field 4, utime and stime fields 14 and 15.
    let ticks = n(11)? + n(12)?;
    Some((pid, f.get(1)?.parse().ok()?, comm, ticks))
}

/// CPU ticks of every process on the machine that is not the bench or one
/// of its descendants (the loads and tools). Processes that start and exit
/// between two snapshots are not seen, so differences are a lower bound.
/// ksoftirqd is left out: it runs the bench's own packets.
pub struct OtherCpu {
    ticks: std::collections::HashMap<u32, u64>,
}

impl OtherCpu {
    pub fn snapshot() -> OtherCpu {
        let mut all = Vec::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                    continue;
                };
                if let Some((pid, ppid, comm, ticks)) = parse_stat_family(&stat) {
                    all.push((pid, ppid, !comm.starts_with("ksoftirqd"), ticks));
                }
            }
        }
        let parent: std::collections::HashMap<u32, u32> =
            all.iter().map(|&(pid, ppid, ..)| (pid, ppid)).collect();
        let me = std::process::id();
        let ours = |mut pid: u32| {
            // Walk up to init; the tree is shallow.
            for _ in 0..64 {
                if pid == me {
                    return true;
                }
                match parent.get(&pid) {
                    Some(&p) if p != 0 => pid = p,
                    _ => return false,
                }
            }
            false
        };
        OtherCpu {
            ticks: all
                .into_iter()
                .filter(|&(pid, _, counted, _)| counted && !ours(pid))
                .map(|(pid, _, _, t)| (pid, t))
                .collect(),
        }
    }

    /// CPU seconds other processes used since `self`.
    pub fn since(&self, later: &OtherCpu) -> f64 {
        let ticks: u64 = later
            .ticks
            .iter()
            .map(|(pid, t)| t.saturating_sub(self.ticks.get(pid).copied().unwrap_or(0)))
            .sum();
        ticks as f64 * tick_s()
    }
}

/// `VmHWM` (peak resident set) in KiB from `/proc/PID/status`.
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    parse_vm_hwm(&status).context("no VmHWM in /proc/PID/status")
}

/// The BPF program an fd refers to, from its fdinfo: a program fd and a
/// link fd both say `prog_id:`.
pub fn parse_fdinfo_prog_id(fdinfo: &str) -> Option<u32> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("prog_id:"))?
        .trim()
        .parse()
        .ok()
}

/// Ids of the BPF programs a process holds, through program or link fds.
/// This names the programs of exactly that process, whatever they are called.
pub fn prog_ids(pid: u32) -> Result<Vec<u32>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids: Vec<u32> = std::fs::read_dir(&dir)
        .with_context(|| format!("read {dir}"))?
        .flatten()
        .filter_map(|e| parse_fdinfo_prog_id(&std::fs::read_to_string(e.path()).ok()?))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Run-time statistics of one BPF program (`kernel.bpf_stats_enabled`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgStat {
    pub id: u32,
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Parses `bpftool -j prog show`. bpftool leaves out `run_time_ns` and
/// `run_cnt` while they are zero.
pub fn parse_bpftool_progs(json: &str) -> Result<Vec<ProgStat>> {
    let v: Value = serde_json::from_str(json).context("bpftool output is not JSON")?;
    let Some(progs) = v.as_array() else {
        bail!("bpftool output is not a JSON array");
    };
    Ok(progs
        .iter()
        .filter_map(|p| {
            Some(ProgStat {
                id: p["id"].as_u64()? as u32,
                name: p["name"].as_str().unwrap_or("").to_string(),
                run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
                run_cnt: p["run_cnt"].as_u64().unwrap_or(0),
            })
        })
        .collect())
}

/// Current statistics of the programs with these ids.
pub fn prog_stats(ids: &[u32]) -> Result<Vec<ProgStat>> {
    let out = run("bpftool", &["-j", "prog", "show"])?;
    let all = parse_bpftool_progs(&String::from_utf8_lossy(&out.stdout))?;
    Ok(all.into_iter().filter(|p| ids.contains(&p.id)).collect())
}

/// What each program did between two snapshots, by program.
pub fn prog_deltas(before: &[ProgStat], after: &[ProgStat]) -> Vec<ProgStat> {
    after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| b.id == a.id);
            ProgStat {
                run_time_ns: a.run_time_ns.saturating_sub(b.map_or(0, |b| b.run_time_ns)),
                run_cnt: a.run_cnt.saturating_sub(b.map_or(0, |b| b.run_cnt)),
                ..a.clone()
            }
        })
        .collect()
}

/// Two sets of statistics of the same programs added up, by program.
pub fn prog_sums(a: &[ProgStat], b: &[ProgStat]) -> Vec<ProgStat> {
    a.iter()
        .map(|x| {
            let y = b.iter().find(|y| y.id == x.id);
            ProgStat {
                run_time_ns: x.run_time_ns + y.map_or(0, |y| y.run_time_ns),
                run_cnt: x.run_cnt + y.map_or(0, |y| y.run_cnt),
                ..x.clone()
            }
        })
        .collect()
}

/// Packet counters of one device, as the kernel keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStats {
    pub name: String,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

/// Parses `ip -s -j link show`, leaving out loopback.
pub fn parse_link_stats(json: &str) -> Result<Vec<LinkStats>> {
    let v: Value = serde_json::from_str(json).context("ip output is not JSON")?;
    let Some(links) = v.as_array() else {
        bail!("ip output is not a JSON array");
    };
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    Ok(links
        .iter()
        .filter(|l| l["link_type"] != "loopback")
        .filter_map(|l| {
            let s = &l["stats64"];
            Some(LinkStats {
                name: l["ifname"].as_str()?.to_string(),
                rx_packets: n(&s["rx"]["packets"]),
                tx_packets: n(&s["tx"]["packets"]),
                rx_dropped: n(&s["rx"]["dropped"]),
                tx_dropped: n(&s["tx"]["dropped"]),
            })
        })
        .collect())
}

/// Counters of every device but loopback in namespace `ns`.
pub fn link_stats(ns: &str) -> Result<Vec<LinkStats>> {
    let out = run("ip", &["-s", "-j", "-n", ns, "link", "show"])?;
    parse_link_stats(&String::from_utf8_lossy(&out.stdout))
}

/// Parses `nstat -az` (absolute values of every counter).
pub fn parse_nstat(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

/// Every SNMP counter of namespace `ns`.
pub fn nstat_all(ns: &str) -> Result<BTreeMap<String, u64>> {
    let out = xtask::cmd::in_ns(ns, "nstat", &["-az"])?;
    Ok(parse_nstat(&String::from_utf8_lossy(&out.stdout)))
}

/// Counters that moved between two snapshots, with how much.
pub fn counter_deltas(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// Sets a sysctl and puts the old value back when dropped.
pub struct Sysctl {
    key: String,
    old: String,
}

impl Sysctl {
    pub fn set(key: &str, value: &str) -> Result<Self> {
        let old = String::from_utf8_lossy(&run("sysctl", &["-n", key])?.stdout)
            .trim()
            .to_string();
        run("sysctl", &["-q", "-w", &format!("{key}={value}")])?;
        Ok(Sysctl {
            key: key.to_string(),
            old,
        })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(e) = run(
            "sysctl",
            &["-q", "-w", &format!("{}={}", self.key, self.old)],
        ) {
            eprintln!("bench: could not restore {}={}: {e:#}", self.key, self.old);
        }
    }
}

/// BPF run-time statistics, on while this lives: a BPF_ENABLE_STATS
/// reference, which the kernel counts apart from `kernel.bpf_stats_enabled`
/// (the bench holds that sysctl at 0 so that the measured loads run without
/// the two clock reads statistics add to every program run).
pub struct BpfStats {
    _fd: std::os::fd::OwnedFd,
}

impl BpfStats {
    pub fn enable() -> Result<Self> {
        const BPF_ENABLE_STATS: libc::c_long = 32;
        const BPF_STATS_RUN_TIME: u32 = 0;
        let attr: u32 = BPF_STATS_RUN_TIME;
        // SAFETY: `attr` is the `enable_stats` member of `union bpf_attr`.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                &raw const attr,
                size_of::<u32>(),
            )
        };
        if fd < 0 {
            bail!("BPF_ENABLE_STATS: {}", std::io::Error::last_os_error());
        }
        use std::os::fd::FromRawFd as _;
        // SAFETY: a new fd that nothing else owns.
        Ok(BpfStats {
            _fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) },
        })
    }
}

/// A child process that is stopped when dropped, whatever happened.
pub struct Proc {
    pub child: Child,
    what: String,
}

impl Proc {
    pub fn spawn(cmd: &mut Command, what: &str) -> Result<Self> {
        let child = cmd.spawn().with_context(|| format!("start {what}"))?;
        Ok(Proc {
            child,
            what: what.to_string(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` and waits up to `timeout` for the process to exit.
    pub fn stop_with(&mut self, signal: i32, timeout: Duration) -> Result<()> {
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let deadline = Instant::now() + timeout;
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("{} did not exit within {timeout:?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Turns SIGINT and SIGTERM into a flag that the bench checks between steps,
/// so that it unwinds and every lab, child process and sysctl is cleaned up.
pub fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Fails once the bench was asked to stop.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_survive_odd_command_names() {
        let stat = "4242 (tra cer) (x)) S 1 4242 4242 0 -1 4194560 2000 0 0 0 \
                    150 25 0 0 20 0 3 0 12345 100000 2000 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some((150, 25)));
        assert_eq!(parse_stat_ticks("1 (x) S 1"), None);
    }

    #[test]
    fn schedstat_gives_run_time_in_nanoseconds() {
        assert_eq!(
            parse_schedstat("1351231073 35050623 776\n"),
            Some(1_351_231_073)
        );
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
    }

    #[test]
    fn this_process_has_run() {
        let pid = std::process::id();
        let runs = run_times(pid).unwrap();
        assert!(runs.contains_key(&pid), "{runs:?}");
        assert!(runs.values().sum::<u64>() > 0);
    }

    #[test]
    fn stat_family() {
        let stat = "4242 (rust c (x)) R 4200 4242 4242 0 -1 4194560 2000 0 0 0 \
                    150 25 7 3 20 0 3 0 12345 100000 2000";
        assert_eq!(
            parse_stat_family(stat),
            Some((4242, 4200, "rust c (x)", 175))
        );
        assert_eq!(parse_stat_family("1 (x) S"), None);
    }

    #[test]
    fn nstat_counters_and_deltas() {
        let before = parse_nstat(
            "#kernel\nIpInReceives                    7046               0.0\n\
             UdpInDatagrams                  10                 0.0\nUdpNoPorts 0 0.0\n",
        );
        assert_eq!(before["IpInReceives"], 7046);
        let after = parse_nstat(
            "#kernel\nIpInReceives 7050 0.0\nUdpInDatagrams 10 0.0\nUdpNoPorts 2 0.0\n",
        );
        let d = counter_deltas(&before, &after);
        assert_eq!(
            d.into_iter().collect::<Vec<_>>(),
            vec![("IpInReceives".into(), 4), ("UdpNoPorts".into(), 2)]
        );
    }

    #[test]
    fn vm_hwm_in_kib() {
        let status = "Name:\ttracer\nVmPeak:\t  100000 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 9000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(12345));
        assert_eq!(parse_vm_hwm("Name:\tx\n"), None);
    }

    #[test]
    fn prog_id_from_prog_and_link_fdinfo() {
        let prog = "pos:\t0\nflags:\t02000002\nprog_type:\t3\nprog_jited:\t1\nprog_id:\t5212\n";
        let link = "link_type:\ttcx\nlink_id:\t77\nprog_tag:\tabc\nprog_id:\t5300\nifindex:\t2\n";
        let map = "pos:\t0\nmap_type:\t1\nmap_id:\t7932\n";
        assert_eq!(parse_fdinfo_prog_id(prog), Some(5212));
        assert_eq!(parse_fdinfo_prog_id(link), Some(5300));
        assert_eq!(parse_fdinfo_prog_id(map), None);
    }

    #[test]
    fn bpftool_progs_with_and_without_stats() {
        let json = r#"[{"id":10,"type":"sched_cls","name":"tc_ingress","run_time_ns":5000,"run_cnt":100},
                       {"id":11,"type":"tracepoint","name":"kfree_skb"}]"#;
        let p = parse_bpftool_progs(json).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].id, p[0].name.as_str(), p[0].run_time_ns, p[0].run_cnt),
            (10, "tc_ingress", 5000, 100)
        );
        assert_eq!((p[1].run_time_ns, p[1].run_cnt), (0, 0));
        assert!(parse_bpftool_progs("{}").is_err());
    }

    #[test]
    fn deltas_subtract_the_first_snapshot() {
        let s = |id, t, c| ProgStat {
            id,
            name: format!("p{id}"),
            run_time_ns: t,
            run_cnt: c,
        };
        let d = prog_deltas(&[s(1, 100, 10)], &[s(1, 400, 13), s(2, 50, 5)]);
        assert_eq!(d, vec![s(1, 300, 3), s(2, 50, 5)]);
    }

    #[test]
    fn link_stats_skip_loopback() {
        let json = r#"[{"ifindex":1,"ifname":"lo","link_type":"loopback","stats64":{"rx":{"packets":5},"tx":{"packets":5}}},
            {"ifindex":2,"ifname":"v0","link_type":"ether","stats64":{"rx":{"bytes":1,"packets":6818,"dropped":2},"tx":{"packets":294746,"dropped":0}}}]"#;
        let l = parse_link_stats(json).unwrap();
        assert_eq!(
            l,
            vec![LinkStats {
                name: "v0".into(),
                rx_packets: 6818,
                tx_packets: 294746,
                rx_dropped: 2,
                tx_dropped: 0
            }]
        );
    }
}
