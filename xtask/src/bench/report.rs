//! RESULTS.md: the machine, the floors, then the tables behind them.

use std::fmt::Write as _;

use super::{
    arms::Arm,
    paths::PathKind,
    results::{
        FlowLoad, Results, Sample, metric, paired_difference, paired_ratio, summarize_samples,
    },
    stats::{Summary, summarize},
};

/// A target the bench compares against (a figure, never a test assertion).
#[derive(Debug, Clone, PartialEq)]
pub struct Floor {
    pub what: String,
    pub measured: String,
    pub target: String,
    pub met: bool,
    /// For a miss: by how much, and why as far as the numbers tell.
    pub note: String,
}

/// A number with as many decimals as its size deserves.
pub fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// `median [min–max]`.
pub fn cell(s: &Summary) -> String {
    format!("{} [{}–{}]", num(s.median), num(s.min), num(s.max))
}

fn pct(s: &Summary) -> String {
    format!(
        "{:.1}% [{:.1}–{:.1}]",
        s.median * 100.0,
        s.min * 100.0,
        s.max * 100.0
    )
}

fn summary_of(r: &Results, path: PathKind, arm: Arm, key: &str) -> Option<Summary> {
    let m = metric(key);
    let v: Vec<f64> = r
        .samples
        .iter()
        .filter(|s| s.path == path && s.arm == arm)
        .filter_map(|s| (m.get)(s))
        .collect();
    summarize(&v)
}

fn throughput_floor(
    r: &Results,
    path: PathKind,
    key: &str,
    name: &str,
    target: f64,
) -> Option<Floor> {
    let ratio = paired_ratio(&r.samples, path, Arm::B, metric(key))?;
    let met = ratio.median >= target;
    let note = if met {
        String::new()
    } else {
        let short = (target - ratio.median) * 100.0;
        let mut n = format!("missed by {short:.1} points.");
        if ratio.max >= target {
            let _ = write!(
                n,
                " Some repetitions met it (best {:.1}%): the machine's noise is part of the gap.",
                ratio.max * 100.0
            );
        } else {
            n.push_str(" Every repetition missed it.");
        }
        let other = r
            .samples
            .iter()
            .filter(|s| s.path == path && matches!(s.arm, Arm::A | Arm::B))
            .map(|s| s.other_cpu_pct)
            .fold(0.0, f64::max);
        if other >= 10.0 {
            let _ = write!(
                n,
                " Other processes on the machine used up to {}% of a core during these arms.",
                num(other)
            );
        }
        if let (Some(ns), Some(cpu)) = (
            summary_of(r, path, Arm::B, "datapath_ns_per_run"),
            summary_of(r, path, Arm::B, "bpf_cpu_pct"),
        ) {
            let _ = write!(
                n,
                " tracer's TC programs cost {} ns per run (bpf_stats) and all its programs \
                 {}% of one core during the statistics pass.",
                num(ns.median),
                num(cpu.median)
            );
            if key == "tcp_gbps" {
                n.push_str(
                    " The programs run once per GSO packet and once per ACK on every hop, \
                     so TCP pays fewer runs per byte than UDP-64 and its gap is smaller; \
                     closing it takes the same cheaper TC programs the UDP-64 floors need.",
                );
            }
            if key == "udp64_kpps"
                && let Some(a) = summary_of(r, path, Arm::A, key)
            {
                n.push(' ');
                n.push_str(&per_packet_model(path, ns.median, a.median * 1e3, target));
                let predicted = model_ratio(path, ns.median, a.median * 1e3);
                if ratio.median < predicted - 0.02 {
                    let _ = write!(
                        n,
                        " The measured {:.0}% is lower still: the programs' own run time is \
                         not all they cost (cache misses they leave to the rest of the \
                         datapath, the kfree_skb program on every socket-buffer drop, noise).",
                        ratio.median * 100.0
                    );
                }
            }
        }
        n
    };
    Some(Floor {
        what: format!("{name}, {}", path.name()),
        measured: format!("B/A {}", pct(&ratio)),
        target: format!(">= {:.0}%", target * 100.0),
        met,
        note,
    })
}

/// What tracer's per-run cost predicts for a small-packet load whose
/// per-packet work all lands on one saturated core (the sender's: veth
/// delivers on the sending CPU), and what cost would meet `target`.
pub fn per_packet_model(path: PathKind, ns_per_run: f64, pps_a: f64, target: f64) -> String {
    let hops = path.hops() as f64;
    let base_us = 1e6 / pps_a;
    let added_us = hops * ns_per_run / 1e3;
    let predicted = model_ratio(path, ns_per_run, pps_a);
    // base / (base + hops x ns) >= target  <=>  ns <= base (1 / target - 1) / hops
    let needed_ns = base_us * 1e3 * (1.0 / target - 1.0) / hops;
    format!(
        "Model: each packet crosses {hops} traced hops, so tracer adds {hops} x {} ns = {} µs \
         to the {} µs per packet the saturated core spends in arm A ({} kpps), which predicts \
         B/A ≈ {:.0}%. Meeting {:.0}% at this rate needs <= {} ns per run.",
        num(ns_per_run),
        num(added_us),
        num(base_us),
        num(pps_a / 1e3),
        predicted * 100.0,
        target * 100.0,
        num(needed_ns)
    )
}

/// B/A the model of [`per_packet_model`] predicts.
fn model_ratio(path: PathKind, ns_per_run: f64, pps_a: f64) -> f64 {
    let base_ns = 1e9 / pps_a;
    base_ns / (base_ns + path.hops() as f64 * ns_per_run)
}

fn cost_floor(r: &Results, path: PathKind) -> Option<Floor> {
    let b = summary_of(r, path, Arm::B, "datapath_ns_per_run")?;
    let c = summary_of(r, path, Arm::C, "datapath_ns_per_run")?;
    let met = b.median < c.median;
    Some(Floor {
        what: format!("tracer TC ns/run < bpftrace ns/event, {}", path.name()),
        measured: format!("{} vs {} ns", num(b.median), num(c.median)),
        target: "tracer < bpftrace".into(),
        met,
        note: if met {
            String::new()
        } else {
            format!(
                "missed by {} ns per run ({:.0}% above bpftrace). tracer parses the packet \
                 through bpf_skb_load_bytes and updates a per-CPU hash keyed by a 104-byte \
                 flow key (two 40-byte tuples for the VXLAN inner flow) on every hop; the \
                 bpftrace script reads a few fixed offsets of the IPv4 header.",
                num(b.median - c.median),
                (b.median / c.median - 1.0) * 100.0
            )
        },
    })
}

/// tracer's TC programs at most 80 ns per run (issue 14's floor), net of
/// what an empty program costs on the same path (arm F) where it ran: BPF
/// statistics' clock reads and the call are in every program's figure.
fn tc_floor(r: &Results, path: PathKind) -> Option<Floor> {
    const TARGET: f64 = 80.0;
    let b = summary_of(r, path, Arm::B, "datapath_ns_per_run")?;
    let m = metric("datapath_ns_per_run");
    let (net, measured) = match paired_difference(&r.samples, path, Arm::B, Arm::F, m) {
        Some(net) => {
            let f = summary_of(r, path, Arm::F, "datapath_ns_per_run")?;
            let measured = format!(
                "{} ns [{}–{}] net: B {} less F (empty program) {}",
                num(net.median),
                num(net.min),
                num(net.max),
                num(b.median),
                num(f.median)
            );
            (net, measured)
        }
        None => (
            b,
            format!("{} ns [{}–{}]", num(b.median), num(b.min), num(b.max)),
        ),
    };
    let met = net.median <= TARGET;
    Some(Floor {
        what: format!("tracer TC ns/run, {}", path.name()),
        measured,
        target: format!("<= {TARGET} ns"),
        met,
        note: if met {
            String::new()
        } else {
            format!(
                "missed by {} ns per run. Packets the programs cannot read in place \
                 (fragments, ICMP, IPv6, IPv4 options, VXLAN carrying any of those) \
                 still take bpf_skb_load_bytes of the first 128 bytes and the full \
                 parse; see \"What changed\" below.",
                num(net.median - TARGET)
            )
        },
    })
}

