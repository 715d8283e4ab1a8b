//! One tracing session: plan, load, attach, then report every interval until stopped.

use std::{
    collections::HashMap,
    io::{self, IsTerminal as _},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
};
use tokio::signal::unix::{SignalKind, signal};
use tracer_ebpf::{Config, DIR_INGRESS, DeviceInfo, FlowKey, FlowStats, counter};

use crate::{
    bpf_sys::Barrier,
    btf,
    cli::{Cli, Output},
    devices,
    double_buffer::DoubleBuffer,
    flows::{Counts, FlowTable},
    loader, netns,
    render::{
        FlowRow, Health, Report, Scope, Sink, json::JsonSink, table::TableSink, table::Terminal,
        text::TextSink,
    },
    targets::{self, Target},
    tc,
};

pub fn run(cli: Cli) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("tracer must run as root: it loads eBPF programs and enters network namespaces");
    }
    let namespaces = netns::resolve(&cli.netns)?;
    let mut found = Vec::new();
    for ns in namespaces {
        let devs = netns::run_in(&ns.path, devices::list)?
            .with_context(|| format!("list devices in {}", ns.name))?;
        found.push((ns, devs));
    }
    let targets = targets::select(found, &cli.ifaces)?;
    let config = Config {
        offsets: btf::offsets(&btf::load_kernel()?)?,
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
        stream(&cli, &mut collector, sink)
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

/// Reads the kernel's counters and names what they count.
struct Collector {
    flows: DoubleBuffer,
    counters: PerCpuArray<MapData, u64>,
    /// `struct net_device` address -> device, filled by the TC programs.
    devices: BpfHashMap<MapData, u64, DeviceInfo>,
    barrier: Barrier,
    table: FlowTable,
    /// Netns inode -> (netns name, ifindex -> device name).
    names: HashMap<u64, (String, HashMap<u32, String>)>,
    /// Device address -> (netns name, device name), from `devices`.
    dev_names: HashMap<u64, (String, String)>,
    health_total: Health,
    health_interval: Health,
}

impl Collector {
    fn new(ebpf: &mut Ebpf, targets: &[Target]) -> Result<Self> {
        let flows = DoubleBuffer::take(ebpf, "FLOW_GENERATION", ["FLOWS_0", "FLOWS_1"])?;
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("eBPF object has no map {name}"))
        };
        let counters = PerCpuArray::try_from(take("COUNTERS")?)?;
        let devices = BpfHashMap::try_from(take("DEVICES")?)?;
        let names = targets
            .iter()
            .map(|t| {
                let devs = t
                    .devices
                    .iter()
                    .map(|d| (d.ifindex, d.name.clone()))
                    .collect();
                (t.netns.inode, (t.netns.name.clone(), devs))
            })
            .collect();
        Ok(Self {
            flows,
            counters,
            devices,
            dev_names: HashMap::new(),
            barrier: Barrier::new().context("create BPF barrier map")?,
            table: FlowTable::default(),
            names,
            health_total: Health::default(),
            health_interval: Health::default(),
        })
    }

    /// Moves everything the kernel counted since the last call into the tables.
    fn collect(&mut self) -> Result<()> {
        let table = &mut self.table;
        self.flows
            .drain::<FlowKey, FlowStats>(&self.barrier, |key, values| {
                table.add(key, Counts::from_percpu(values));
            })?;
        let full: u64 = self
            .counters
            .get(&counter::FLOW_MAP_FULL, 0)
            .context("read COUNTERS")?
            .iter()
            .sum();
        self.health_interval.flow_map_full = full - self.health_total.flow_map_full;
        self.health_total.flow_map_full = full;
        Ok(())
    }

    /// Names the device at kernel address `dev`.
    fn device_name(&mut self, dev: u64, ifindex: u32) -> (String, String) {
        if let Some(n) = self.dev_names.get(&dev) {
            return n.clone();
        }
        let Ok(info) = self.devices.get(&dev, 0) else {
            return ("?".to_string(), format!("if{ifindex}"));
        };
        let inode = info.netns_inode as u64;
        let name = match self.names.get(&inode) {
            Some((ns, devs)) => (
                ns.clone(),
                devs.get(&info.ifindex)
                    .cloned()
                    .unwrap_or_else(|| format!("if{}", info.ifindex)),
            ),
            None => (inode.to_string(), format!("if{}", info.ifindex)),
        };
        self.dev_names.insert(dev, name.clone());
        name
    }

    fn row(&mut self, key: &FlowKey, counts: Counts) -> FlowRow {
        let (netns, iface) = self.device_name(key.dev, key.ifindex);
        FlowRow {
            netns,
            iface,
            dir: if key.dir == DIR_INGRESS {
                "ingress"
            } else {
                "egress"
            },
            id: key.id,
            counts,
        }
    }

    fn interval_report(&mut self, elapsed: Duration) -> Report {
        let flows = self.table.take_interval();
        Report {
            scope: Scope::Interval,
            elapsed,
            flows: flows.iter().map(|(k, c)| self.row(k, *c)).collect(),
            health: self.health_interval,
        }
    }

    fn total_report(&mut self, elapsed: Duration) -> Report {
        let total: Vec<(FlowKey, Counts)> =
            self.table.total().iter().map(|(k, c)| (*k, *c)).collect();
        Report {
            scope: Scope::Total,
            elapsed,
            flows: total.iter().map(|(k, c)| self.row(k, *c)).collect(),
            health: self.health_total,
        }
    }
}

fn stream(cli: &Cli, collector: &mut Collector, mut sink: Box<dyn Sink>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
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
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
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
