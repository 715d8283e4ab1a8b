//! Command-line interface.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

use crate::filter::Filter;

#[derive(Debug, Parser)]
#[command(
    name = "tracer",
    version,
    about = "Per-flow counters for veth, bridge and VXLAN hops, from eBPF",
    long_about = "Attaches eBPF programs to every veth, bridge and VXLAN device of the chosen \
                  network namespaces and prints, per flow and hop, packets, bytes, fragments \
                  and the largest packet; VXLAN traffic is shown with its VNI and inner flow."
)]
pub struct Cli {
    /// Trace only this device (repeatable). Default: every veth, bridge and VXLAN device.
    #[arg(long = "iface", value_name = "NAME")]
    pub ifaces: Vec<String>,

    /// Trace in this network namespace (repeatable): a name from `ip netns`, a path such as
    /// /var/run/docker/netns/<id>, `pid:N`, or `all` (every named and Docker namespace).
    /// Default: tracer's own namespace.
    #[arg(long = "netns", value_name = "NS")]
    pub netns: Vec<String>,

    /// Also decode UDP to this destination port as VXLAN (repeatable). 4789 and the ports of
    /// VXLAN devices found are always decoded.
    #[arg(long = "vxlan-port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub vxlan_ports: Vec<u16>,

    /// Seconds between reports.
    #[arg(long, default_value = "1", value_name = "SECONDS", value_parser = seconds)]
    pub interval: Duration,

    /// Stop after this many seconds and print totals.
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    pub duration: Option<Duration>,

    /// Show only the rows and paths that match this expression, pcap-filter style on
    /// outer and inner headers: e.g. "inner udp port 53", "host 10.0.0.2", "vni 4097",
    /// "netns c1 and not reason NO_SOCKET". In the live view it is the initial filter.
    #[arg(long, value_name = "EXPR", value_parser = filter_expr)]
    pub filter: Option<Filter>,

    /// Output format. `auto`: the live view on a terminal, text lines otherwise.
    #[arg(long, value_enum, default_value_t = Output::Auto)]
    pub output: Output,

    /// In-kernel flow slots (one per flow and hop; a flow idle for a whole interval frees
    /// its slot). Packets of flows beyond it are counted as lost and shown.
    #[arg(long, default_value_t = 65536, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=(1 << 24)))]
    pub flow_map_size: u32,

    /// In-kernel entries naming the devices flows were seen on: one per device with new
    /// flows in an interval (tracer empties it at each report). A device it has no room
    /// for is counted (device_map_full) and its rows are named `?`/`if<ifindex>`.
    #[arg(long, default_value_t = 4096, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=(1 << 20)))]
    pub device_map_size: u32,

    /// Keys of each kind (flow and hop, drop, verdict, ICMP error) the run totals hold, a few
    /// hundred bytes each: a long run on a busy host sees new flows all day. Rows of keys beyond
    /// it are reported in their interval, left out of the totals, and counted (totals_full).
    #[arg(long, default_value_t = 1_000_000, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1 << 31))]
    pub totals_limit: usize,

    /// Show only drops for this reason (repeatable), e.g. NETFILTER_DROP; see --list-reasons.
    #[arg(long = "reason", value_name = "REASON")]
    pub reasons: Vec<String>,

    /// Hide drops for this reason (repeatable), e.g. NOT_SPECIFIED.
    #[arg(long = "exclude-reason", value_name = "REASON")]
    pub exclude_reasons: Vec<String>,

    /// Print the drop reasons of the running kernel, with what they mean, and exit.
    #[arg(long)]
    pub list_reasons: bool,

    /// Do not trace drops (skb:kfree_skb).
    #[arg(long)]
    pub no_drops: bool,

    /// Netfilter tables whose verdicts are counted (repeatable): filter, raw, mangle, nat,
    /// security, or all. Default: filter.
    #[arg(long = "nf-table", value_name = "TABLE")]
    pub nf_tables: Vec<String>,

    /// Say exactly which rule decided each packet matching this nft expression
    /// (e.g. "udp dport 53"), from nftables tracing in a table of tracer's own
    /// (removed on exit). Costs a netlink message per traced packet and rule.
    #[arg(long, value_name = "NFT-EXPRESSION")]
    pub explain: Option<String>,

    /// Do not count netfilter verdicts.
    #[arg(long)]
    pub no_netfilter: bool,

    /// Where neither netfilter programs (6.4) nor fexit on nf_tables (module
    /// BTF) exist, as on 5.10: count verdicts with kprobes on nf_hook_slow
    /// and nft_do_chain. Not exact: a kprobe program does not run while
    /// another one is running on the same CPU, so packets processed then
    /// are missed (measured on 5.10: 6 of 9 drops seen).
    #[arg(long)]
    pub nf_kprobes: bool,