/// How the per-packet cost came down, measured by hand with `bpftool prog
/// run` (the same UDP-64 or VXLAN packet 1,000,000 times; the figures include
/// bpf_test_run's own loop, about 20 ns): not part of the bench, so written
/// down here.
const CHANGES: &str = "Measured with `bpftool prog run` on tracer's tc_ingress (one \
    UDP-64 packet, and one VXLAN packet carrying UDP, 1,000,000 runs, interleaved A/B, \
    minimum of 7; the figures include bpf_test_run's loop, about 20 ns, which the datapath \
    does not pay), and by perf profiles of the same:

| change | UDP-64 ns | VXLAN ns |
|---|---|---|
| before (1d8306f: every packet's 104-byte key hashed into a per-CPU hash map, skb->dev by bpf_probe_read_kernel) | 178 | 200 |
| a per-CPU flow cache of 64 slots in front of the map: packets of a flow the CPU keeps seeing skip the key's hash (jhash, ~35 ns) and the map lookup | 165-190 | 145-160 |
| a locked add before the key is read back: 8-byte loads of a key the parser wrote a byte at a time each stalled on store forwarding (~50 ns in all) | 125 | 146 |
| skb->dev by a load through bpf_cast_to_kern_ctx (6.2+) instead of bpf_probe_read_kernel (the helper and its return thunks, ~35 ns) | 96 | 120 |
| the common packet (IPv4 without options, TCP or UDP not to a VXLAN port, not a fragment) read in place with direct packet access, its key's five non-zero words kept in registers: no head copy, byte-wise parse, key write or fence (the VXLAN packet still takes the full parse) | 48-51 | 120-122 |
| VXLAN packets whose outer and inner headers are both common (and the VNI valid) read in place too: nine key words in registers (fdf157d against e3b88ef in one interleaved run: medians 193 -> 90 ns, minima 145 -> 62; UDP-64 unchanged) | unchanged | 62 |

In the datapath, on the same machine within the same hour (bpf_stats over a 4 s iperf3 \
    UDP-64 flood across a veth pair, tc_ingress and tc_egress together, three rounds \
    interleaved): 1d8306f 305-316 ns per run, eba4c12 177-190 ns, eba4c12 without the \
    fence 175-182 ns; then ff4fe14 179-182 ns against cf4277c (in place) 112-127 ns, and \
    a program that only returns 70-71 ns (what BPF statistics and the call cost any \
    program: arm F). The datapath pays more than bpftool prog run (a new skb's data and \
    the cache's slot are cold there), and the fence's gain in prog run does not show in \
    it: within noise.

Arm E keeps the probe read (as kernels before 6.2 must) and clsact attachment; the flow \
    cache and the fence serve every kernel. The in-place path reads at fixed offsets \
    from a packet pointer bounds-checked once, which every verifier from 5.10 on accepts; \
    the full parse keeps its copy (variable offsets through a stack buffer are what the \
    5.10 and 6.1 verifiers accept for it). Not done: a compact IPv4 key for the map (the \
    cache keeps the hash off the common path already; and the drain's kernel side, which \
    a smaller element would serve, costs about as much with a 32-byte key as with the \
    104-byte one: 280-320 against 295-352 ns per entry, 20,000 entries filled from \
    another CPU and drained by lookup-and-delete batches, by a C program).

The firewall hooks (see [Firewall hooks](#firewall-hooks-tracer-alone)): the netfilter \
    observers and the kfree_skb program hashed their 104- and 112-byte keys into a \
    per-CPU map on every packet. fa73156 and 309e7bc give them per-CPU caches of 16 slots \
    per generation as the flow cache is (one cache module for the three): a packet of a \
    flow the CPU keeps seeing adds to its slot, and the observer after the table reuses \
    the entry the one before it made. Measured with bpf_stats over a UDP-64 flood of one \
    flow into an INPUT rule across a veth pair (about 290 kpps, 4 s, two rounds \
    interleaved, old and new binaries): nf_filter_in 197-212 -> 143-166 ns per run, \
    nf_filter_out 120-130 -> 70-73 ns, kfree_skb (DROP rule) 228-258 -> 172-178 ns. \
    What is left in nf_filter_in and kfree_skb is mostly reading the packet: neither \
    program type has direct packet access, so the headers are copied with a helper and \
    parsed a byte at a time.

Every program: aya's program macros wrap the body in an outer function that calls it, \
    and LLVM kept that call, a BPF-to-BPF call with a second prologue and epilogue on every \
    run (a system-wide profile of a UDP-64 flood put a fifth of the TC programs' samples in \
    the wrapper; arm F's empty program is loaded without one). ef5316a marks each body \
    `#[inline(always)]`, so each program is one function. bpf_stats over a UDP-64 flood \
    across a veth pair (4 s, about 200 kpps, 7 rounds interleaved, old and new binaries): \
    tc_ingress and tc_egress 96-107 (median 101) -> 84-103 ns per run (median 91); over \
    the firewall floods (2 rounds of each rule) TC 90-95 -> 84-97 ns, the netfilter \
    observers and kfree_skb within noise.

The caches' shape: a packet crosses every traced hop of its path on one CPU (the \
    vxlan path's eight), and each hop is a key of its own. With one slot of 64 per key, \
    two of eight keys share a slot about a third of the time (36% simulated; of sixteen \
    keys, 86%), and then take it from each other on every packet, each time through the \
    flow map (the key's hash, the lookup, the atomic adds and the device's name). Which \
    flows collided depended on their ports: the vxlan path's TC cost per run went from \
    42 to 134 ns net across the repetitions of one bench. 3686753 makes the three caches \
    four-way (a map value is a set of four slots, one lookup a packet; a key takes the \
    first empty slot of its set, else the set's slots are given up in turn): simulated, \
    eight keys then miss once in 3,000 packet-hops instead of once in ten. Measured on \
    the vxlan path's eight hops (bpf_stats on, iperf3 UDP-64 for 1 s from each of 20 \
    client ports in turn, three rounds interleaved, old and new binaries): tc_ingress and \
    tc_egress per run, median over the 60 flows 139 -> 122.5 ns, 90th percentile 183 -> \
    140 ns, flows above 145 ns 28 -> 5 of 60; the 10th percentile 110 -> 113 ns (flows \
    that never collided pay about the same).

tracer's own CPU in the arms' windows: the first drop of a run read /proc/kallsyms to \
    name its place, 70 ms of a core in the middle of the loads (40 ms of it the kernel \
    formatting 120,000 lines). 6ff5873 reads the symbols as tracer starts, into a compact \
    table (55 ms, no more memory): arm B's tool CPU on the veth path 1.0% -> 0.1-0.2% of a \
    core (quick bench, one and two repetitions).";

/// What a profile of the active-flows load showed (perf, 10,000 flows on
/// two hops, JSON to a file), written down by hand: a profile is not part of
/// the bench.
const CPU_PROFILE: &str = "A perf profile of this load's shape (tracer at 460fe81, \
    10,000 flows over a veth pair, JSON to /dev/null) puts 25-30% of tracer's time in the kernel's batched \
    lookup-and-delete of the flow map (about 0.8 µs per entry: each entry's 104-byte key \
    and per-CPU values are cache misses, last written on other CPUs): over 1% of a core \
    by itself, so the 2% floor is out of reach of userspace work alone. The rest: path \
    rows about 13% (small per-path allocations), the JSON lines about 10%, naming and \
    sorting the rows about 8%, cache misses in the run totals' hash table 7-9%, the NAT \
    ties' per-row lookup 3.5%. Already done (460fe81 against ff4fe14, same hour, bench \
    load: 8.1% -> 5.6-6.2% of a core): path rows written by hand like flow rows, each \
    hop's next hop worked out once per report, JSON built in a buffer with names written \
    unescaped where they need no escaping, the sort on keys held inline, a row's device \
    part written once per device. Less memory per entry would not close the gap: a C \
    program that fills 20,000 entries of a 65,536-entry hash map from one CPU and drains \
    them by lookup-and-delete batches from the other measures 280-320 ns per entry with \
    a 32-byte key against 295-352 with the 104-byte one, and batches of lookups without \
    the delete 230-270: the cost is the batch call's work per hash bucket (its lock, two \
    copies to userspace with their checks), whatever the entry holds. What would: flow \
    counters userspace reads without a copy (a memory-mapped array), or fewer entries \
    (one per flow holding its hops, not one per hop). With today's layout, a longer --interval lowers the \
    cost in proportion. Since 1793263 the flow map is one shared hash map (atomic adds) \
    instead of a per-CPU one: a drain copies one value per entry instead of one per \
    possible CPU, and the maps hold 14 MB each whatever the CPU count (a per-CPU pair \
    needed 48 bytes x 65,536 entries per possible CPU: 400 MB on a 64-CPU host). On this \
    2-CPU machine the agent's CPU did not move (within noise); on large hosts the drain \
    no longer grows with their CPUs. Then (a06f695, 028f834) a report checks only the flows new to the run \
    against the NAT ties, not each of its 20,000 rows (the run totals already know which \
    keys are new), and a path's working lists (its hops' next hops, runs and places) \
    live on the stack instead of a dozen small allocations per path: 3.88% -> 3.47% of a \
    core on this load's shape (5 interleaved rounds of 20 s, CPU time from schedstat). A \
    profile after it: the kernel's side of the drain 27% of tracer's time (it takes each \
    hash bucket's lock and copies each bucket to userspace by itself, with the hardened \
    usercopy checks: about 0.5 µs per entry), the run totals' hash table 13% (a cache \
    miss per 104-byte key), the JSON lines 20%, paths 10%, sorting rows 6%. The \
    kernel's part is per entry, not per bucket: --flow-map-size 32,768, 65,536 and \
    131,072 (as many buckets) measured alike on this load (3.1-3.7% of a core, 2 \
    rounds each, within noise). Text lines, which the bench does not measure, cost \
    more than JSON until caf076a wrote them in place into one buffer as the JSON sink \
    does (5.0-5.7% -> 3.8-4.5% of a core, 4 interleaved rounds). Then 5169219 replaces \
    the run totals' hash map (FlowKey's comparison alone, its cache miss, was 11% of \
    tracer's time) with a table that takes a drain's entries all at once and prefetches \
    each key's slot 16 keys ahead and the entry it points at 8 ahead, so the misses \
    overlap: 3.18-3.45% -> 2.65-2.79% of a core (JSON, 3 interleaved rounds of 15 s). \
    Then 239c571 takes the kernel's side of the drain away: a flow keeps a slot while it \
    is active (a hash map gives its index, a free stack the slots), the programs add its \
    counts with XADD into one of two BPF_F_MMAPABLE arrays by generation, and userspace \
    reads and zeroes the old array in place after the switch; a slot idle for two \
    reports is freed one report later, when no program can still hold it. On this load's \
    shape (10,000 flows over a veth pair, JSON to /dev/null, 3 interleaved rounds of \
    15 s): 2.67% -> 1.73% of a core (medians). The drain went from about a third of \
    tracer's time to a tenth. 630c9f6 reads and maps the arrays only up to the highest \
    slot taken (each CPU records its own), and cff5640 reads the slots' keys in place \
    too: the active-flows load's peak RSS 53.8 MiB before the slots, 61.9 with both \
    65,536-slot arrays mapped whole, 57.7 after. A slot held after its flow went idle \
    is one a short flow cannot have: the churn load (20,000 short flows through 1,024 \
    slots) counted 17,603 of 120,000 packets with the drained map and 8,040 with slots \
    freed two reports after their flow went idle. Since then a slot is freed in the report \
    that finds it idle for a whole interval (a second wait on running programs, then \
    what one of them added meanwhile is read): 11,250 in a churn load alone. The \
    measured window starts with the load, so its first report, with 10,000 conversations \
    new to the run, is in it: that report dumped connection tracking in both traced \
    namespaces for the NAT ties, each dump walking the kernel's whole table (a quarter \
    of tracer's samples in the load's first 1.6 s, 20-40 ms of CPU). 3ee5997 asks a \
    namespace first how many connections it tracks (a counter the kernel keeps per \
    namespace) and skips one that tracks none, as these lab namespaces and most \
    containers' do. 635b2e7 stops hashing every slot's 104-byte key to look it up among \
    the few dozen flows the per-CPU cache holds (3% of tracer's samples): a 4,096-bit \
    set of their fingerprints says which keys can be there. 3485077 keeps a path's \
    places and run ends inline for three instead of eight (a SmallVec copies its whole \
    inline array on every move, and eight places are a kilobyte): 10,000 two-hop paths \
    built in a loop, 6.3 -> 5.3 ms per report (medians of 5 interleaved runs). Quick \
    runs of this load alone, interleaved with 20d77b4 in the same hour: 2.6/2.3/2.0% -> \
    2.0/1.9/1.9% of a core (three pairs; two earlier pairs without 3485077: 2.7/2.5 -> \
    2.2/2.1). A single run of this load, as the bench makes, moves by 0.3-0.5 points \
    from one run to the next at the same commit; what is left is spread thin: paths a \
    quarter of tracer's samples, the JSON lines and their pipe writes a third (a sixth \
    of it being preempted by the reader at the end of a write), naming and sorting the \
    flow rows an eighth, the drain a tenth. Then each of these was timed alone, on \
    10,000 two-hop paths or 20,000 rows built in a loop (medians of 7 interleaved runs, \
    harnesses kept out of the repository): ace7ac7 lists a conversation's flow rows apart \
    instead of in a list per path (an allocation and a free per path, and glibc's chunk \
    coalescing a tenth of the paths' time): paths 5.30 -> 4.69 ms per report; 136c31f \
    sizes the list of path rows before filling it (it copied them as it doubled): 4.42 \
    -> 4.19 ms; bf313f1 writes a report's path places and hops once and copies them after \
    (30,000 a report over a handful of places, each looking its inode up by name): the \
    JSON of a report 3.05 -> 2.62 ms; d2a7ef0 sorts the flow rows by a u64 of the first \
    eight bytes of their order's prefix that differ among them, 16-byte elements \
    compared as integers instead of 64-byte ones field by field: 1.45 -> 0.78 ms an \
    interval. Quick runs of this load alone, four interleaved pairs of 15 s: \
    2.08/2.46/2.50/2.51% -> 2.07/2.08/2.29/1.90% of a core with the first three. \
    The machine of the run after d04c13d's measured the same code about a third \
    higher: three quick runs of 26592fe (d04c13d's userspace, with error texts changed) \
    gave 2.69-2.79% of a core there, where the full run at d04c13d had 2.00. On that \
    machine: 923c085 takes a tool's CPU from its threads' \
    run time in nanoseconds (schedstat) instead of utime + stime in 10 ms ticks, a \
    tenth of a point each over this load's 10 s window; 8c28150 sorts the rows' digests \
    with a radix sort (sorted() on 20,000 rows shaped like this load's: 0.73-1.09 -> \
    0.50-0.71 ms); 8e8ce1e hands the JSON out a mebibyte at a time instead of 64 KiB, \
    so that the reader, woken by each write, preempts tracer a tenth as often (about \
    140 times a second before): quick runs alternated with its parent, two rounds of \
    three, 2.50-2.93% (median 2.69) -> 2.31-2.59% (2.45); 7ff1a15 makes no places for \
    a path with nothing to place: 2.56 -> 2.51, within the noise. The digest is the \
    first eight bytes that vary among all the rows, and a few IPv6 rows (link-local \
    traffic, as in these namespaces) make their address bytes vary first, tying all \
    the IPv4 rows of a device: e7e1bb3 sorts such a run again from the byte after its \
    digest (sorted() on 20,000 IPv4 rows and 16 IPv6 ones: 3.2-3.3 -> 1.04-1.09 ms). \
    A profile of this load at ef181cd (25 s of a steady run, after its first report): \
    the drain a quarter of tracer's samples (adding its entries to the run totals, \
    each key hashed and looked up, 11%), naming and sorting the flow rows a fifth, \
    paths 15%, the JSON lines 19% (the pipe writes 7%). c952f6d lets a slot keep where \
    its key's run total is, so that the totals add there after comparing the key, \
    without hashing it (the report harness, on this load's 20,000 keys: 1.19 -> 0.89 \
    ms a report, medians of 15 rounds); c840099 sizes a report's conversation groups \
    before filling them (paths 4.21/4.51/4.29 -> 4.25/4.06/4.00 ms, three interleaved \
    pairs). Whole-agent runs of this load could not tell either apart: three runs of \
    each, two rounds alternated, measured 1.70-3.62% of a core before and 1.77-3.89% \
    after, the spread of a 2-vCPU VM where the load and tracer share the CPUs.

During the throughput loads, most of tracer's own time was the NAT ties' conntrack \
    dumps: one per traced namespace whenever a report had a new conversation, each \
    walking the kernel's whole table (262,144 buckets here, 5-15 ms). e3b88ef looks new \
    conversations up one by one instead (a dump only for more than 256 in a report) on \
    a socket kept in each namespace: tracer's share of a core in arm B went from \
    1.7-2.6% to 1.0-1.4% (quick bench, 2 repetitions), and idle on 20 namespaces from \
    3.1% to 0.7%.";

/// Every floor the results allow to judge.
pub fn floors(r: &Results) -> Vec<Floor> {
    let mut out = Vec::new();
    for &path in &r.settings.paths {
        out.extend(throughput_floor(
            r,
            path,
            "tcp_gbps",
            "TCP throughput",
            0.97,
        ));
    }
    for &path in &r.settings.paths {
        out.extend(throughput_floor(r, path, "udp64_kpps", "UDP-64 pps", 0.93));
    }
    for &path in &r.settings.paths {
        out.extend(tc_floor(r, path));
    }
    for &path in &r.settings.paths {
        out.extend(cost_floor(r, path));
    }
    if let Some(a) = r.active() {
        let what = format!(
            "{} active flows at --interval 1 ({})",
            a.flows,
            a.path.name()
        );
        let cpu = a.cost.cpu_pct;
        let runs = &r.active_runs;
        let of_runs = if runs.len() > 1 {
            let each: Vec<String> = runs.iter().map(|f| num(f.cost.cpu_pct)).collect();
            format!(" (median of {} runs: {})", runs.len(), each.join(", "))
        } else {
            String::new()
        };
        // Results from before schedstat, or a run where a thread ended.
        let ticks = if runs.iter().all(|f| f.cost.cpu_exact) {
            ""
        } else {
            ", some in 10 ms clock ticks"
        };
        out.push(Floor {
            what: format!("tracer CPU, {what}"),
            measured: format!("{}% of one core{of_runs}{ticks}", num(cpu)),
            target: "<= 2%".into(),
            met: cpu <= 2.0,
            note: if cpu <= 2.0 {
                String::new()
            } else {
                format!(
                    "missed by {} points ({}x the floor); {} of its {} CPU seconds were \
                     system time. Every second tracer reads, names and adds to its run \
                     totals {} per-hop counters ({} flows x {} hops) and prints each as a \
                     JSON line. {CPU_PROFILE}",
                    num(cpu - 2.0),
                    num(cpu / 2.0),
                    num(a.cost.cpu_system_s),
                    num(a.cost.cpu_s),
                    a.flows as u64 * a.hops,
                    a.flows,
                    a.hops,
                )
            },
        });
        // The highest of the runs': memory is not judged on a median.
        let rss = (runs.iter().map(|f| f.cost.peak_rss_kib).max()).unwrap_or(0) as f64 / 1024.0;
        out.push(Floor {
            what: format!("tracer peak RSS, {what}"),
            measured: format!("{} MiB", num(rss)),
            target: "<= 64 MiB".into(),
            met: rss <= 64.0,
            note: if rss <= 64.0 {
                String::new()
            } else {
                format!("missed by {} MiB.", num(rss - 64.0))
            },
        });
        out.push(exact_below(r, a));
    }
    out.extend(firewall_floor(r));
    for c in &r.churn {
        let missing = c.missing();
        let met = missing == 0 && c.health.flow_map_full > 0;
        out.push(Floor {
            what: format!(
                "{} flows through a {}-entry map: every packet counted or flow_map_full, {}",
                c.flows,
                c.map_size,
                c.path.name()
            ),
            measured: format!(
                "{} counted + {} flow_map_full of {} (missing {missing})",
                c.tracer_packets, c.health.flow_map_full, c.kernel_packets
            ),
            target: "missing 0, flow_map_full > 0".into(),
            met,
            note: if met {
                String::new()
            } else if c.health.flow_map_full == 0 {
                "the map never filled: the load did not exceed its capacity.".into()
            } else {
                format!("{missing} packets neither counted nor reported as flow_map_full.")
            },
        });
    }
    out
}

/// Exact counts below map capacity: the active-flows load and every UDP-64
/// load of arm B.
fn exact_below(r: &Results, a: &FlowLoad) -> Floor {
    let udp_missing: Vec<i64> = r
        .samples
        .iter()
        .filter_map(|s| Some(s.tracer.as_ref()?.udp_missing(s.kernel_udp_in)))
        .collect();
    let udp_bad = udp_missing.iter().filter(|m| **m != 0).count();
    let off: Vec<String> = r
        .samples
        .iter()
        .filter(|s| {
            s.tracer
                .as_ref()
                .is_some_and(|t| t.udp_missing(s.kernel_udp_in) != 0)
        })
        .map(|s| {
            let moved: Vec<String> = s
                .server_counters
                .iter()
                .filter(|(k, _)| {
                    k.starts_with("Udp") || k.starts_with("IpIn") || k.starts_with("IpExt")
                })
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            format!("{} rep {}: {}", s.path.name(), s.rep, moved.join(", "))
        })
        .collect();
    // Every run of the load counts, not only the median one.
    let runs = &r.active_runs;
    let missing: Vec<i64> = runs.iter().map(|f| f.missing()).collect();
    let full: u64 = runs.iter().map(|f| f.health.flow_map_full).sum();
    let met = missing.iter().all(|m| *m == 0) && full == 0 && udp_bad == 0;
    let active_missing = match missing.as_slice() {
        [one] => one.to_string(),
        many => format!("{many:?}"),
    };
    Floor {
        what: "counts exact below map capacity".into(),
        measured: format!(
            "{} flows{}: missing {active_missing}, flow_map_full {full}; UDP-64 (arm B): {} of {} runs off",
            a.flows,
            if runs.len() > 1 {
                format!(" ({} runs)", runs.len())
            } else {
                String::new()
            },
            udp_bad,
            udp_missing.len()
        ),
        target: "0 missing".into(),
        met,
        note: if met {
            String::new()
        } else {
            format!(
                "missing packets (negative: tracer counted more than the kernel): active-flows \
                 load {active_missing}, UDP-64 runs {udp_missing:?}. Server counters that \
                 moved in the runs off: {}.",
                off.join("; ")
            )
        },
    }
}

fn arms_of(r: &Results) -> Vec<Arm> {
    Arm::ALL
        .into_iter()
        .filter(|a| r.settings.arms.contains(a))
        .collect()
}

pub fn markdown(r: &Results) -> String {
    let mut md = String::new();
    let m = &r.meta;
    let s = &r.settings;
    let _ = writeln!(md, "# tracer overhead benchmark\n");
    let _ = writeln!(md, "- date: {}", m.date);
    let _ = writeln!(md, "- kernel: {}", m.kernel);
    let _ = writeln!(md, "- CPU: {} ({} CPUs)", m.cpu, m.cpus);
    let _ = writeln!(
        md,
        "- machine: {}, {:.0} GiB RAM, {}",
        m.machine, m.memory_gib, m.os
    );
    let _ = writeln!(md, "- tracer commit: {}", m.commit);
    let _ = writeln!(md, "- tools: {}", m.tools.join(", "));
    let _ = writeln!(
        md,
        "- load average (1, 5, 15 min) before the run: {}, after: {}; the run took {:.1} minutes",
        m.loadavg_before, m.loadavg_after, m.minutes
    );
    let _ = writeln!(
        md,
        "\nThis is a {}-vCPU virtual machine: the load generator, its peer, the kernel's \
         softirq work and the tool under test all share those vCPUs, so the numbers are \
         noisy. Each figure is the median over {} repetitions with [min–max]; the arms ran \
         interleaved ({}) on every path in every repetition{}, so slow drift hits all arms \
         alike. Ratios to arm A are medians of per-repetition ratios.\n",
        m.cpus,
        s.reps,
        arms_of(r)
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(" "),
        if s.alternate {
            " (reversed on even repetitions)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "Loads per arm: iperf3 TCP for {} s, iperf3 UDP with 64-byte payloads at `-b 0` for \
         {} s (client pinned to CPU 0, server to CPU 1), then {} UDP request/response round \
         trips of 64 bytes, one at a time, both ends polling and yielding the CPU between \
         polls (an idle vCPU of this VM takes tens of microseconds to wake up, which would \
         swamp the datapath's latency). \
         tracer runs with `--netns` for each lab namespace, `--interval 1 --output json`. \
         {}\n",
        num(s.seconds),
        num(s.seconds),
        s.requests,
        stats_note(r)
    );
    floors_section(&mut md, r);
    let _ = writeln!(md, "## What changed\n\n{CHANGES}\n");
    older_hooks_section(&mut md, r);
    firewall_section(&mut md, r);
    paths_section(&mut md, r);
    cost_section(&mut md, r);
    accuracy_section(&mut md, r);
    md
}

/// When BPF statistics (two clock reads added to every program run) were on.
fn stats_note(r: &Results) -> String {
    if r.settings.stats_seconds <= 0.0 {
        return "`kernel.bpf_stats_enabled` was 1 for the whole run (it adds two clock reads \
                to every BPF program run, in arms B and C alike)."
            .into();
    }
    let outside: u64 = r
        .samples
        .iter()
        .filter_map(|s| Some(s.cost.as_ref()?.runs_outside_stats))
        .sum();
    let mut n = format!(
        "BPF statistics were off during those loads, so they carry none of the two clock \
         reads statistics add to every program run; per-program ns per run and runs/s come \
         from a further {} s UDP-64 load of each arm that runs BPF programs (to another iperf3 server, so the \
         accuracy counts are the measured load's alone), the only time statistics were on.",
        num(r.settings.stats_seconds)
    );
    if outside > 0 {
        let _ = write!(
            n,
            " But another process on the machine had them on during the loads as well: \
             {outside} program runs were counted outside the statistics passes."
        );
    }
    n
}

fn floors_section(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## Floors\n");
    let _ = writeln!(md, "| floor | measured | target | verdict |");
    let _ = writeln!(md, "|---|---|---|---|");
    let fl = floors(r);
    for f in &fl {
        let verdict = if f.met { "met" } else { "**missed**" };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {verdict} |",
            f.what, f.measured, f.target
        );
    }
    let missed: Vec<&Floor> = fl.iter().filter(|f| !f.met).collect();
    if !missed.is_empty() {
        let _ = writeln!(md, "\nMissed floors:\n");
        for f in missed {
            let _ = writeln!(md, "- **{}**: {}", f.what, f.note);
        }
    }
    let _ = writeln!(md);
}

/// Arm E against B: what the hooks of kernels before 6.2 cost.
/// Every firewall flood counted exactly.
fn firewall_floor(r: &Results) -> Option<Floor> {
    let first = r.firewall.first()?;
    let off: Vec<String> = r
        .firewall
        .iter()
        .filter(|f| !f.exact())
        .map(|f| {
            format!(
                "{} rule: sent {}, accepted {}, dropped {}, drops {}",
                f.rule.name(),
                f.sent,
                f.accepted,
                f.dropped,
                f.drops
            )
        })
        .collect();
    Some(Floor {
        what: format!("firewall floods counted exactly, {}", first.path.name()),
        measured: format!(
            "{} of {} floods exact",
            r.firewall.len() - off.len(),
            r.firewall.len()
        ),
        target: "each packet accepted, or dropped and freed as a drop".into(),
        met: off.is_empty(),
        note: off.join("; "),
    })
}

/// What the netfilter observers and the drop program cost per packet.
fn firewall_section(md: &mut String, r: &Results) {
    let Some(first) = r.firewall.first() else {
        return;
    };
    let _ = writeln!(
        md,
        "## Firewall hooks (tracer alone)

\
         The labs' namespaces have no firewall, so the loads above never run tracer's \
         netfilter observers, and drop nothing on purpose. On a Docker host every forwarded \
         packet passes filter chains. Here {} UDP-64 packets of one flow go as fast as one \
         sender manages into an iptables INPUT rule of the {} path's server namespace, that \
         ACCEPTs them (to a socket that reads them) or DROPs them, with BPF statistics on; \
         {} floods of each, interleaved. Counts are tracer's run totals of the flood's flow: \
         its verdict rows at INPUT (filter) and its drop rows. ns per run is median [min–max] \
         over the floods.\n",
        r.settings.firewall_packets,
        first.path.name(),
        r.firewall.iter().filter(|f| f.rule == first.rule).count(),
    );
    columns(
        md,
        &[
            "rule",
            "floods",
            "sent (median)",
            "exact",
            "nf_filter_in ns/run",
            "nf_filter_out ns/run",
            "kfree_skb ns/run",
            "TC ns/run",
        ],
    );
    for rule in super::firewall::Rule::BOTH {
        let floods: Vec<_> = r.firewall.iter().filter(|f| f.rule == rule).collect();
        if floods.is_empty() {
            continue;
        }
        let ns = |pick: fn(&str) -> bool| {
            let v: Vec<f64> = floods
                .iter()
                .filter_map(|f| f.cost.ns_per_run(pick))
                .collect();
            summarize(&v).map_or_else(
                || "–".to_string(),
                |s| format!("{} [{}–{}]", num(s.median), num(s.min), num(s.max)),
            )
        };
        let sent = summarize(&floods.iter().map(|f| f.sent as f64).collect::<Vec<_>>())
            .map_or(0.0, |s| s.median);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} of {} | {} | {} | {} | {} |",
            rule.name(),
            floods.len(),
            num(sent),
            floods.iter().filter(|f| f.exact()).count(),
            floods.len(),
            ns(|n| n == "nf_filter_in"),
            ns(|n| n == "nf_filter_out"),
            ns(|n| n == "kfree_skb"),
            ns(|n| n.starts_with("tc_")),
        );
    }
    let _ = writeln!(md);
}

fn older_hooks_section(md: &mut String, r: &Results) {
    if !arms_of(r).contains(&Arm::E) {
        return;
    }
    let _ = writeln!(
        md,
        "## Hooks of older kernels (arm E)\n\n\
         Arm E is tracer as kernels before 6.2 run it, on this kernel: clsact filters over \
         netlink instead of tcx links, and each packet's device read with \
         bpf_probe_read_kernel instead of a load through bpf_cast_to_kern_ctx \
         (`--tc-attach netlink --no-kfuncs`). The netfilter hooks of older kernels \
         (fentry/fexit on nft_do_chain, kprobes) cannot run on this machine's kernel and \
         are not measured.\n"
    );
    columns(
        md,
        &[
            "path",
            "TC ns/run B",
            "TC ns/run E",
            "UDP-64 B/A",
            "UDP-64 E/A",
            "TCP B/A",
            "TCP E/A",
        ],
    );
    for &path in &r.settings.paths {
        let ns = |arm| summary_of(r, path, arm, "datapath_ns_per_run").map(|s| num(s.median));
        let ratio = |arm, key| {
            paired_ratio(&r.samples, path, arm, metric(key))
                .map(|s| format!("{:.1}%", s.median * 100.0))
        };
        let dash = || "–".to_string();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            path.name(),
            ns(Arm::B).unwrap_or_else(dash),
            ns(Arm::E).unwrap_or_else(dash),
            ratio(Arm::B, "udp64_kpps").unwrap_or_else(dash),
            ratio(Arm::E, "udp64_kpps").unwrap_or_else(dash),
            ratio(Arm::B, "tcp_gbps").unwrap_or_else(dash),
            ratio(Arm::E, "tcp_gbps").unwrap_or_else(dash),
        );
    }
    let _ = writeln!(md);
}

