//! Which kernels the matrix knows, and reading `--kernel` values.

use anyhow::{Result, bail};

/// A Debian kernel the tests can boot.
#[derive(Debug)]
pub struct Spec {
    /// What `--kernel` calls it.
    pub name: &'static str,
    /// Suites whose packages count; the newest matching package of these wins.
    pub suites: &'static [&'static str],
    /// Package name; `*` stands for a run of digits and dots, which keeps out
    /// the -rt, -cloud, -dbg and -unsigned flavours.
    pub package: &'static str,
}

/// Bullseye's, bookworm's and bookworm-backports' kernels. Bookworm's
/// security suite counts: it is where the 6.1 kernel Debian 12 users run comes
/// from (bookworm itself holds only the last point release's).
pub const SPECS: &[Spec] = &[
    Spec {
        name: "5.10",
        suites: &["bullseye"],
        package: "linux-image-5.10.0-*-amd64",
    },
    Spec {
        name: "6.1",
        suites: &["bookworm", "bookworm-security"],
        package: "linux-image-6.1.0-*-amd64",
    },
    Spec {
        name: "6.12",
        suites: &["bookworm-backports"],
        // A rebuild of the same upstream release is named +deb12.1.
        package: "linux-image-6.12.*+deb12*-amd64",
    },
];

/// Where the tests run: this machine's kernel, or one booted in a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Host,
    Vm(&'static Spec),
}

impl Target {
    #[cfg(test)]
    pub fn name(&self) -> &'static str {
        match self {
            Target::Host => "host",
            Target::Vm(spec) => spec.name,
        }
    }
}

impl PartialEq for Spec {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for Spec {}

/// `--kernel` values (already split at commas) in the order given, without
/// repeats; `all` is every VM kernel and the host.
pub fn parse(values: &[String]) -> Result<Vec<Target>> {
    let mut targets = Vec::new();
    let mut push = |t: Target| {
        if !targets.contains(&t) {
            targets.push(t);
        }
    };
    for value in values {
        match value.trim() {
            "host" => push(Target::Host),
            "all" => {
                SPECS.iter().for_each(|s| push(Target::Vm(s)));
                push(Target::Host);
            }
            "" => bail!("empty --kernel value"),
            name => match SPECS.iter().find(|s| s.name == name) {
                Some(spec) => push(Target::Vm(spec)),
                None => bail!(
                    "unknown kernel '{name}' (known: {}, host, all)",
                    SPECS.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
                ),
            },
        }
    }
    Ok(targets)
}

/// Does package `name` match `pattern`, where `*` is one or more of
/// `[0-9.]` (or none, at the end of a `+deb12*` suffix)?
pub fn matches(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((b'*', rest)) => {
                let run = n
                    .iter()
                    .take_while(|c| c.is_ascii_digit() || **c == b'.')
                    .count();
                (0..=run).rev().any(|k| go(rest, &n[k..]))
            }
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_pick_the_generic_flavour_only() {
        let p = SPECS[1].package;
        assert!(matches(p, "linux-image-6.1.0-57-amd64"));
        assert!(!matches(p, "linux-image-6.1.0-57-rt-amd64"));
        assert!(!matches(p, "linux-image-6.1.0-57-cloud-amd64"));
        assert!(!matches(p, "linux-image-6.1.0-57-amd64-dbg"));
        assert!(!matches(p, "linux-image-6.1.0-57-amd64-unsigned"));
        let p = SPECS[2].package;
        assert!(matches(p, "linux-image-6.12.95+deb12-amd64"));
        assert!(matches(p, "linux-image-6.12.90+deb12.1-amd64"));
        assert!(!matches(p, "linux-image-6.12.95+deb12-rt-amd64"));
        assert!(!matches(p, "linux-image-6.12.95+deb13-amd64"));
    }

    #[test]
    fn kernel_values() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let names = |t: Vec<Target>| t.iter().map(Target::name).collect::<Vec<_>>();
        assert_eq!(
            names(parse(&v(&["6.1", "host", "6.1"])).unwrap()),
            ["6.1", "host"]
        );
        assert_eq!(
            names(parse(&v(&["all"])).unwrap()),
            ["5.10", "6.1", "6.12", "host"]
        );
        let e = parse(&v(&["4.19"])).unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown kernel '4.19' (known: 5.10, 6.1, 6.12, host, all)"
        );
    }
}
