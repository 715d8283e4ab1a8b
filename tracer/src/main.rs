//! tracer: per-flow datapath counters for container overlay networks.

mod attribution;
mod bpf_sys;
mod btf;
mod cli;
mod collect;
mod devices;
mod double_buffer;
mod drops;
mod explain;
mod flows;
mod fragments;
mod icmps;
mod kallsyms;
mod loader;
mod mtu;
mod netfilter;
mod netns;
mod nf_chains;
mod nf_loader;
mod nft;
mod reasons;
mod render;
mod run;
mod tally;
mod targets;
mod tc;
mod verdicts;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            if !e.use_stderr() {
                // --help, --version
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One line: clap's first line, without the usage block that follows.
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid arguments");
            eprintln!("tracer: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    match run::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracer: {e:#}");
            ExitCode::FAILURE
        }
    }
}