fn paths_section(md: &mut String, r: &Results) {
    let arms = arms_of(r);
    let _ = writeln!(md, "## Throughput and latency\n");
    let _ = writeln!(
        md,
        "Median [min–max]; in parentheses the median per-repetition ratio to arm A.\n"
    );
    for &path in &r.settings.paths {
        let _ = writeln!(md, "### {} ({})\n", path.description(), path.name());
        header(md, "metric", &arms);
        for key in [
            "tcp_gbps",
            "udp64_kpps",
            "rr_p50_us",
            "rr_p99_us",
            "other_cpu_pct",
        ] {
            let m = metric(key);
            let mut row = format!("| {} |", m.label);
            for &arm in &arms {
                let c = match summary_of(r, path, arm, key) {
                    Some(s) if arm != Arm::A && key != "other_cpu_pct" => {
                        let ratio = paired_ratio(&r.samples, path, arm, m)
                            .map(|q| format!(" ({:.1}%)", q.median * 100.0))
                            .unwrap_or_default();
                        format!("{}{ratio}", cell(&s))
                    }
                    Some(s) => cell(&s),
                    None => "–".into(),
                };
                let _ = write!(row, " {c} |");
            }
            let _ = writeln!(md, "{row}");
        }
        let _ = writeln!(md);
    }
}

