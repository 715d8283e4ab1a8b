//! One tracing session: plan, load, attach, then report every interval until stopped.

use std::{
    fs::File,
    io::{self, IsTerminal as _, Write},
    os::fd::{AsFd as _, AsRawFd, OwnedFd, RawFd},
    path::Path,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::Ebpf;
use tokio::{
    io::unix::AsyncFd,
    net::TcpListener,
    runtime::Runtime,
    signal::unix::{Signal, SignalKind, signal},
};
use tracer_ebpf::Config;

use crate::{
    analysis::{Analysis, attribution::Attributor, explain::Explain},
    cli::{Cli, Output},
    collectors::{
        self, Collectors, Setup,
        drops::reasons::{NO_REASONS, Reasons, reason_hint},
        loader::{self, TracedNetns},
    },
    output::{
        Report, Scope, Sink,
        json::JsonSink,
        live::{Events, LiveSink},
        metrics::{MetricsSink, server},
        pcap::PcapSink,
        text::TextSink,
    },
    rules::trace::TraceReader,
    sys::{bpf::stats_enabled, btf, kernel::Kernel, netns::Netns},
    topology::{
        self, Target,
        links::Links,
        mtu::{self, Topology},
        names::Names,
        watch::{POLL, Watcher},
    },
};

pub fn run(cli: Cli) -> Result<()> {
    let mut kernel = Kernel::read(&cli.kernel_btf)?;
    if cli.list_reasons {
        return list_reasons(Reasons::from_btf(kernel.btf()).as_ref());
    }
    // Every option is checked before anything touches the kernel.
    let mut registered = collectors::registry(&cli, &kernel)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("tracer must run as root: it loads eBPF programs and enters network namespaces");
    }
    // Handle SIGINT/SIGTERM from the start, so that one arriving while
    // programs are being attached still ends in an orderly detach.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let signals = {
        let _ctx = rt.enter();
        Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        }
    };
    let exports = Exports::open(&cli)?;
    let watcher = Watcher::start(&cli.netns, &cli.ifaces)?;
    let (targets, topo) = (watcher.targets.clone(), watcher.topo.clone());
    let (offsets, missing_fields) = btf::offsets(kernel.btf());
    let mut config = Config {
        offsets,
        vxlan_ports: topology::vxlan_ports(&cli.vxlan_ports, &targets)?,
        ..Config::default()
    };
    collectors::configure(&mut registered, &kernel, &mut config);

    // Everything read from the types is in the configuration now; freeing
    // them before aya parses the object and its own copy of the BTF lowers
    // the start-up peak by a third.
    kernel.release_types();
    let mut ebpf = loader::load(
        &config,
        loader::MapSizes {
            flows: cli.flow_map_size,
            devices: cli.device_map_size,
        },
        &kernel,
    )?;
    loader::set_traced_netns(&mut ebpf, &targets)?;
    let setup = Setup {
        cli: &cli,
        targets: &targets,
        kernel: &kernel,
        missing_fields: &missing_fields,
    };
    let (mut collectors, notices) = Collectors::start(registered, &mut ebpf, &setup)?;
    let result = (|| {
        let traced = TracedNetns::take(&mut ebpf, &targets)?;
        let links = links_of(&targets, &topo);
        let (analysis, trace_readers) =
            analysis(&cli, &targets, &topo, links.clone(), &config, &collectors)?;
        // Once nothing can fail any more: an error stays the one line on stderr.
        for n in &notices {
            eprintln!("tracer: {}: {}", n.collector, n.text);
        }
        announce(&targets, &links, &config, &collectors);
        let (main, events) = sink(&cli, links, exports.pcap_to_stdout)?;
        let mut outputs = Outputs {
            main,
            exports: Vec::new(),
            filter: cli.filter.clone(),
            show_benign: cli.show_benign,
        };
        if let Some(pcap) = exports.pcap {
            outputs.exports.push(Box::new(pcap));
        }
        if let Some(listener) = exports.metrics {
            let published = Arc::new(Mutex::new(String::new()));
            outputs.exports.push(Box::new(MetricsSink::new(
                published.clone(),
                cli.metrics_flows,
                program_fds(&ebpf, &collectors)?,
                mtu::findings(&topo),
            )));
            let _ctx = rt.enter();
            let listener = TcpListener::from_std(listener)?;
            eprintln!(
                "tracer: metrics at http://{}/metrics",
                listener.local_addr()?
            );
            if !stats_enabled() {
                eprintln!(
                    "tracer: metrics: kernel.bpf_stats_enabled is 0: BPF programs' run time \
                     is counted only while it is 1 (two clock reads per run) or a process \
                     holds BPF_ENABLE_STATS"
                );
            }
            server::spawn(listener, published);
        }
        if let Some(path) = &cli.ready_file {
            std::fs::write(path, b"ready\n")
                .with_context(|| format!("write ready file {}", path.display()))?;
        }
        let inputs = Inputs {
            signals,
            trace_readers,
            names: Names::new(&targets),
            watcher,
            traced,
            analysis,
        };
        stream(
            &cli,
            &rt,
            inputs,
            (&mut ebpf, &mut collectors),
            (outputs, events),
        )
    })();
    collectors.stop(&mut ebpf);
    result
}

