//! Reading libtest's output and printing the matrix: test × kernel, the
//! failures' output, and how long each kernel and test binary took.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Failed,
    Ignored,
    /// Started, never finished: the binary timed out, crashed, or the VM died.
    Unfinished,
}

/// What one test binary reported.
#[derive(Debug, Default)]
pub struct Binary {
    pub label: String,
    pub tests: Vec<(String, Verdict)>,
    /// Captured output of failed tests, by name.
    pub failures: BTreeMap<String, String>,
    /// Exit status; None if it never finished.
    pub rc: Option<i32>,
    pub time: Option<Duration>,
}

/// Everything one kernel produced.
#[derive(Debug, Default)]
pub struct Kernel {
    pub name: String,
    /// Package and release, for VMs.
    pub detail: String,
    pub boot: Option<Duration>,
    pub total: Duration,
    pub binaries: Vec<Binary>,
    /// Per-test wall time (binary label, test), when known.
    pub test_times: BTreeMap<(String, String), Duration>,
    /// Why the run did not complete (timeout, boot failure), in one line.
    pub error: Option<String>,
    /// Kernel trouble seen on the console, and the console's path.
    pub notes: Vec<String>,
}

impl Kernel {
    pub fn failed(&self) -> bool {
        self.error.is_some()
            || self.binaries.iter().any(|b| {
                b.rc != Some(0)
                    || b.tests
                        .iter()
                        .any(|(_, v)| matches!(v, Verdict::Failed | Verdict::Unfinished))
            })
    }
}

