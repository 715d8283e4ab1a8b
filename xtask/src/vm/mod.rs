//! `cargo xtask test --kernel K`: the integration tests on Debian's kernels,
//! each booted in qemu with the host's root shared read-only over 9p, and on
//! this machine's kernel; then one report of every test on every kernel.
//!
//! - [`kernels`]: which kernels there are and the `--kernel` values;
//! - [`fetch`]: apt: the suites, qemu/busybox/kmod, each kernel into the cache;
//! - [`initramfs`]: the guest's first stage, up to switching to the host's root;
//! - [`guest`]: its second stage, which runs the tests and powers off;
//! - [`plan`]: which test binaries and tests run where, and building them;
//! - [`qemu`]: booting, following the console, the hard timeout;
//! - [`host`]: the `host` column, as plain `cargo xtask test`;
//! - [`report`]: reading libtest's output and printing the matrix.

mod fetch;
mod guest;
mod host;
mod initramfs;
mod kernels;
mod plan;
mod qemu;
mod report;

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use fetch::Kernel;
use guest::Job;
use kernels::Target;
use plan::{Executable, TestArgs};

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Where the tests run: 5.10, 6.1, 6.12 (Debian's kernels, each booted in
    /// qemu), host (this machine), or all of them. Repeatable or
    /// comma-separated. The default is what CI runs; `--kernel host` is the
    /// quick run on this machine alone.
    #[arg(
        long = "kernel",
        value_name = "K",
        value_delimiter = ',',
        default_values_t = DEFAULT_KERNELS.map(String::from)
    )]
    pub kernels: Vec<String>,
    /// Hard limit on each VM, boot included, in seconds: qemu is killed then.
    #[arg(long, value_name = "SECS", default_value_t = 2700)]
    pub vm_timeout: u64,
    /// Limit on each test binary in a VM, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1200)]
    pub vm_binary_timeout: u64,
    /// Also run what the plan keeps off a kernel to save CI time.
    #[arg(long)]
    pub full: bool,
    /// Instead of the tests, run this bash command in each VM, as root with
    /// the host's root mounted (a way to look at a kernel by hand).
    #[arg(long, value_name = "CMD")]
    pub vm_exec: Option<String>,
}

/// The matrix CI runs: this machine, Debian 12's kernel, Debian 11's, and
/// bookworm-backports' 6.12 (plan.rs says what stays off which).
pub const DEFAULT_KERNELS: [&str; 4] = ["host", "6.1", "5.10", "6.12"];

/// Runs the tests on every `--kernel`, prints the report, fails if any failed.
pub fn run(opts: &Options, args: &[String]) -> Result<()> {
    let targets = kernels::parse(&opts.kernels)?;
    let test_args = plan::split_args(args);
    // The steps that need the network or may refuse come before any test runs.
    let mut vms = Vec::new();
    for t in &targets {
        if let Target::Vm(spec) = t {
            if vms.is_empty() {
                fetch::host_tools()?;
            }
            vms.push(fetch::kernel(spec)?);
        }
    }
    let exes = if vms.is_empty() || opts.vm_exec.is_some() {
        Vec::new()
    } else {
        plan::build(&test_args.cargo)?
    };
    let mut results = Vec::new();
    for t in &targets {
        let result = match t {
            Target::Host => host::run(args)?,
            Target::Vm(spec) => {
                let kernel = vms
                    .iter()
                    .find(|k| k.spec == *spec)
                    .context("kernel fetched above")?;
                vm(kernel, opts, &exes, &test_args)?
            }
        };
        results.push(result);
    }
    let matrix: Vec<String> = if opts.vm_exec.is_some() {
        vec!["exec".into()]
    } else if exes.is_empty() {
        // Host only: its integration tests are those with a file under tests/.
        results
            .iter()
            .flat_map(|k| &k.binaries)
            .filter(|b| !b.label.contains(' '))
            .map(|b| b.label.clone())
            .collect()
    } else {
        exes.iter().map(|e| e.label.clone()).collect()
    };
    println!("{}", report::render(&results, &matrix));
    let failed: Vec<&str> = results
        .iter()
        .filter(|k| k.failed())
        .map(|k| k.name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("tests failed on {}", failed.join(", "));
    }
    Ok(())
}

