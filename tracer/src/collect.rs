//! Reading what the kernel counted, naming it, and keeping interval and run totals.

use std::{collections::HashMap, time::Duration};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
};
use tracer_ebpf::{DIR_INGRESS, DeviceInfo, FlowKey, FlowStats, counter};

use crate::{
    bpf_sys::Barrier,
    double_buffer::DoubleBuffer,
    flows::{Counts, FlowTable},
    render::{FlowRow, Health, Report, Scope},
    targets::Target,
};

/// Names the devices that kernel keys point at.
struct Namer {
    /// `struct net_device` address -> device, filled by the TC programs.
    devices: BpfHashMap<MapData, u64, DeviceInfo>,
    /// Netns inode -> (netns name, ifindex -> device name).
    names: HashMap<u64, (String, HashMap<u32, String>)>,
    /// Device address -> (netns name, device name), from `devices`.
    cache: HashMap<u64, (String, String)>,
}

impl Namer {
    /// Names the device at kernel address `dev`.
    fn device(&mut self, dev: u64, ifindex: u32) -> (String, String) {
        if let Some(n) = self.cache.get(&dev) {
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
        self.cache.insert(dev, name.clone());
        name
    }

    /// Named rows, in a stable order: by namespace, device, direction, flow.
    fn rows<'a>(&mut self, flows: impl Iterator<Item = (&'a FlowKey, &'a Counts)>) -> Vec<FlowRow> {
        let mut rows: Vec<FlowRow> = flows
            .map(|(key, counts)| {
                let (netns, iface) = self.device(key.dev, key.ifindex);
                FlowRow {
                    netns,
                    iface,
                    dir: if key.dir == DIR_INGRESS {
                        "ingress"
                    } else {
                        "egress"
                    },
                    id: key.id,
                    counts: *counts,
                }
            })
            .collect();
        rows.sort_by(|a, b| {
            (&a.netns, &a.iface, a.dir, &a.id).cmp(&(&b.netns, &b.iface, b.dir, &b.id))
        });
        rows
    }
}

/// Reads the kernel's counters and keeps interval and run totals.
pub struct Collector {
    flows: DoubleBuffer,
    counters: PerCpuArray<MapData, u64>,
    barrier: Barrier,
    table: FlowTable,
    namer: Namer,
    health_total: Health,
    health_interval: Health,
}

impl Collector {
    pub fn new(ebpf: &mut Ebpf, targets: &[Target]) -> Result<Self> {
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
            barrier: Barrier::new().context("create BPF barrier map")?,
            table: FlowTable::default(),
            namer: Namer {
                devices,
                names,
                cache: HashMap::new(),
            },
            health_total: Health::default(),
            health_interval: Health::default(),
        })
    }

    /// Moves everything the kernel counted since the last call into the tables.
    pub fn collect(&mut self) -> Result<()> {
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

    pub fn interval_report(&mut self, elapsed: Duration) -> Report {
        let flows = self.table.take_interval();
        Report {
            scope: Scope::Interval,
            elapsed,
            flows: self.namer.rows(flows.iter()),
            health: self.health_interval,
        }
    }

    pub fn total_report(&mut self, elapsed: Duration) -> Report {
        Report {
            scope: Scope::Total,
            elapsed,
            flows: self.namer.rows(self.table.total().iter()),
            health: self.health_total,
        }
    }
}