/// How the devices of `topo` connect, those of `targets` traced.
fn links_of(targets: &[Target], topo: &Topology) -> Links {
    Links::new(topo, |ns, dev| {
        targets
            .iter()
            .any(|t| t.netns.name == ns && t.traced.iter().any(|d| d.name == dev))
    })
}

/// The analysis of the rows, and the nftables trace readers of `--explain`.
fn analysis(
    cli: &Cli,
    targets: &[Target],
    topo: &Topology,
    links: Links,
    config: &Config,
    collectors: &Collectors,
) -> Result<(Analysis, Vec<TraceReader>)> {
    let namespaces: Vec<Netns> = targets.iter().map(|t| t.netns.clone()).collect();
    let namespaces = &namespaces[..];
    crate::analysis::explain::remove_stale(namespaces);
    let (explain, readers) = match &cli.explain {
        Some(filter) => {
            let (e, readers) = Explain::start(namespaces, filter, config.vxlan_ports)?;
            (Some(e), readers)
        }
        None => (None, Vec::new()),
    };
    let attributor = collectors
        .active("verdicts")
        .then(|| Attributor::new(namespaces));
    for path in mtu::path_mtu_summary(topo) {
        eprintln!("tracer: {}", path.summary());
    }
    let findings = mtu::findings(topo);
    say_findings(&findings, &[]);
    Ok((
        Analysis::new(findings, links, attributor, explain).with_nat(namespaces),
        readers,
    ))
}

/// Where reports go, and for the live view, where its quit key arrives:
/// standard output, or standard error when the pcapng stream has standard
/// output. Sinks flush once per report: one write(2) per report, not per row.
fn sink(cli: &Cli, links: Links, to_stderr: bool) -> Result<(Out, Option<Events>)> {
    let out = || -> io::BufWriter<Box<dyn Write>> {
        let w: Box<dyn Write> = if to_stderr {
            Box::new(io::stderr())
        } else {
            let stdout = io::stdout().lock();
            widen_pipe(stdout.as_fd());
            Box::new(stdout)
        };
        io::BufWriter::with_capacity(1 << 16, w)
    };
    let lines = |s: Box<dyn Sink>| (Out::Lines(s), None);
    Ok(match cli.output {
        Output::Json => lines(Box::new(JsonSink::new(out()))),
        Output::Text => lines(Box::new(TextSink::new(out()))),
        Output::Table if to_stderr => {
            bail!("--output table needs standard output, which --pcap-drops - takes")
        }
        Output::Auto if to_stderr || !io::stdout().is_terminal() => {
            lines(Box::new(TextSink::new(out())))
        }
        Output::Table | Output::Auto => {
            let (live, events) = LiveSink::start(links, cli.filter.clone())
                .context("start the live view (is stdout a terminal?)")?;
            (Out::Live(Box::new(live)), Some(events))
        }
    })
}