/// Boots `kernel`, runs the jobs, and reads back what they left in the share.
fn vm(
    kernel: &Kernel,
    opts: &Options,
    exes: &[Executable],
    args: &TestArgs,
) -> Result<report::Kernel> {
    let name = kernel.spec.name;
    let initramfs = initramfs::build(kernel)?;
    let dir = target_dir().join("vm").join(name);
    let (share, console) = qemu::prepare_dir(&dir)?;
    let jobs = match &opts.vm_exec {
        Some(cmd) => vec![Job {
            label: "exec".into(),
            dir: PathBuf::from("/"),
            argv: vec!["bash".into(), "-c".into(), cmd.clone()],
        }],
        None => plan::jobs(name, exes, args, opts.full),
    };
    fs::write(
        share.join(initramfs::STAGE2),
        guest::script(&jobs, Duration::from_secs(opts.vm_binary_timeout)),
    )?;
    println!(
        "[{name}] booting {} ({}) under {}",
        kernel.package,
        kernel.version,
        if qemu::kvm_usable() { "KVM" } else { "TCG" }
    );
    let run = qemu::run(&qemu::Boot {
        name,
        vmlinuz: &kernel.vmlinuz(),
        initramfs: &initramfs,
        share: &share,
        console: &console,
        timeout: Duration::from_secs(opts.vm_timeout),
    })?;

    let mut k = report::Kernel {
        name: name.to_string(),
        detail: format!("{} {}", kernel.package, kernel.version),
        boot: run.boot,
        total: run.elapsed,
        ..Default::default()
    };
    for job in &jobs {
        let out = share.join("out");
        let Ok(text) = fs::read_to_string(out.join(format!("{}.log", job.label))) else {
            continue;
        };
        let mut b = report::parse_libtest(&job.label, &text);
        b.rc = fs::read_to_string(out.join(format!("{}.rc", job.label)))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        b.time = run
            .jobs
            .iter()
            .find(|(l, _)| *l == job.label)
            .map(|(_, d)| *d);
        if b.rc == Some(124) || b.rc == Some(137) {
            k.notes.push(format!(
                "{} hit the {} s limit of a test binary",
                job.label, opts.vm_binary_timeout
            ));
        }
        k.binaries.push(b);
    }
    for (j, t, d) in run.tests {
        k.test_times.insert((j, t), d);
    }
    k.error = match run.outcome {
        qemu::Outcome::TimedOut { job, test } => Some(format!(
            "killed after {} s while {}",
            opts.vm_timeout,
            match (job, test, run.boot) {
                (Some(j), Some(t), _) => format!("running {j}::{t}"),
                (Some(j), None, _) => format!("running {j}"),
                (None, _, None) => "booting".to_string(),
                (None, _, Some(_)) => "between test binaries".to_string(),
            }
        )),
        qemu::Outcome::Failed(e) => Some(e),
        qemu::Outcome::PoweredOff if run.boot.is_none() => {
            Some("the guest powered off before it was ready".into())
        }
        qemu::Outcome::PoweredOff if !share.join("status").exists() => {
            Some("the guest stopped before the tests finished".into())
        }
        qemu::Outcome::PoweredOff => None,
    };
    if run.boot.is_none() {
        println!("[{name}] the guest never got ready; the console's last lines:");
        for l in &run.tail {
            println!("[{name}]   {l}");
        }
    }
    k.notes.extend(plan::skipped(name, opts.full));
    k.notes
        .extend(run.trouble.iter().map(|t| format!("console: {t}")));
    k.notes.push(format!("console log: {}", console.display()));
    Ok(k)
}

/// The workspace's target directory, where each VM's console and results go.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap_or(Path::new("."))
                .join("target")
        })
}
