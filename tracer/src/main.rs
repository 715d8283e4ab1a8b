//! tracer: per-flow datapath counters for container overlay networks.

use std::process::ExitCode;

use clap::Parser as _;
use tracer::{cli, session};

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
    match session::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracer: {e:#}");
            ExitCode::FAILURE
        }
    }
}