/// A report is megabytes of lines at ten thousand flows: into a pipe of
/// the default 64 KiB the writer blocks and wakes dozens of times a report,
/// each a switch to the reader and back. A pipe of 1 MiB (the default
/// `fs.pipe-max-size`) takes a sixteenth of them. Best effort: anything but
/// a pipe, or a refusal, keeps what there is.
fn widen_pipe(fd: std::os::fd::BorrowedFd) {
    use std::os::unix::fs::FileTypeExt as _;
    const PIPE: libc::c_int = 1 << 20;
    let is_pipe = fd
        .try_clone_to_owned()
        .and_then(|f| File::from(f).metadata())
        .is_ok_and(|m| m.file_type().is_fifo());
    if !is_pipe {
        return;
    }
    let fd = fd.as_raw_fd();
    // SAFETY: `fd` is open (borrowed for this call); F_GETPIPE_SZ and
    // F_SETPIPE_SZ take an int and touch no memory, and a failure (over
    // the limit, EBUSY) leaves the pipe as it was.
    unsafe {
        if libc::fcntl(fd, libc::F_GETPIPE_SZ) < PIPE {
            libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE);
        }
    }
}

/// Lines for pipes and scripts, or the live view.
enum Out {
    Lines(Box<dyn Sink>),
    Live(Box<LiveSink>),
}

impl Sink for Out {
    fn report(&mut self, report: &Report) -> io::Result<()> {
        match self {
            Out::Lines(s) => s.report(report),
            Out::Live(l) => l.report(report),
        }
    }
}

/// Every place reports go: lines or the live view, `--pcap-drops` and `--metrics`.
struct Outputs {
    main: Out,
    exports: Vec<Box<dyn Sink>>,
    /// `--filter`: what lines and exports show. The live view applies it
    /// itself (the user may change it there).
    filter: Option<crate::filter::Filter>,
    /// `--show-benign`: else lines and exports show benign noise as one row.
    show_benign: bool,
}

impl Outputs {
    /// Writes `report` everywhere; false when a reader went away (a closed
    /// pipe ends tracer quietly).
    fn emit(&mut self, mut report: Report) -> Result<bool> {
        // Only new drops go to the lines or view at once, not bare captures.
        let to_main = report.scope != Scope::First || !report.drops.is_empty();
        if to_main && matches!(self.main, Out::Live(_)) && !write(&mut self.main, &report)? {
            return Ok(false);
        }
        if let Some(f) = &self.filter {
            f.retain(&mut report);
        }
        // Exports count everything; the lines summarise the noise.
        for sink in &mut self.exports {
            if !write(&mut **sink, &report)? {
                return Ok(false);
            }
        }
        if !to_main || !matches!(self.main, Out::Lines(_)) {
            return Ok(true);
        }
        if !self.show_benign {
            crate::analysis::benign::summarise(&mut report);
            // A first drop that is noise waits for the interval's summary.
            if report.scope == Scope::First {
                report.benign = None;
                if report.drops.is_empty() {
                    return Ok(true);
                }
            }
        }
        write(&mut self.main, &report)
    }
}

/// `--pcap-drops` and `--metrics`, opened before anything touches the
/// kernel: a path that cannot be written or a port taken is one line.
struct Exports {
    pcap: Option<PcapSink<File>>,
    pcap_to_stdout: bool,
    metrics: Option<std::net::TcpListener>,
}

