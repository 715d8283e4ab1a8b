//! The `host` column: `cargo test --workspace` on this machine, as plain
//! `cargo xtask test` runs it, with its output shown and read back per binary.

use std::{
    io::{BufRead as _, BufReader},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::report::{self, parse_libtest};

pub fn run(args: &[String]) -> Result<report::Kernel> {
    let start = Instant::now();
    // One pipe for both streams keeps cargo's "Running ..." lines (stderr)
    // in order with the binaries' output (stdout).
    let (reader, writer) = std::io::pipe().context("create a pipe")?;
    let mut child = Command::new(env!("CARGO"))
        .args(["test", "--workspace"])
        .args(args)
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .spawn()
        .context("run cargo test")?;
    let mut sections: Vec<(String, String)> = Vec::new();
    for line in BufReader::new(reader).lines() {
        let line = line?;
        println!("{line}");
        if let Some(label) = section_label(&line) {
            let mut unique = label.clone();
            let mut n = 2;
            while sections.iter().any(|(l, _)| *l == unique) {
                unique = format!("{label} {n}");
                n += 1;
            }
            sections.push((unique, String::new()));
        } else if let Some((_, text)) = sections.last_mut() {
            text.push_str(&line);
            text.push('\n');
        }
    }
    let status = child.wait()?;
    let mut k = report::Kernel {
        name: "host".into(),
        detail: uname_r(),
        total: start.elapsed(),
        ..Default::default()
    };
    for (label, text) in &sections {
        let mut b = parse_libtest(label, text);
        b.time = finished_in(text);
        b.rc = Some(if b.failures.is_empty() { 0 } else { 1 });
        k.binaries.push(b);
    }
    if !status.success() && k.binaries.iter().all(|b| b.failures.is_empty()) {
        k.error = Some(format!("cargo test failed ({status}) outside any test"));
    }
    Ok(k)
}

/// "     Running tests/cli.rs (target/debug/deps/cli-0123)" -> "cli";
/// "     Running unittests src/main.rs (target/debug/deps/tracer-0123)" -> "tracer (unit)";
/// "   Doc-tests tracer_ebpf" -> "tracer_ebpf (doc)".
fn section_label(line: &str) -> Option<String> {
    let line = line.trim_start();
    if let Some(krate) = line.strip_prefix("Doc-tests ") {
        return Some(format!("{} (doc)", krate.trim()));
    }
    let rest = line.strip_prefix("Running ")?;
    let (what, exe) = rest.split_once(" (")?;
    if let Some(src) = what.strip_prefix("tests/") {
        return Some(src.trim_end_matches(".rs").to_string());
    }
    let file = exe.trim_end_matches(')').rsplit('/').next()?;
    let krate = file.rsplit_once('-').map_or(file, |(k, _)| k);
    Some(format!("{krate} (unit)"))
}

/// libtest's "test result: ... finished in 23.04s".
fn finished_in(text: &str) -> Option<Duration> {
    let line = text.lines().rev().find(|l| l.starts_with("test result:"))?;
    let s = line
        .rsplit("finished in ")
        .next()?
        .trim()
        .trim_end_matches('s');
    s.parse::<f64>().ok().map(Duration::from_secs_f64)
}

fn uname_r() -> String {
    Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        let l = |s| section_label(s).unwrap();
        assert_eq!(
            l("     Running tests/cli.rs (target/debug/deps/cli-428a)"),
            "cli"
        );
        assert_eq!(
            l("     Running unittests src/main.rs (target/debug/deps/tracer-2d96)"),
            "tracer (unit)"
        );
        assert_eq!(l("   Doc-tests tracer_ebpf"), "tracer_ebpf (doc)");
        assert_eq!(section_label("test a ... ok"), None);
        assert_eq!(
            finished_in("test result: ok. 1 passed; finished in 2.52s\n"),
            Some(Duration::from_secs_f64(2.52))
        );
    }
}