/// A table's header row and separator.
fn columns(md: &mut String, names: &[&str]) {
    let _ = writeln!(md, "| {} |", names.join(" | "));
    let _ = writeln!(md, "|{}", "---|".repeat(names.len()));
}

fn header(md: &mut String, first: &str, arms: &[Arm]) {
    let names: Vec<&str> = arms.iter().map(|a| a.label()).collect();
    let _ = writeln!(md, "| {first} | {} |", names.join(" | "));
    let _ = writeln!(md, "|---|{}", "---|".repeat(arms.len()));
}

fn cost_section(md: &mut String, r: &Results) {
    let arms: Vec<Arm> = arms_of(r).into_iter().filter(|a| *a != Arm::A).collect();
    if arms.is_empty() {
        return;
    }
    let _ = writeln!(md, "## What each tool cost\n");
    let _ = writeln!(
        md,
        "Over the measured window of each arm (all its loads): CPU of the tool's \
         processes (their threads' run time in nanoseconds from \
         /proc/PID/task/TID/schedstat; utime + stime from /proc/PID/stat, in 10 ms \
         ticks, where a thread ended inside the window), their peak RSS (VmHWM); and, during \
         the statistics pass, run time per run of their BPF programs from `bpftool prog show` \
         and their share of one core (per-packet programs: \
         tracer's tc_ingress/tc_egress, bpftrace's netif_receive_skb/net_dev_queue, arm F's \
         tc_empty; tcpdump uses no BPF program here). Arm F's program returns at once: its \
         ns per run is what statistics (two clock reads) and the call cost any TC program \
         here, and the floor on tracer's ns per run is judged net of it.\n"
    );
    for &path in &r.settings.paths {
        let _ = writeln!(md, "### {}\n", path.name());
        header(md, "metric", &arms);
        for key in [
            "cpu_pct",
            "peak_rss_mib",
            "datapath_ns_per_run",
            "drop_ns_per_run",
            "bpf_cpu_pct",
        ] {
            let mut row = format!("| {} |", metric(key).label);
            for &arm in &arms {
                let c = summary_of(r, path, arm, key)
                    .map(|s| cell(&s))
                    .unwrap_or_else(|| "–".into());
                let _ = write!(row, " {c} |");
            }
            let _ = writeln!(md, "{row}");
        }
        let _ = writeln!(md);
    }
    programs_table(md, r);
}

