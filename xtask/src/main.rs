//! `cargo xtask <command>`: setup, the demo, the tests, the benchmark.

mod bench;
mod demo;
mod setup;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: packages, rust-src, bpf-linker; mount tracefs.
    Setup,
    /// Build a VXLAN lab, send known traffic across it and show what tracer sees.
    Demo,
    /// Set up, then run every test (arguments go to `cargo test`) on this
    /// machine and on Debian's kernels in VMs, with a report per kernel.
    Test {
        #[command(flatten)]
        vm: vm::Options,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then measure tracer's overhead against no tracer, bpftrace and
    /// tcpdump on veth, bridge and VXLAN paths; writes bench/RESULTS.md.
    Bench(bench::Args),
    /// The bench's arm F: hold an empty TC program on NETNS/DEVICE... until
    /// stopped (started by the bench itself).
    #[command(hide = true)]
    BenchEmptyTc { devices: Vec<String> },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Setup => setup::setup(),
        Cmd::Demo => setup::setup().and_then(|()| demo::demo()),
        Cmd::Test { vm, args } => setup::setup().and_then(|()| vm::run(&vm, &args)),
        Cmd::Bench(args) => setup::setup().and_then(|()| bench::bench(args)),
        Cmd::BenchEmptyTc { devices } => bench::hold_empty_tc(&devices),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
