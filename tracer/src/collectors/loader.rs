//! Loading the eBPF object with this run's configuration.

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::HashMap,
    programs::{BtfTracePoint, ProgramError, SchedClassifier},
};
use tracer_ebpf::{Config, KFUNC_CAST_TO_KERN_CTX};

use crate::{collectors::take_map, sys::kernel::Kernel, topology::Target};

/// The eBPF programs, compiled by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// Entries of the maps whose size the command line sets.
pub struct MapSizes {
    /// Flow slots (`--flow-map-size`).
    pub flows: u32,
    /// Devices seen with new flows in one interval (`--device-map-size`).
    pub devices: u32,
}

pub fn load(config: &Config, sizes: MapSizes, kernel: &Kernel) -> Result<Ebpf> {
    let object = with_kfuncs(
        OBJECT,
        kernel.cast_to_kern_ctx.filter(|_| config.kern_ctx != 0),
    )?;
    let mut loader = EbpfLoader::new();
    loader.override_global("CONFIG", config, true);
    for map in [
        "FLOW_INDEX",
        "FLOW_KEYS",
        "FLOW_STATS_0",
        "FLOW_STATS_1",
        "FLOW_FREE",
    ] {
        loader.map_max_entries(map, sizes.flows);
    }
    loader.map_max_entries("DEVICES", sizes.devices);
    // A page in the object: the ring's memory is taken only when capture is on.
    if config.capture_snaplen != 0 {
        loader.map_max_entries(
            "CAPTURE_EVENTS",
            crate::collectors::drops::capture::RING_BYTES,
        );
    }
    loader.load(&object).context("load eBPF object (maps)")
}

const BPF_CALL: u8 = 0x85;
const BPF_PSEUDO_KFUNC_CALL: u8 = 2;
const BPF_FUNC_GET_SMP_PROCESSOR_ID: i32 = 8;

/// `object` with each placeholder call ([`KFUNC_CAST_TO_KERN_CTX`]) made a
/// call of kfunc `id` (aya does not resolve kfuncs), or without `id` a call
/// of a helper every kernel has, in code the verifier then finds dead.
fn with_kfuncs(object: &[u8], id: Option<u32>) -> Result<Vec<u8>> {
    let mut placeholder = [0u8; 8];
    placeholder[0] = BPF_CALL;
    placeholder[4..].copy_from_slice(&KFUNC_CAST_TO_KERN_CTX.to_le_bytes());
    let (regs, imm) = match id {
        Some(id) => (BPF_PSEUDO_KFUNC_CALL << 4, id as i32),
        None => (0, BPF_FUNC_GET_SMP_PROCESSOR_ID),
    };
    let mut object = object.to_vec();
    let mut found = 0;
    // Instructions are 8-byte aligned in their section, and sections in the object.
    for insn in object.chunks_exact_mut(8) {
        if insn == placeholder {
            insn[1] = regs;
            insn[4..].copy_from_slice(&imm.to_le_bytes());
            found += 1;
        }
    }
    if found == 0 {
        bail!("eBPF object has no bpf_cast_to_kern_ctx placeholder (built differently?)");
    }
    Ok(object)
}

/// Loads the TC program `name` into the kernel.
pub fn load_classifier(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("eBPF object has no program {name}"))?
        .try_into()?;
    prog.load().map_err(|e| explain(name, e))
}

/// One line for a program the kernel refused, with the verifier's error.
pub fn explain(name: &str, e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => refused(name, &io_error, &verifier_log.to_string()),
        e => anyhow!("load eBPF program {name}: {e}"),
    }
}

/// One line for a program the kernel refused with `error`: the verifier's
/// error, and where its whole log was saved (the error alone rarely says
/// why: the registers' states on the way there do).
pub fn refused(name: &str, error: &std::io::Error, log: &str) -> anyhow::Error {
    let saved = save_log(name, log)
        .map(|p| format!("; full log: {}", p.display()))
        .unwrap_or_default();
    anyhow!(
        "kernel refused eBPF program {name}: {error} (verifier: {}{saved})",
        verifier_error(log)
    )
}