/// Every BPF program of arms B and C by name, whatever the tool loads.
fn programs_table(md: &mut String, r: &Results) {
    let mut progs: Vec<(Arm, String)> = r
        .samples
        .iter()
        .filter_map(|s| Some((s.arm, s.cost.as_ref()?)))
        .flat_map(|(arm, c)| c.progs.iter().map(move |p| (arm, p.name.clone())))
        .collect();
    progs.sort();
    progs.dedup();
    if progs.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "### Each BPF program

ns per run, median [min–max], and runs per second of the \
         statistics pass (median), per path.\n"
    );
    let paths = &r.settings.paths;
    let names: Vec<&str> = paths.iter().map(|p| p.name()).collect();
    let _ = writeln!(md, "| arm | program | {} |", names.join(" | "));
    let _ = writeln!(md, "|---|---|{}", "---|".repeat(paths.len()));
    for (arm, name) in progs {
        let mut row = format!("| {} | {name} |", arm.label());
        for &path in paths {
            let runs: Vec<(f64, f64)> = r
                .samples
                .iter()
                .filter(|s| s.path == path && s.arm == arm)
                .filter_map(|s| {
                    let c = s.cost.as_ref()?;
                    let p = c.progs.iter().find(|p| p.name == name)?;
                    (p.run_cnt > 0).then(|| {
                        (
                            p.run_time_ns as f64 / p.run_cnt as f64,
                            p.run_cnt as f64 / c.progs_s(),
                        )
                    })
                })
                .collect();
            let ns = summarize(&runs.iter().map(|r| r.0).collect::<Vec<_>>());
            let rate = summarize(&runs.iter().map(|r| r.1).collect::<Vec<_>>());
            let c = match (ns, rate) {
                (Some(ns), Some(rate)) => format!("{}, {}/s", cell(&ns), num(rate.median)),
                _ => "–".into(),
            };
            let _ = write!(row, " {c} |");
        }
        let _ = writeln!(md, "{row}");
    }
    let _ = writeln!(md);
}