impl Exports {
    fn open(cli: &Cli) -> Result<Self> {
        let pcap_to_stdout = cli.pcap_drops.as_deref() == Some(Path::new("-"));
        let pcap = match &cli.pcap_drops {
            None => None,
            Some(path) => {
                // Unbuffered: each block is one write(2), so a kill leaves whole blocks.
                let file = if pcap_to_stdout {
                    File::from(io::stdout().as_fd().try_clone_to_owned()?)
                } else {
                    File::create(path)
                        .with_context(|| format!("--pcap-drops: create {}", path.display()))?
                };
                Some(PcapSink::new(file, cli.pcap_snaplen).context("--pcap-drops: write")?)
            }
        };
        let metrics = match cli.metrics {
            None => None,
            Some(addr) => {
                let l = std::net::TcpListener::bind(addr)
                    .with_context(|| format!("--metrics: listen on {addr}"))?;
                l.set_nonblocking(true)?;
                Some(l)
            }
        };
        Ok(Exports {
            pcap,
            pcap_to_stdout,
            metrics,
        })
    }
}

/// Every loaded program of the run, by name, for its run-time statistics.
fn program_fds(ebpf: &Ebpf, collectors: &Collectors) -> Result<Vec<(String, OwnedFd)>> {
    let mut fds = Vec::new();
    for (name, prog) in ebpf.programs() {
        if let Ok(fd) = prog.fd() {
            fds.push((name.to_string(), fd.as_fd().try_clone_to_owned()?));
        }
    }
    for (name, fd) in collectors.programs() {
        fds.push((name, fd.try_clone_to_owned()?));
    }
    fds.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(fds)
}

/// One line per MTU problem not said before. A veth whose peer is not
/// traced is no problem: a note in the paths that cross it.
fn say_findings(findings: &[mtu::Finding], said: &[mtu::Finding]) {
    for f in findings.iter().filter(|f| worth_a_line(f)) {
        if !said.contains(f) {
            eprintln!("tracer: MTU problem: {}", f.finding);
        }
    }
}

fn worth_a_line(f: &mtu::Finding) -> bool {
    f.kind != mtu::FindingKind::VethPeerUntraced
}

/// How long an MTU problem that appears while tracing must last before it
/// is said: Docker creates a veth at 1500 and lowers it to the overlay's
/// MTU a moment later, which is no problem to wake anyone for.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// The MTU problems said on stderr while tracing, and those waiting to
/// outlive [`SETTLE`].
struct FindingLines {
    said: Vec<mtu::Finding>,
    pending: Vec<(Instant, mtu::Finding)>,
}

impl FindingLines {
    /// After the start, which said `findings` at once.
    fn new(findings: &[mtu::Finding]) -> Self {
        FindingLines {
            said: findings.to_vec(),
            pending: Vec::new(),
        }
    }

    /// The topology changed: these are its problems now.
    fn update(&mut self, findings: &[mtu::Finding], now: Instant) {
        self.said.retain(|f| findings.contains(f));
        self.pending.retain(|(_, f)| findings.contains(f));
        for f in findings.iter().filter(|f| worth_a_line(f)) {
            if !self.said.contains(f) && !self.pending.iter().any(|(_, p)| p == f) {
                self.pending.push((now, f.clone()));
            }
        }
    }

    /// Says the problems that lasted [`SETTLE`].
    fn say_settled(&mut self, now: Instant) {
        let (settled, waiting) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(since, _)| now.duration_since(*since) >= SETTLE);
        self.pending = waiting;
        let settled: Vec<mtu::Finding> = settled.into_iter().map(|(_, f)| f).collect();
        say_findings(&settled, &[]);
        self.said.extend(settled);
    }
}

fn list_reasons(reasons: Option<&Reasons>) -> Result<()> {
    let Some(reasons) = reasons else {
        println!("{NO_REASONS}");
        return Ok(());
    };
    for (value, name) in reasons.all() {
        match reason_hint(name) {
            Some(h) => println!("{value:>4} {name:<32} {h}"),
            None => println!("{value:>4} {name}"),
        }
    }
    Ok(())
}

