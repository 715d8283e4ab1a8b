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
            // One line: clap's first line, without the usage block that follows,
            // and the arguments it lists when it ends in a colon ("the following
            // required arguments were not provided:").
            let msg = e.to_string();
            let mut lines = msg.lines();
            let mut line = lines.next().unwrap_or("invalid arguments").to_string();
            if line.ends_with(':') {
                let listed: Vec<&str> = lines
                    .take_while(|l| l.starts_with("  "))
                    .map(str::trim)
                    .collect();
                line = format!("{} {}", line, listed.join(", "));
            }
            eprintln!("tracer: {}", line.trim_start_matches("error: "));
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
