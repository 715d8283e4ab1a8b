//! Naming kernel code addresses (drop locations) as `function+0xoffset`.

use std::collections::HashMap;

/// Text symbols of the kernel, read from /proc/kallsyms on first use.
#[derive(Default)]
pub struct Symbolizer {
    /// Sorted by address; empty if not loaded (or unreadable).
    symbols: Option<Vec<(u64, String)>>,
    cache: HashMap<u64, String>,
}

impl Symbolizer {
    pub fn name(&mut self, addr: u64) -> String {
        if let Some(n) = self.cache.get(&addr) {
            return n.clone();
        }
        let symbols = self.symbols.get_or_insert_with(|| {
            std::fs::read_to_string("/proc/kallsyms")
                .map(|s| parse(&s))
                .unwrap_or_default()
        });
        let name = resolve(symbols, addr);
        self.cache.insert(addr, name.clone());
        name
    }
}

/// Text symbols (`t`/`T`) with a real address, sorted.
fn parse(kallsyms: &str) -> Vec<(u64, String)> {
    let mut v: Vec<(u64, String)> = kallsyms
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let addr = u64::from_str_radix(it.next()?, 16).ok()?;
            let kind = it.next()?;
            let name = it.next()?;
            (addr != 0 && matches!(kind, "t" | "T")).then(|| (addr, name.to_string()))
        })
        .collect();
    v.sort();
    v
}

fn resolve(symbols: &[(u64, String)], addr: u64) -> String {
    match symbols.partition_point(|(a, _)| *a <= addr) {
        // Before the first symbol, or addresses hidden by kptr_restrict.
        0 => format!("{addr:#x}"),
        i => {
            let (start, name) = &symbols[i - 1];
            format!("{name}+{:#x}", addr - start)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_plus_offset() {
        let syms = parse(
            "ffffffff81000000 T _text\n\
             ffffffff81200000 t nf_hook_slow\n\
             ffffffff81200100 T ip_rcv\n\
             ffffffff81300000 d some_data\n\
             0000000000000000 T hidden\n",
        );
        assert_eq!(syms.len(), 3);
        assert_eq!(resolve(&syms, 0xffffffff8120009a), "nf_hook_slow+0x9a");
        assert_eq!(resolve(&syms, 0xffffffff81200100), "ip_rcv+0x0");
        assert_eq!(resolve(&syms, 0x1234), "0x1234");
    }

    #[test]
    fn running_kernel_resolves_a_known_function() {
        let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap();
        let line = kallsyms
            .lines()
            .find(|l| l.ends_with(" kfree_skb_reason") || l.ends_with(" sk_skb_reason_drop"))
            .unwrap();
        let addr = u64::from_str_radix(line.split_whitespace().next().unwrap(), 16).unwrap();
        let mut s = Symbolizer::default();
        let name = s.name(addr + 4);
        assert!(name.ends_with("+0x4"), "{name}");
    }
}
