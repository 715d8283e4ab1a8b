//! One tracing session: plan, load, attach, then report every interval until stopped.

use std::{
    io::{self, IsTerminal as _},
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    runtime::Runtime,
    signal::unix::{Signal, SignalKind, signal},
};
use tracer_ebpf::{Config, DropEvent};

use crate::{
    analysis::attribution::Attributor,
    analysis::explain::{self, Explain},
    cli::{Cli, Output},
    collectors::Collector,
    collectors::drops::reasons::{ReasonFilter, Reasons, reason_hint},
    collectors::flows::tc,
    collectors::loader,
    collectors::verdicts::bands::{self, NfLinks},
    collectors::verdicts::nf_loader::NfPrograms,
    output::{Report, Sink, json::JsonSink, table::TableSink, table::Terminal, text::TextSink},
    rules::trace::TraceReader,
    sys::btf,
    sys::netns::{self, Netns},
    topology::devices,
    topology::mtu::{self, Topology},
    topology::{self, Target},
};

pub fn run(cli: Cli) -> Result<()> {
    let kernel_btf = btf::load(&cli.kernel_btf)?;
    let reasons = Reasons::from_btf(&kernel_btf)?;
    if cli.list_reasons {
        return list_reasons(&reasons);
    }
    let filter = ReasonFilter::new(&reasons, &cli.reasons, &cli.exclude_reasons)?;
    let bands = bands::bands(&cli.nf_tables)?;
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
    let (targets, topo) = plan(&cli)?;
    let findings = mtu::findings(&topo);
    let config = Config {
        offsets: btf::offsets(&kernel_btf)?,
        vxlan_ports: topology::vxlan_ports(&cli.vxlan_ports, &targets)?,
        reason_consumed: reasons.consumed,
        reason_not_dropped: reasons.not_dropped,
    };
    drop(kernel_btf);

    let mut ebpf = loader::load(&config, cli.flow_map_size)?;
    loader::load_classifier(&mut ebpf, tc::INGRESS)?;
    loader::load_classifier(&mut ebpf, tc::EGRESS)?;
    // Before anything takes maps out of `ebpf`: the netfilter programs use them.
    let nf_programs = if cli.no_netfilter {
        None
    } else {
        match NfPrograms::load(loader::OBJECT, &ebpf, &bands::program_names(&bands)) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!(
                    "tracer: netfilter verdicts unavailable ({e:#}); NETFILTER_DROP drops still \
                     show what netfilter dropped"
                );
                None
            }
        }
    };
    let mut links = tc::Links::default();
    let result = (|| {
        loader::set_traced_netns(&mut ebpf, &targets)?;
        let drop_events = loader::attach_tracepoints(&mut ebpf, &cli.kernel_btf, !cli.no_drops)?;
        let mut nf_links = nf_programs.map(|p| NfLinks::new(p, bands.clone()));
        if let Some(links) = &mut nf_links {
            links.sync(&targets)?;
        }
        let namespaces: Vec<Netns> = targets.iter().map(|t| t.netns.clone()).collect();
        explain::remove_stale(&namespaces);
        let (explain, trace_readers) = match &cli.explain {
            Some(filter) => {
                let (e, readers) = Explain::start(&namespaces, filter, config.vxlan_ports)?;
                (Some(e), readers)
            }
            None => (None, Vec::new()),
        };
        let attributor = nf_links.is_some().then(|| Attributor::new(&namespaces));
        links.attach(&mut ebpf, &targets, cli.tc_attach)?;
        announce(
            &targets,
            &config,
            links.len(),
            drop_events.is_some(),
            nf_links.as_ref().map_or(0, |l| l.len()),
        );
        if let Some(path) = &cli.ready_file {
            std::fs::write(path, b"ready\n")
                .with_context(|| format!("write ready file {}", path.display()))?;
        }
        // Sinks flush once per report: one write(2) per report, not per row.
        let out = || io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
        let sink: Box<dyn Sink> = match cli.output {
            Output::Json => Box::new(JsonSink::new(out())),
            Output::Text => Box::new(TextSink::new(out())),
            Output::Table => Box::new(TableSink::new(out(), Terminal)),
            Output::Auto if io::stdout().is_terminal() => Box::new(TableSink::new(out(), Terminal)),
            Output::Auto => Box::new(TextSink::new(out())),
        };
        for path in mtu::path_mtu_summary(&topo) {
            eprintln!("tracer: {}", path.summary());
        }
        for f in &findings {
            eprintln!("tracer: MTU problem: {}", f.finding);
        }
        let mut collector = Collector::new(&mut ebpf, &targets, reasons, filter, findings)?;
        collector.with_rules(attributor, explain);
        let inputs = Inputs {
            signals,
            drop_events,
            trace_readers,
            nf_links: nf_links.map(|l| (l, targets.clone())),
        };
        stream(&cli, &rt, inputs, &mut collector, sink)
    })();
    links.detach(&mut ebpf);
    result
}

