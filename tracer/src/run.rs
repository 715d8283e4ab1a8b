//! One tracing session: plan, load, attach, then report every interval until stopped.

use std::{
    io::{self, IsTerminal as _},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use tokio::{
    runtime::Runtime,
    signal::unix::{Signal, SignalKind, signal},
};
use tracer_ebpf::Config;

use crate::{
    btf,
    cli::{Cli, Output},
    collect::Collector,
    devices, loader, netns,
    render::{Report, Sink, json::JsonSink, table::TableSink, table::Terminal, text::TextSink},
    targets::{self, Target},
    tc,
};

pub fn run(cli: Cli) -> Result<()> {
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
    let namespaces = netns::resolve(&cli.netns)?;
    let mut found = Vec::new();
    for ns in namespaces {
        let devs = netns::run_in(&ns.path, devices::list)?
            .with_context(|| format!("list devices in {}", ns.name))?;
        found.push((ns, devs));
    }
    let targets = targets::select(found, &cli.ifaces)?;
    let config = Config {
        offsets: btf::offsets(&btf::load(&cli.kernel_btf)?)?,
        vxlan_ports: targets::vxlan_ports(&cli.vxlan_ports, &targets)?,
    };

    let mut ebpf = loader::load(&config, cli.flow_map_size)?;
    loader::load_classifier(&mut ebpf, tc::INGRESS)?;
    loader::load_classifier(&mut ebpf, tc::EGRESS)?;
    let mut links = tc::Links::default();
    let attached = links.attach(&mut ebpf, &targets);
    let result = attached.and_then(|()| {
        announce(&targets, &config, links.len());
        if let Some(path) = &cli.ready_file {
            std::fs::write(path, b"ready\n")
                .with_context(|| format!("write ready file {}", path.display()))?;
        }
        let sink: Box<dyn Sink> = match cli.output {
            Output::Json => Box::new(JsonSink::new(io::stdout().lock())),
            Output::Text => Box::new(TextSink::new(io::stdout().lock())),
            Output::Table => Box::new(TableSink::new(io::stdout().lock(), Terminal)),
            Output::Auto if io::stdout().is_terminal() => {
                Box::new(TableSink::new(io::stdout().lock(), Terminal))
            }
            Output::Auto => Box::new(TextSink::new(io::stdout().lock())),
        };
        let mut collector = Collector::new(&mut ebpf, &targets)?;
        stream(&cli, &rt, signals, &mut collector, sink)
    });
    links.detach(&mut ebpf);
    result
}

fn announce(targets: &[Target], config: &Config, links: usize) {
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
        "tracer: {links} TC hooks on {}; VXLAN ports {}",
        per_ns.join(", "),
        ports.join(",")
    );
}

struct Signals {
    int: Signal,
    term: Signal,
}

fn stream(
    cli: &Cli,
    rt: &Runtime,
    mut signals: Signals,
    collector: &mut Collector,
    mut sink: Box<dyn Sink>,
) -> Result<()> {
    rt.block_on(async {
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
            tokio::select! {
                _ = ticker.tick() => {
                    collector.collect()?;
                    let now = Instant::now();
                    let report = collector.interval_report(now - last);
                    last = now;
                    if !emit(&mut *sink, &report)? {
                        return Ok(());
                    }
                }
                _ = signals.int.recv() => break,
                _ = signals.term.recv() => break,
                _ = &mut until_stop => break,
            }
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