fn accuracy_section(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## Accuracy\n");
    let b: Vec<&Sample> = r
        .samples
        .iter()
        .filter(|s| matches!(s.arm, Arm::B | Arm::E))
        .collect();
    if !b.is_empty() {
        let _ = writeln!(
            md,
            "### UDP-64 and request/response under tracer (arms B and E, every repetition)\n\n\
             Sent: iperf3's client count. tracer at the client's device (egress) counts the \
             UDP-64 flow including iperf3's UDP handshake datagram. Between the two devices \
             the kernel may drop (CPU backlog full); tracer's own drop program counts those. \
             Kernel at the server: the server namespace's IP packets in (nstat IpInReceives) \
             from before the UDP-64 load to the end of the arm, less TCP segments (iperf3's \
             control connection), ICMP and the request/response requests. (Not the UDP \
             counters: UdpInDatagrams counts what the application read, so datagrams still \
             queued when iperf3 closes its socket are in none.) missing = kernel − tracer at \
             the server's device (ingress). The server namespace's drops by reason are \
             tracer's. \
             Request/response: requests sent vs tracer at the client's device.\n"
        );
        columns(
            md,
            &[
                "path",
                "rep",
                "UDP sent",
                "tracer @client egress",
                "tracer drops (all)",
                "kernel UDP-64 in @server",
                "tracer @server ingress",
                "missing",
                "received by iperf3",
                "tracer drops @server ns",
                "RR sent",
                "tracer RR @client",
                "flow_map_full",
                "drop_map_full",
                "ring lost",
            ],
        );
        for s in &b {
            let Some(t) = &s.tracer else { continue };
            let reasons: Vec<String> = t
                .server_drops
                .iter()
                .map(|(reason, n)| format!("{reason} {n}"))
                .collect();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                format_args!(
                    "{}{}",
                    s.path.name(),
                    if s.arm == Arm::E { " (E)" } else { "" }
                ),
                s.rep,
                s.udp.sent,
                t.udp_sender_egress,
                t.drops,
                s.kernel_udp_in,
                t.udp_receiver_ingress,
                t.udp_missing(s.kernel_udp_in),
                s.udp.received,
                reasons.join(", "),
                s.rr.sent,
                t.rr_sender_egress,
                t.health.flow_map_full,
                t.health.drop_map_full,
                t.health.drop_events_lost
            );
        }
        let _ = writeln!(md);
    }
    let c: Vec<&Sample> = r
        .samples
        .iter()
        .filter(|s| s.arm == Arm::C || s.arm == Arm::D)
        .collect();
    if !c.is_empty() {
        let _ = writeln!(
            md,
            "### The other tools (arms C and D)\n\n\
             bpftrace's netif_receive_skb count of the UDP-64 flow in the server's namespace \
             vs the kernel's (as above); tcpdump's packets captured and dropped by the kernel, \
             all devices together.\n"
        );
        columns(
            md,
            &[
                "path",
                "rep",
                "arm",
                "kernel UDP-64 in @server",
                "bpftrace UDP rx @server",
                "tcpdump captured",
                "tcpdump dropped",
            ],
        );
        for s in c {
            let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "–".into());
            let _ = writeln!(
                md,
                "| {} | {} | {:?} | {} | {} | {} | {} |",
                s.path.name(),
                s.rep,
                s.arm,
                s.kernel_udp_in,
                opt(s.bpftrace_udp_rx),
                opt(s.tcpdump.map(|t| t.captured)),
                opt(s.tcpdump.map(|t| t.dropped_by_kernel)),
            );
        }
        let _ = writeln!(md);
    }
    if !r.churn.is_empty() || r.active().is_some() {
        let _ = writeln!(
            md,
            "### Many flows (tracer alone)\n\n\
             Paced UDP from distinct source ports to one sink. Kernel packets: the sum of \
             rx + tx packet counter deltas (`ip -s -j link`) over every device of the lab, \
             i.e. sent × traced hops when nothing is lost; tracer: the packets of all its \
             total flow rows; missing = kernel − tracer − flow_map_full.\n"
        );
        columns(
            md,
            &[
                "load",
                "path",
                "flows × packets",
                "map size",
                "seconds",
                "sent",
                "sink received",
                "hops",
                "kernel packets",
                "tracer counted",
                "flow_map_full",
                "missing",
                "tracer CPU %",
                "peak RSS MiB",
                "TC ns/run",
            ],
        );
        let rows = r
            .churn
            .iter()
            .map(|c| ("churn", c))
            .chain(r.active_runs.iter().map(|a| ("active", a)));
        for (name, f) in rows {
            let _ = writeln!(
                md,
                "| {name} | {} | {} × {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                f.path.name(),
                f.flows,
                f.packets_per_flow,
                f.map_size,
                num(f.seconds),
                f.sent,
                f.sink_received,
                f.hops,
                f.kernel_packets,
                f.tracer_packets,
                f.health.flow_map_full,
                f.missing(),
                num(f.cost.cpu_pct),
                num(f.cost.peak_rss_kib as f64 / 1024.0),
                f.cost
                    .ns_per_run(|n| n.starts_with("tc_"))
                    .map_or_else(|| "–".into(), num)
            );
        }
        let _ = writeln!(md);
    }
}