/// The namespaces and the devices to trace in them, and their topology
/// (for the MTU arithmetic).
fn plan(cli: &Cli) -> Result<(Vec<Target>, Topology)> {
    let namespaces = netns::resolve(&cli.netns)?;
    let topo = devices::topology(&namespaces)?;
    let found = namespaces
        .into_iter()
        .zip(&topo.namespaces)
        .map(|(ns, t)| (ns, t.devices.clone()))
        .collect();
    Ok((topology::select(found, &cli.ifaces)?, topo))
}

fn list_reasons(reasons: &Reasons) -> Result<()> {
    for (value, name) in reasons.all() {
        match reason_hint(name) {
            Some(h) => println!("{value:>4} {name:<32} {h}"),
            None => println!("{value:>4} {name}"),
        }
    }
    Ok(())
}

fn announce(targets: &[Target], config: &Config, links: usize, drops: bool, nf_links: usize) {
    let per_ns: Vec<String> = targets
        .iter()
        .filter(|t| !t.traced.is_empty())
        .map(|t| {
            let names: Vec<&str> = t.traced.iter().map(|d| d.name.as_str()).collect();
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
        "tracer: {links} TC hooks on {}; VXLAN ports {}; drops {}; {nf_links} netfilter observers",
        per_ns.join(", "),
        ports.join(","),
        if drops {
            "traced in these namespaces"
        } else {
            "not traced (--no-drops)"
        }
    );
}

struct Signals {
    int: Signal,
    term: Signal,
}

/// What the main loop waits on besides its timers.
struct Inputs {
    signals: Signals,
    /// First drops of new keys, from the kfree_skb program.
    drop_events: Option<RingBuf<MapData>>,
    /// nftables trace events (`--explain`), one reader per namespace.
    trace_readers: Vec<TraceReader>,
    /// The netfilter observers, kept in step with the namespaces' tables.
    nf_links: Option<(NfLinks, Vec<Target>)>,
}

/// Reads every pending event of the ring buffer.
fn read_events(ring: &mut RingBuf<MapData>) -> Vec<DropEvent> {
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() >= size_of::<DropEvent>() {
            // SAFETY: the program wrote a whole DropEvent, which is Pod.
            events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DropEvent>()) });
        }
    }
    events
}

fn stream(
    cli: &Cli,
    rt: &Runtime,
    inputs: Inputs,
    collector: &mut Collector,
    mut sink: Box<dyn Sink>,
) -> Result<()> {
    let Inputs {
        mut signals,
        drop_events,
        trace_readers,
        mut nf_links,
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
                    let events = guard.get_inner_mut().read();
                    guard.clear_ready();
                    if tx.send((ns, events)).is_err() {
                        break;
                    }
                }
            });
        }
        let mut events = match drop_events {
            // SAFETY: the ring buffer owns its fd and outlives the registration.
            Some(ring) => Some(
                unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow!("poll ring buffer: {e}"))?,
            ),
            None => None,
        };
        let start = Instant::now();
        let mut last = start;
        let mut ticker = tokio::time::interval_at((start + cli.interval).into(), cli.interval);
        let stop_at = cli.duration.map(|d| start + d);
        let until_stop = async {
            match stop_at {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(until_stop);
        loop {
            let new_drops = async {
                match events.as_mut() {
                    Some(fd) => fd.readable_mut().await.map(Some),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ready = new_drops => {
                    if let Some(mut guard) = ready? {
                        let batch = read_events(guard.get_inner_mut());
                        guard.clear_ready();
                        let report = collector.first_drops(&batch);
                        if !report.drops.is_empty() && !emit(&mut *sink, &report)? {
                            return Ok(());
                        }
                    }
                }
                _ = ticker.tick() => {
                    if let Some((links, targets)) = &mut nf_links {
                        links.sync(targets)?;
                    }
                    collector.collect()?;
                    let now = Instant::now();
                    let report = collector.interval_report(now - last);
                    last = now;
                    if !emit(&mut *sink, &report)? {
                        return Ok(());
                    }
                }
                Some((ns, events)) = traces.recv() => {
                    collector.explain_events(ns, &events?);
                }
                _ = signals.int.recv() => break,
                _ = signals.term.recv() => break,
                _ = &mut until_stop => break,
            }
        }
        // Trace events already read but not yet handed over.
        tokio::task::yield_now().await;
        while let Ok((ns, events)) = traces.try_recv() {
            collector.explain_events(ns, &events?);
        }
        collector.collect()?;
        let now = Instant::now();
        let report = collector.interval_report(now - last);
        if emit(&mut *sink, &report)? {
            emit(&mut *sink, &collector.total_report(now - start))?;
        }
        Ok(())
    })
}

/// Writes a report; false when the reader went away (a closed pipe ends tracer quietly).
fn emit(sink: &mut dyn Sink, report: &Report) -> Result<bool> {
    match sink.report(report) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("write output"),
    }
}