/// Writes `log` to a new file in the temporary directory, named after the
/// program and this process; created exclusively, so that nothing already
/// there (a link someone left in /tmp) is written through.
fn save_log(name: &str, log: &str) -> Option<std::path::PathBuf> {
    use std::io::Write as _;
    if log.trim().is_empty() {
        return None;
    }
    let path =
        std::env::temp_dir().join(format!("tracer-verifier-{name}-{}.log", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .ok()?;
    f.write_all(log.as_bytes()).ok()?;
    Some(path)
}

/// The verifier's error in `log`, with the instruction it was at. The log
/// ends with statistics; the error is in the lines just before them, after
/// the last instruction the verifier printed.
pub fn verifier_error(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    let statistics = |l: &str| {
        [
            "processed ",
            "verification time",
            "stack depth",
            "max_states_per_insn",
        ]
        .iter()
        .any(|s| l.starts_with(s))
    };
    let Some(end) = lines.iter().rposition(|l| !statistics(l)) else {
        return "no verifier log".to_string();
    };
    // `123: (71) r1 = *(u8 *)(r2 +150)`: an instruction as the verifier prints it.
    let instruction = |l: &str| {
        l.split_once(": (")
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    // ` R0_w=map_value(...) R1=...`: the registers after an instruction
    // (older verifiers print them on a line of their own).
    let registers = |l: &str| {
        let l = l.trim_start();
        l.strip_prefix('R')
            .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()) && r.contains('='))
    };
    match lines[..=end].iter().rposition(|l| instruction(l)) {
        Some(at) if at < end => {
            let error: Vec<&str> = lines[at + 1..=end]
                .iter()
                .copied()
                .filter(|l| !registers(l))
                .collect();
            format!("{} at insn {}", error.join("; "), lines[at])
        }
        _ => lines[end].to_string(),
    }
}

/// Tells the tracepoint programs, which see the whole host, which namespaces to count.
pub fn set_traced_netns(ebpf: &mut Ebpf, targets: &[Target]) -> Result<()> {
    let mut traced: HashMap<_, u32, u8> = HashMap::try_from(
        ebpf.map_mut("TRACED_NETNS")
            .ok_or_else(|| anyhow!("eBPF object has no map TRACED_NETNS"))?,
    )?;
    for t in targets {
        traced.insert(t.netns.inode as u32, 1, 0)?;
    }
    Ok(())
}

/// The `TRACED_NETNS` map, taken out of the object once the programs are
/// loaded, kept in step with the traced namespaces.
pub struct TracedNetns {
    map: HashMap<aya::maps::MapData, u32, u8>,
    set: Vec<u32>,
}

impl TracedNetns {
    pub fn take(ebpf: &mut Ebpf, targets: &[Target]) -> Result<Self> {
        Ok(TracedNetns {
            map: take_map(ebpf, "TRACED_NETNS", HashMap::try_from)?,
            set: targets.iter().map(|t| t.netns.inode as u32).collect(),
        })
    }

    /// Counts drops and errors in `targets`' namespaces from now on, and no
    /// longer in those that left.
    pub fn sync(&mut self, targets: &[Target]) -> Result<()> {
        let now: Vec<u32> = targets.iter().map(|t| t.netns.inode as u32).collect();
        for gone in self.set.iter().filter(|i| !now.contains(i)) {
            let _ = self.map.remove(gone);
        }
        for new in now.iter().filter(|i| !self.set.contains(i)) {
            self.map.insert(new, 1, 0)?;
        }
        self.set = now;
        Ok(())
    }
}

/// Loads BTF tracepoint program `program` for tracepoint `tracepoint` and attaches it.
pub fn attach_tracepoint(
    ebpf: &mut Ebpf,
    btf: &Btf,
    program: &str,
    tracepoint: &str,
) -> Result<()> {
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| anyhow!("eBPF object has no program {program}"))?
        .try_into()?;
    prog.load(tracepoint, btf)
        .map_err(|e| explain(program, e))?;
    prog.attach()
        .map_err(|e| anyhow!("attach to tracepoint {tracepoint}: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::{OBJECT, refused, verifier_error, with_kfuncs};

    #[test]
    fn placeholder_calls_become_the_kfunc_or_a_helper() {
        let placeholder = [0x85, 0, 0, 0, 0x01, 0x00, 0xce, 0x7a];
        let other = [0xb7, 0x01, 0, 0, 0x01, 0x00, 0xce, 0x7a];
        let object = [other, placeholder, other, placeholder].concat();
        let kfunc = with_kfuncs(&object, Some(0x1234)).unwrap();
        assert_eq!(kfunc[..8], other);
        assert_eq!(kfunc[8..16], [0x85, 0x20, 0, 0, 0x34, 0x12, 0, 0]);
        assert_eq!(kfunc[16..24], other);
        assert_eq!(kfunc[24..], kfunc[8..16]);
        let helper = with_kfuncs(&object, None).unwrap();
        assert_eq!(helper[8..16], [0x85, 0, 0, 0, 8, 0, 0, 0]);
        assert!(with_kfuncs(&[other, other].concat(), None).is_err());
        // The real object: its TC programs carry the placeholder.
        assert!(with_kfuncs(OBJECT, None).is_ok());
    }

    #[test]
    fn a_refused_program_says_where_its_whole_log_is() {
        let name = "test_refused_prog";
        let log = "0: (b7) r0 = 0\n1: (61) r1 = *(u32 *)(r2 +0)\nR2 invalid mem access 'scalar'\nprocessed 2 insns\n";
        let e = refused(name, &std::io::Error::from_raw_os_error(libc::EACCES), log).to_string();
        let path =
            std::env::temp_dir().join(format!("tracer-verifier-{name}-{}.log", std::process::id()));
        let saved = std::fs::read_to_string(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(saved.unwrap(), log);
        assert!(
            e.contains("R2 invalid mem access 'scalar' at insn 1:"),
            "{e}"
        );
        assert!(
            e.ends_with(&format!("; full log: {})", path.display())),
            "{e}"
        );
        // An empty log is not saved.
        assert!(
            !refused(name, &std::io::Error::from_raw_os_error(libc::EINVAL), "")
                .to_string()
                .contains("full log")
        );
    }

    #[test]
    fn verifier_error_names_the_error_and_its_instruction() {
        let log = "func#0 @0\n\
                   0: R1=ctx() R10=fp0\n\
                   11: (bf) r4 = r2\n\
                   12: (71) r1 = *(u8 *)(r4 +150)\n\
                   invalid access to map value, value_size=128 off=150 size=1\n\
                   R4 max value is outside of the allowed memory range\n\
                   processed 123 insns (limit 1000000) max_states_per_insn 0 total_states 10\n";
        assert_eq!(
            verifier_error(log),
            "invalid access to map value, value_size=128 off=150 size=1; R4 max value is \
             outside of the allowed memory range at insn 12: (71) r1 = *(u8 *)(r4 +150)"
        );
        // 5.10 prints the registers after the instruction on a line of their own.
        let log = "12: (79) r2 = *(u64 *)(r0 +16)\n \
                   R0_w=map_value(id=0,off=0,ks=4,vs=104,umax_value=1030) R1=inv(id=0)\n\
                   invalid access to map value, value_size=104 off=1030 size=8\n\
                   processed 12 insns (limit 1000000) max_states_per_insn 0\n";
        assert_eq!(
            verifier_error(log),
            "invalid access to map value, value_size=104 off=1030 size=8 at insn \
             12: (79) r2 = *(u64 *)(r0 +16)"
        );
        assert_eq!(verifier_error(""), "no verifier log");
        assert_eq!(
            verifier_error("unknown func bpf_foo#200\n"),
            "unknown func bpf_foo#200"
        );
    }

    fn words(insns: &[aya_obj::generated::bpf_insn]) -> Vec<u64> {
        // SAFETY: a bpf_insn is 8 plain bytes.
        insns
            .iter()
            .map(|i| unsafe { std::mem::transmute_copy::<_, u64>(i) })
            .collect()
    }

    /// The eBPF target has no fast `memset`/`memmove`: the compiler's own,
    /// linked into a program as a BPF function when it calls one, write one
    /// byte per loop turn, hundreds of instructions per packet for a flow
    /// key. The programs zero and copy their structs word by word
    /// (`maps::zero`, `maps::copy`); this keeps a `..Default::default()` on
    /// a per-packet path from bringing them back.
    #[test]
    fn no_program_calls_a_byte_wise_memset_or_memmove() {
        let mut obj = aya_obj::Object::parse(OBJECT).expect("parse the eBPF object");
        let slow: Vec<(String, Vec<u64>)> = obj
            .functions
            .values()
            .filter(|f| ["memset", "memmove", "memcpy"].contains(&f.name.as_str()))
            .map(|f| (f.name.clone(), words(&f.instructions)))
            .collect();
        assert!(
            !slow.is_empty(),
            "the object no longer has compiler memset/memmove"
        );
        let text: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
        let maps: Vec<(String, aya_obj::Map)> = obj
            .maps
            .iter()
            .map(|(n, m)| (n.clone(), m.clone()))
            .collect();
        obj.relocate_maps(maps.iter().map(|(n, m)| (n.as_str(), 0, m)), &text)
            .expect("relocate maps");
        obj.relocate_calls(&text).expect("relocate calls");
        let mut checked = 0;
        for (name, prog) in &obj.programs {
            // After call relocation a program holds every function it calls.
            let linked = words(&obj.functions[&prog.function_key()].instructions);
            for (f, body) in &slow {
                assert!(
                    !linked.windows(body.len()).any(|w| w == body.as_slice()),
                    "{name} calls the byte-wise {f}"
                );
            }
            checked += 1;
        }
        assert!(checked >= 4, "only {checked} programs");
    }
}