fn announce(targets: &[Target], links: &Links, config: &Config, collectors: &Collectors) {
    let per_ns: Vec<String> = targets
        .iter()
        .filter(|t| !t.traced.is_empty())
        .map(|t| {
            let names: Vec<String> = t
                .traced
                .iter()
                .map(|d| links.tied(&t.netns.name, &d.name))
                .collect();
            format!("{} [{}]", t.netns.name, names.join(" "))
        })
        .collect();
    let ports: Vec<String> = config
        .vxlan_ports
        .iter()
        .filter(|p| **p != 0)
        .map(|p| p.to_string())
        .collect();
    eprintln!(
        "tracer: {} TC hooks on {}; VXLAN ports {}; drops {}; {} netfilter observers",
        collectors.attached("flows"),
        per_ns.join(", "),
        ports.join(","),
        if collectors.active("drops") {
            "traced in these namespaces"
        } else {
            "not traced (--no-drops)"
        },
        collectors.attached("verdicts"),
    );
}

struct Signals {
    int: Signal,
    term: Signal,
}

/// What the main loop works with besides the collectors.
struct Inputs {
    signals: Signals,
    /// nftables trace events (`--explain`), one reader per namespace.
    trace_readers: Vec<TraceReader>,
    names: Names,
    /// What is traced, following the host.
    watcher: Watcher,
    traced: TracedNetns,
    analysis: Analysis,
}

/// A collector's event descriptor, polled while the collector owns it.
struct Polled(RawFd);