    /// Show known-benign drops (echo replies at ping_rcv, empty queue
    /// purges) and IPv6 link-local control traffic in full, instead of one
    /// summarised `benign` row per report.
    #[arg(long)]
    pub show_benign: bool,

    /// How the TC programs are attached: tcx links (kernel >= 6.6, owned by
    /// tracer's process) or netlink filters on a clsact qdisc (older kernels).
    #[arg(long, value_enum, default_value_t = crate::collectors::flows::tc::AttachMode::Auto)]
    pub tc_attach: crate::collectors::flows::tc::AttachMode,

    /// Read each packet's device with bpf_probe_read_kernel, as kernels
    /// before 6.2 must, even where bpf_cast_to_kern_ctx makes it a plain
    /// load. For comparing the two (`cargo xtask bench` does), or if the
    /// kfunc path misbehaves on some kernel.
    #[arg(long)]
    pub no_kfuncs: bool,

    /// Kernel BTF to take struct offsets from, for kernels that do not expose
    /// /sys/kernel/btf/vmlinux (e.g. a file from BTFHub).
    #[arg(long, value_name = "PATH", default_value = crate::sys::btf::VMLINUX)]
    pub kernel_btf: PathBuf,

    /// Create this file once every program is attached (for scripts and tests).
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,

    /// Write every dropped packet of the traced namespaces to this pcapng file, with the
    /// drop's reason, place, namespace and device in its comment. `-`: standard output
    /// (reports then go to standard error).
    #[arg(long, value_name = "FILE", conflicts_with = "no_drops")]
    pub pcap_drops: Option<PathBuf>,

    /// Bytes of each dropped packet written to --pcap-drops.
    #[arg(long, default_value_t = 256, value_name = "BYTES", requires = "pcap_drops",
          value_parser = clap::value_parser!(u32).range(1..=tracer_ebpf::CAPTURE_MAX as i64))]
    pub pcap_snaplen: u32,

    /// Dropped packets written to --pcap-drops per second and CPU at most (0: no limit).
    /// Those skipped are counted in the health row and the file's statistics.
    #[arg(
        long,
        default_value_t = 1000,
        value_name = "N",
        requires = "pcap_drops"
    )]
    pub pcap_rate: u32,

    /// Serve counters as OpenMetrics at http://ADDR/metrics, e.g. 127.0.0.1:9595
    /// (port 0: a free port, printed at start).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,

    /// Also label traffic and drop metrics by flow (protocol, addresses, ports, VNI):
    /// one series per flow and hop, as many as there are flows.
    #[arg(long, requires = "metrics")]
    pub metrics_flows: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Auto,
    Table,
    Text,
    Json,
}

fn filter_expr(s: &str) -> Result<Filter, String> {
    Filter::parse(s).map_err(|e| format!("bad filter: {e}"))
}

fn seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(v > 0.0 && v.is_finite() && v <= 1e9) {
        return Err(format!("'{s}' must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, String> {
        Cli::try_parse_from(std::iter::once("tracer").chain(args.iter().copied()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert!(c.ifaces.is_empty() && c.netns.is_empty() && c.vxlan_ports.is_empty());
        assert_eq!(c.interval, Duration::from_secs(1));
        assert_eq!(c.output, Output::Auto);
        assert_eq!(c.duration, None);
    }

    #[test]
    fn repeatable_and_fractional() {
        let c = parse(&[
            "--iface",
            "a",
            "--iface",
            "b",
            "--vxlan-port",
            "8472",
            "--interval",
            "0.5",
            "--output",
            "json",
            "--netns",
            "pid:1",
        ])
        .unwrap();
        assert_eq!(c.ifaces, ["a", "b"]);
        assert_eq!(c.vxlan_ports, [8472]);
        assert_eq!(c.interval, Duration::from_millis(500));
        assert_eq!(c.output, Output::Json);
        assert_eq!(c.netns, ["pid:1"]);
    }

    #[test]
    fn bad_values_are_rejected() {
        for (args, needle) in [
            (&["--vxlan-port", "70000"][..], "70000"),
            (&["--vxlan-port", "0"][..], "0"),
            (&["--interval", "0"][..], "positive"),
            (&["--duration", "soon"][..], "not a number"),
            (&["--flow-map-size", "0"][..], "0"),
            (
                &["--filter", "udp port x"][..],
                "bad filter: column 10: 'x' is not a port",
            ),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }
}