/// Fills in the summaries of `r` from its samples.
pub fn with_summaries(mut r: Results) -> Results {
    r.summaries = summarize_samples(&r.samples);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{
        arms::ToolCost,
        counts::Health,
        loads::{RrResult, TcpResult, UdpResult},
        results::{Meta, Settings, TracerCounts},
        sys::ProgStat,
    };

    fn sample(rep: usize, path: PathKind, arm: Arm, gbps: f64, pps: f64, tc_ns: u64) -> Sample {
        let cost = (arm != Arm::A).then(|| ToolCost {
            window_s: 10.0,
            cpu_s: 0.1,
            cpu_system_s: 0.05,
            cpu_pct: 1.0,
            cpu_exact: true,
            cpu_total_s: 0.3,
            peak_rss_kib: 20 * 1024,
            stats_s: 10.0,
            runs_outside_stats: 0,
            progs: vec![ProgStat {
                id: 1,
                name: match arm {
                    Arm::B => "tc_ingress",
                    Arm::F => "tc_empty",
                    _ => "netif_receive_s",
                }
                .into(),
                run_time_ns: tc_ns * 1000,
                run_cnt: 1000,
            }],
        });
        Sample {
            rep,
            path,
            arm,
            tcp: TcpResult {
                gbps,
                retransmits: 0,
            },
            udp: UdpResult {
                sent: 1000,
                received: 900,
                seconds: 1.0,
                pps,
            },
            rr: RrResult {
                sent: 100,
                served: 100,
                lost: 0,
                p50_us: 30.0,
                p99_us: 60.0,
            },
            kernel_udp_in: 950,
            server_counters: Default::default(),
            cost,
            tracer: (arm == Arm::B).then_some(TracerCounts {
                udp_sender_egress: 1001,
                udp_receiver_ingress: 950,
                rr_sender_egress: 100,
                drops: 51,
                server_drops: vec![("SOCKET_RCVBUFF".into(), 50)],
                health: Health::default(),
            }),
            bpftrace_udp_rx: (arm == Arm::C).then_some(950),
            tcpdump: None,
            other_cpu_pct: 1.0,
        }
    }

    fn flow_load(missing: u64, full: u64) -> FlowLoad {
        FlowLoad {
            path: PathKind::Veth,
            flows: 100,
            packets_per_flow: 3,
            map_size: 16,
            seconds: 1.0,
            sent: 300,
            sink_received: 300,
            hops: 2,
            kernel_packets: 600,
            tracer_packets: 600 - full - missing,
            health: Health {
                flow_map_full: full,
                ..Health::default()
            },
            cost: ToolCost {
                cpu_pct: 1.5,
                peak_rss_kib: 30 * 1024,
                ..ToolCost::default()
            },
        }
    }

    #[test]
    fn results_from_before_several_active_runs_keep_their_one_run() {
        let r = results(9.9);
        let mut v = serde_json::to_value(&r).unwrap();
        let o = v.as_object_mut().unwrap();
        assert!(!o.contains_key("active"), "the old field is not written");
        let runs = o.remove("active_runs").unwrap();
        o.insert("active".into(), runs[0].clone());
        let old: Results = serde_json::from_value(v).unwrap();
        assert!(old.active_runs.is_empty());
        let new = old.upgrade();
        assert_eq!(new.active_runs.len(), 1);
        assert!(new.active().is_some());
        let again = serde_json::to_value(&new).unwrap();
        assert_eq!(again["active_runs"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn the_active_load_is_judged_on_its_median_run_and_every_run_counts() {
        let run = |cpu: f64, missing: u64, rss_mib: u64| {
            let mut f = flow_load(missing, 0);
            f.cost.cpu_pct = cpu;
            f.cost.cpu_exact = true;
            f.cost.peak_rss_kib = rss_mib * 1024;
            f
        };
        let runs = vec![run(2.3, 0, 50), run(1.9, 0, 70), run(2.0, 0, 55)];
        assert_eq!(FlowLoad::median_by_cpu(&runs).unwrap().cost.cpu_pct, 2.0);
        assert_eq!(
            FlowLoad::median_by_cpu(&runs[..2]).unwrap().cost.cpu_pct,
            1.9
        );
        let mut r = results(9.9);
        r.active_runs = runs;
        let f = floors(&r);
        let cpu = f.iter().find(|f| f.what.starts_with("tracer CPU")).unwrap();
        assert_eq!(
            cpu.measured,
            "2.00% of one core (median of 3 runs: 2.30, 1.90, 2.00)"
        );
        assert!(cpu.met);
        // A run measured in clock ticks says so.
        let mut ticks = r.clone();
        ticks.active_runs[1].cost.cpu_exact = false;
        let f2 = floors(&ticks);
        let cpu2 = f2
            .iter()
            .find(|f| f.what.starts_with("tracer CPU"))
            .unwrap();
        assert!(
            cpu2.measured.ends_with(", some in 10 ms clock ticks"),
            "{}",
            cpu2.measured
        );
        // Memory by the highest run, not the median one.
        let rss = f
            .iter()
            .find(|f| f.what.starts_with("tracer peak RSS"))
            .unwrap();
        assert!(!rss.met, "{}", rss.measured);
        // A run that lost packets fails the counts, though the median one did not.
        r.active_runs[0] = run(2.3, 5, 50);
        let exact = floors(&r);
        let exact = exact
            .iter()
            .find(|f| f.what.starts_with("counts exact"))
            .unwrap();
        assert!(!exact.met, "{}", exact.measured);
    }

    fn results(b_gbps: f64) -> Results {
        let mut samples = Vec::new();
        for rep in 1..=3 {
            samples.push(sample(rep, PathKind::Veth, Arm::A, 10.0, 100e3, 0));
            samples.push(sample(rep, PathKind::Veth, Arm::B, b_gbps, 99e3, 50));
            samples.push(sample(rep, PathKind::Veth, Arm::C, 9.0, 80e3, 120));
        }
        with_summaries(Results {
            meta: Meta {
                date: "2026-01-01".into(),
                kernel: "6.18".into(),
                cpu: "AMD EPYC".into(),
                cpus: 2,
                memory_gib: 24.0,
                machine: "virtual machine".into(),
                os: "Debian 12".into(),
                commit: "abc1234".into(),
                tools: vec!["iperf 3.12".into()],
                loadavg_before: "0.10".into(),
                loadavg_after: "0.20".into(),
                minutes: 12.0,
            },
            settings: Settings {
                reps: 3,
                seconds: 3.0,
                stats_seconds: 2.0,
                requests: 100,
                paths: vec![PathKind::Veth],
                arms: vec![Arm::A, Arm::B, Arm::C],
                alternate: true,
                churn_flows: 100,
                churn_packets: 3,
                churn_seconds: 1.0,
                churn_map_size: 16,
                active_flows: 100,
                active_seconds: 1,
                firewall_packets: 100,
            },
            samples,
            summaries: vec![],
            churn: vec![flow_load(0, 40)],
            active_one: None,
            active_runs: vec![flow_load(0, 0)],
            firewall: vec![],
        })
    }

    #[test]
    fn per_packet_model_predicts_the_ratio() {
        // 2 hops x 400 ns = 0.8 µs on top of 4 µs (250 kpps): 4 / 4.8.
        let m = per_packet_model(PathKind::Veth, 400.0, 250e3, 0.93);
        assert!(m.contains("predicts B/A ≈ 83%"), "{m}");
        // 4 µs x (1 / 0.93 - 1) / 2 = 150.5 ns.
        assert!(m.contains("needs <= 151 ns per run"), "{m}");
    }

    #[test]
    fn says_when_statistics_were_on_during_the_loads() {
        let mut r = results(9.9);
        let md = markdown(&r);
        assert!(
            md.contains("BPF statistics were off during those loads"),
            "{md}"
        );
        assert!(!md.contains("counted outside the statistics passes"));
        r.samples[1].cost.as_mut().unwrap().runs_outside_stats = 42;
        let md = markdown(&r);
        assert!(
            md.contains("42 program runs were counted outside the statistics passes"),
            "{md}"
        );
        r.settings.stats_seconds = 0.0;
        assert!(markdown(&r).contains("was 1 for the whole run"));
    }

    #[test]
    fn firewall_floods_render_and_judge_exactness() {
        use crate::bench::firewall::{FirewallLoad, Rule};
        let flood = |rule, dropped, drops, nf_ns: u64| FirewallLoad {
            path: PathKind::Veth,
            rule,
            sent: 1000,
            accepted: if rule == Rule::Accept { 1000 } else { 0 },
            dropped,
            drops,
            cost: ToolCost {
                progs: vec![ProgStat {
                    id: 7,
                    name: "nf_filter_in".into(),
                    run_time_ns: nf_ns * 1000,
                    run_cnt: 1000,
                }],
                ..ToolCost::default()
            },
        };
        let mut r = results(9.9);
        r.firewall = vec![
            flood(Rule::Accept, 0, 0, 140),
            flood(Rule::Drop, 1000, 1000, 150),
            flood(Rule::Accept, 0, 0, 160),
            flood(Rule::Drop, 1000, 999, 170),
        ];
        let md = markdown(&r);
        assert!(
            md.contains("| accept | 2 | 1000 | 2 of 2 | 150 [140–160] | – | – | – |"),
            "{md}"
        );
        assert!(
            md.contains("| drop | 2 | 1000 | 1 of 2 | 160 [150–170] |"),
            "{md}"
        );
        let f = floors(&r)
            .into_iter()
            .find(|f| f.what.starts_with("firewall floods"))
            .unwrap();
        assert!(!f.met);
        assert_eq!(f.measured, "3 of 4 floods exact");
        assert_eq!(
            f.note,
            "drop rule: sent 1000, accepted 0, dropped 1000, drops 999"
        );
    }

    #[test]
    fn numbers_get_sensible_precision() {
        assert_eq!(num(12345.6), "12346");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(1.2345), "1.23");
    }

    fn md_floor(fl: &[Floor], what: &str, measured: &str) -> bool {
        fl.iter()
            .any(|f| f.what == what && f.measured == measured && f.met)
    }

    #[test]
    fn all_floors_met() {
        let fl = floors(&results(9.9));
        assert!(fl.iter().all(|f| f.met), "{fl:#?}");
        // TCP, UDP, ns/run <= 80, ns/run < bpftrace, CPU, RSS, exact below, churn.
        assert_eq!(fl.len(), 8);
        assert!(md_floor(
            &fl,
            "tracer TC ns/run, veth",
            "50.0 ns [50.0–50.0]"
        ));
        let md = markdown(&results(9.9));
        assert!(
            md.contains("| TCP throughput, veth | B/A 99.0% [99.0–99.0] | >= 97% | met |"),
            "{md}"
        );
        assert!(!md.contains("Missed floors"));
        assert!(md.contains("### veth pair (veth)"));
        assert!(md.contains("9.90 [9.90–9.90] (99.0%)"), "{md}");
        assert!(
            md.contains("| B: tracer | tc_ingress | 50.0 [50.0–50.0], 100/s |"),
            "{md}"
        );
        assert!(
            md.contains("| C: bpftrace | netif_receive_s | 120 [120–120], 100/s |"),
            "{md}"
        );
    }

    /// With arm F, the ns/run floor is B less F per repetition.
    #[test]
    fn the_tc_floor_is_net_of_the_empty_program() {
        let mut r = results(9.9);
        for (rep, f_ns) in [(1, 40), (2, 45), (3, 60)] {
            r.samples
                .push(sample(rep, PathKind::Veth, Arm::F, 10.0, 100e3, f_ns));
        }
        for s in r.samples.iter_mut().filter(|s| s.arm == Arm::B) {
            let ns = [120, 130, 150][s.rep - 1];
            s.cost.as_mut().unwrap().progs[0].run_time_ns = ns * 1000;
        }
        r.settings.arms.push(Arm::F);
        let fl = floors(&r);
        let tc = fl
            .iter()
            .find(|f| f.what == "tracer TC ns/run, veth")
            .unwrap();
        // B 120, 130, 150 less F 40, 45, 60: 80, 85, 90.
        assert_eq!(
            tc.measured,
            "85.0 ns [80.0–90.0] net: B 130 less F (empty program) 45.0"
        );
        assert!(!tc.met);
        assert!(
            tc.note.starts_with("missed by 5.00 ns per run."),
            "{}",
            tc.note
        );
    }

    #[test]
    fn a_miss_says_by_how_much() {
        let md = markdown(&results(9.0));
        assert!(
            md.contains("| TCP throughput, veth | B/A 90.0% [90.0–90.0] | >= 97% | **missed** |"),
            "{md}"
        );
        assert!(
            md.contains("- **TCP throughput, veth**: missed by 7.0 points."),
            "{md}"
        );
    }

    #[test]
    fn churn_and_exactness_misses() {
        let mut r = results(9.9);
        r.churn = vec![flow_load(5, 40), flow_load(0, 0)];
        r.samples[1].tracer.as_mut().unwrap().udp_receiver_ingress = 949;
        let fl = floors(&r);
        let missed: Vec<&str> = fl
            .iter()
            .filter(|f| !f.met)
            .map(|f| f.note.as_str())
            .collect();
        assert_eq!(missed.len(), 3, "{fl:#?}");
        assert!(
            missed.iter().any(|n| n.contains("UDP-64 runs [1, 0, 0]")),
            "{missed:?}"
        );
        assert!(
            missed
                .iter()
                .any(|n| n.contains("5 packets neither counted"))
        );
        assert!(missed.iter().any(|n| n.contains("never filled")));
    }

    #[test]
    fn summaries_cover_each_arm_and_metric() {
        let r = results(9.9);
        let tcp_b = r
            .summaries
            .iter()
            .find(|s| s.arm == Arm::B && s.metric == "tcp_gbps")
            .unwrap();
        assert_eq!(tcp_b.summary.median, 9.9);
        // Arm A has no tool: no cost metrics.
        assert!(
            !r.summaries
                .iter()
                .any(|s| s.arm == Arm::A && s.metric == "cpu_pct")
        );
    }
}