impl AsRawFd for Polled {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

fn stream(
    cli: &Cli,
    rt: &Runtime,
    inputs: Inputs,
    (ebpf, collectors): (&mut Ebpf, &mut Collectors),
    (mut outputs, mut events): (Outputs, Option<Events>),
) -> Result<()> {
    let Inputs {
        mut signals,
        trace_readers,
        mut names,
        mut watcher,
        mut traced,
        mut analysis,
    } = inputs;
    rt.block_on(async {
        // Each trace reader forwards what it reads, tagged with its namespace.
        let (traces_tx, mut traces) = tokio::sync::mpsc::unbounded_channel();
        for (ns, reader) in trace_readers.into_iter().enumerate() {
            // SAFETY: the reader owns its socket and lives as long as the registration.
            let mut fd = unsafe { AsyncFd::register(reader) }
                .map_err(|e| anyhow!("poll trace reader: {e}"))?;
            let tx = traces_tx.clone();
            tokio::spawn(async move {
                while let Ok(mut guard) = fd.readable_mut().await {
                    let reader = guard.get_inner_mut();
                    let events = reader.read();
                    let lost = reader.overruns();
                    guard.clear_ready();
                    if tx.send((ns, events, lost)).is_err() {
                        break;
                    }
                }
            });
        }
        // The collectors' event descriptors stay open as long as `collectors`,
        // which outlives this loop.
        let mut event_fds: Vec<(usize, AsyncFd<Polled>)> = collectors
            .event_fds()
            .into_iter()
            // SAFETY: the collectors own the descriptors and outlive this loop,
            // the only place they are registered.
            .map(|(i, fd)| Ok((i, unsafe { AsyncFd::register(Polled(fd.as_raw_fd())) }?)))
            .collect::<io::Result<_>>()
            .map_err(|e| anyhow!("poll collector events: {e}"))?;
        let start = Instant::now();
        let mut last = start;
        let mut ticker = tokio::time::interval_at((start + cli.interval).into(), cli.interval);
        let mut watch = tokio::time::interval_at((start + POLL).into(), POLL);
        let mut finding_lines = FindingLines::new(analysis.findings());
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop_at = cli.duration.map(|d| start + d);
        let until_stop = async {
            match stop_at {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(until_stop);
        loop {
            let events_ready = async {
                if event_fds.is_empty() {
                    return std::future::pending().await;
                }
                let waits = event_fds
                    .iter_mut()
                    .map(|(i, fd)| Box::pin(async move { (*i, fd.readable_mut().await) }));
                futures_select_all(waits).await
            };
            tokio::select! {
                (index, ready) = events_ready => {
                    let mut guard = ready?;
                    let mut report = Report { scope: Scope::First, ..Report::default() };
                    collectors.events(index, &mut names, &mut report);
                    guard.clear_ready();
                    let any = !report.drops.is_empty() || !report.captures.is_empty();
                    if any && !outputs.emit(report)? {
                        return Ok(());
                    }
                }
                _ = watch.tick() => {
                    finding_lines.say_settled(Instant::now());
                    if let Some(said) = watcher.poll()? {
                        let targets = &watcher.targets;
                        collectors.sync(ebpf, targets)?;
                        // Once attached: a script that waits for the line may send.
                        for line in said {
                            eprintln!("{line}");
                        }
                        traced.sync(targets)?;
                        names.update(targets);
                        let links = links_of(targets, &watcher.topo);
                        let findings = mtu::findings(&watcher.topo);
                        finding_lines.update(&findings, Instant::now());
                        analysis.set_topology(findings, links.clone(), &watcher.namespaces());
                        if let Out::Live(l) = &mut outputs.main {
                            l.set_links(links);
                        }
                    }
                }
                _ = ticker.tick() => {
                    collectors.sync(ebpf, &watcher.targets)?;
                    names.update(&watcher.targets);
                    let now = Instant::now();
                    let report = report(collectors, &mut names, &mut analysis, Scope::Interval, now - last)?;
                    last = now;
                    if !outputs.emit(report)? {
                        return Ok(());
                    }
                }
                Some((ns, events, lost)) = traces.recv() => {
                    analysis.explain_events(ns, &events?, lost);
                }
                Some(ev) = async {
                    match &mut events {
                        Some(e) => e.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Out::Live(l) = &mut outputs.main && l.input(ev).context("draw the live view")? {
                        break;
                    }
                }
                _ = signals.int.recv() => break,
                _ = signals.term.recv() => break,
                _ = &mut until_stop => break,
            }
        }
        // Trace events already read but not yet handed over.
        tokio::task::yield_now().await;
        while let Ok((ns, events, lost)) = traces.try_recv() {
            analysis.explain_events(ns, &events?, lost);
        }
        let now = Instant::now();
        let interval = report(collectors, &mut names, &mut analysis, Scope::Interval, now - last)?;
        // Events still in the rings: a drop's capture is submitted before it
        // is counted, so every drop just drained has its capture read here.
        let mut late = Report { scope: Scope::First, ..Report::default() };
        collectors.all_events(&mut names, &mut late);
        if outputs.emit(late)? && outputs.emit(interval)? {
            let total = report(collectors, &mut names, &mut analysis, Scope::Total, now - start)?;
            outputs.emit(total)?;
        }
        Ok(())
    })
}

/// Drains the collectors (for an interval) and builds the report of `scope`.
fn report(
    collectors: &mut Collectors,
    names: &mut Names,
    analysis: &mut Analysis,
    scope: Scope,
    elapsed: std::time::Duration,
) -> Result<Report> {
    if scope == Scope::Interval {
        collectors.drain()?;
    }
    let mut report = Report {
        scope,
        elapsed,
        ..Report::default()
    };
    collectors.report(scope, names, &mut report);
    report.netns_inodes = names.inodes();
    analysis.complete(&mut report);
    Ok(report)
}

/// The first of `futures` to finish.
async fn futures_select_all<F: std::future::Future + Unpin>(
    futures: impl Iterator<Item = F>,
) -> F::Output {
    let mut futures: Vec<F> = futures.collect();
    std::future::poll_fn(move |cx| {
        for f in futures.iter_mut() {
            if let std::task::Poll::Ready(out) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(out);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Writes a report; false when the reader went away.
fn write(sink: &mut dyn Sink, report: &Report) -> Result<bool> {
    match sink.report(report) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("write output"),
    }
}