/// Parses libtest's default ("pretty") output of one binary.
pub fn parse_libtest(label: &str, text: &str) -> Binary {
    let mut b = Binary {
        label: label.to_string(),
        ..Default::default()
    };
    let mut in_failures = false;
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("test ")
            && let Some((name, result)) = rest.split_once(" ... ")
            && !in_failures
        {
            let verdict = match result.trim() {
                "ok" => Verdict::Ok,
                "FAILED" => Verdict::Failed,
                r if r.starts_with("ignored") => Verdict::Ignored,
                _ => Verdict::Unfinished,
            };
            b.tests.push((name.to_string(), verdict));
            continue;
        }
        if line.starts_with("test ") && line.ends_with(" ...") && !in_failures {
            // A test that started and never printed its result.
            let name = &line["test ".len()..line.len() - " ...".len()];
            b.tests.push((name.to_string(), Verdict::Unfinished));
            continue;
        }
        if line == "failures:" {
            if let Some((name, out)) = current.take() {
                b.failures.insert(name, out);
            }
            in_failures = true;
            continue;
        }
        if in_failures {
            if let Some(name) = line
                .strip_prefix("---- ")
                .and_then(|l| l.strip_suffix(" stdout ----"))
            {
                if let Some((n, out)) = current.take() {
                    b.failures.insert(n, out);
                }
                current = Some((name.to_string(), String::new()));
            } else if line.starts_with("test result:") {
                in_failures = false;
            } else if let Some((_, out)) = &mut current {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if let Some((name, out)) = current {
        b.failures.insert(name, out);
    }
    b
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 60.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{s:.1}s")
    }
}

/// The whole report: failures' output first, then the tables.
pub fn render(kernels: &[Kernel], matrix_binaries: &[String]) -> String {
    let mut out = String::new();
    for k in kernels {
        for b in &k.binaries {
            for (name, text) in &b.failures {
                let _ = writeln!(out, "\n---- [{}] {}::{} ----", k.name, b.label, name);
                out.push_str(text.trim_end());
                out.push('\n');
            }
            for (name, v) in &b.tests {
                if *v == Verdict::Unfinished {
                    let _ = writeln!(
                        out,
                        "\n---- [{}] {}::{} never finished ----",
                        k.name, b.label, name
                    );
                }
            }
            if b.rc.is_some_and(|rc| rc != 0) && b.tests.iter().all(|(_, v)| *v != Verdict::Failed)
            {
                let _ = writeln!(
                    out,
                    "\n---- [{}] {} exited with {} ----",
                    k.name,
                    b.label,
                    b.rc.unwrap_or(-1)
                );
            }
        }
    }

    // Rows: tests of the binaries every kernel runs; other binaries (the
    // host's unit tests) are summed up per kernel.
    let mut rows: Vec<(String, String)> = Vec::new();
    for k in kernels {
        for b in k
            .binaries
            .iter()
            .filter(|b| matrix_binaries.contains(&b.label))
        {
            for (t, _) in &b.tests {
                let row = (b.label.clone(), t.clone());
                if !rows.contains(&row) {
                    rows.push(row);
                }
            }
        }
    }
    rows.sort();
    let name_w = rows
        .iter()
        .map(|(b, t)| b.len() + 2 + t.len())
        .max()
        .unwrap_or(4)
        .max(24);
    let col_w = 16;
    let _ = writeln!(out, "\n{:name_w$}", "test");
    out.pop();
    for k in kernels {
        let _ = write!(out, "  {:>col_w$}", k.name);
    }
    out.push('\n');
    for (bl, t) in &rows {
        let _ = write!(out, "{:name_w$}", format!("{bl}::{t}"));
        for k in kernels {
            let cell = k
                .binaries
                .iter()
                .find(|b| &b.label == bl)
                .and_then(|b| b.tests.iter().find(|(n, _)| n == t))
                .map(|(_, v)| {
                    let word = match v {
                        Verdict::Ok => "ok",
                        Verdict::Failed => "FAILED",
                        Verdict::Ignored => "ignored",
                        Verdict::Unfinished => "UNFINISHED",
                    };
                    match k.test_times.get(&(bl.clone(), t.clone())) {
                        Some(d) if *v != Verdict::Ignored => format!("{word} {}", secs(*d)),
                        _ => word.to_string(),
                    }
                })
                .unwrap_or_else(|| "-".to_string());
            let _ = write!(out, "  {cell:>col_w$}");
        }
        out.push('\n');
    }

    let _ = writeln!(out, "\n{:name_w$}", "time");
    out.pop();
    for k in kernels {
        let _ = write!(out, "  {:>col_w$}", k.name);
    }
    out.push('\n');
    let mut time_row = |label: &str, f: &dyn Fn(&Kernel) -> Option<Duration>| {
        let _ = write!(out, "{label:name_w$}");
        for k in kernels {
            let cell = f(k).map(secs).unwrap_or_else(|| "-".into());
            let _ = write!(out, "  {cell:>col_w$}");
        }
        out.push('\n');
    };
    time_row("boot", &|k| k.boot);
    for bl in matrix_binaries {
        time_row(bl, &|k| {
            k.binaries
                .iter()
                .find(|b| &b.label == bl)
                .and_then(|b| b.time)
        });
    }
    time_row("total", &|k| Some(k.total));

    for k in kernels {
        let others: Vec<&Binary> = k
            .binaries
            .iter()
            .filter(|b| !matrix_binaries.contains(&b.label))
            .collect();
        let count = |v: Verdict| {
            others
                .iter()
                .flat_map(|b| &b.tests)
                .filter(|(_, x)| *x == v)
                .count()
        };
        let _ = write!(out, "\n[{}]", k.name);
        if !k.detail.is_empty() {
            let _ = write!(out, " {}", k.detail);
        }
        if !others.is_empty() {
            let _ = write!(
                out,
                "; other test binaries: {} ok, {} failed, {} ignored",
                count(Verdict::Ok),
                count(Verdict::Failed) + count(Verdict::Unfinished),
                count(Verdict::Ignored)
            );
        }
        out.push('\n');
        if let Some(e) = &k.error {
            let _ = writeln!(out, "  error: {e}");
        }
        for n in &k.notes {
            let _ = writeln!(out, "  {n}");
        }
        // Last, as a log's tail is what survives truncation: what failed
        // and the line that says why.
        for b in &k.binaries {
            for (name, v) in &b.tests {
                if matches!(v, Verdict::Failed | Verdict::Unfinished) {
                    let why = b.failures.get(name).map(|t| first_cause(t)).unwrap_or("");
                    let _ = writeln!(out, "  FAILED {}::{name}: {why}", b.label);
                }
            }
        }
    }
    out
}

/// The panic message of a failure's output: the line after "panicked at".
fn first_cause(text: &str) -> &str {
    let mut lines = text.lines().skip_while(|l| !l.contains("panicked at"));
    let at = lines.next().unwrap_or("");
    let what = lines.next().unwrap_or("");
    let what = what.get(..what.floor_char_boundary(300)).unwrap_or(what);
    if what.is_empty() { at } else { what }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "\
running 3 tests
test a ... ok
test b ... FAILED
test c ... ignored, needs x

failures:

---- b stdout ----

thread 'b' panicked at tracer/tests/cli.rs:1:1:
boom
note: run with `RUST_BACKTRACE=1`


failures:
    b

test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s
";

    #[test]
    fn verdicts_and_failure_output() {
        let b = parse_libtest("cli", OUT);
        assert_eq!(
            b.tests,
            [
                ("a".to_string(), Verdict::Ok),
                ("b".to_string(), Verdict::Failed),
                ("c".to_string(), Verdict::Ignored)
            ]
        );
        assert!(b.failures["b"].contains("boom"));
        assert_eq!(first_cause(&b.failures["b"]), "boom");
        assert!(!b.failures["b"].contains("failures:"));
    }

    #[test]
    fn a_test_cut_short_is_unfinished() {
        let b = parse_libtest("cli", "running 2 tests\ntest a ... ok\ntest b ... ");
        assert_eq!(b.tests[1], ("b".to_string(), Verdict::Unfinished));
    }
}
