//! A lab of network namespaces on one machine: hosts joined by an underlay,
//! a VXLAN overlay with a bridge on each host, and containers on the bridges,
//! as Docker's overlay driver and Flannel build them.
//!
//! Every lab takes a number no other live lab holds (a lease file under
//! [`LEASE_DIR`]); its namespace names and IPv4 addresses derive from it, so
//! labs of tests running in parallel never share a name or an address. All
//! traffic stays inside the lab's namespaces. Dropping the lab deletes its
//! namespaces, and with them every device, route and firewall rule in them,
//! also when a test panics.

use std::{fs, net::Ipv4Addr, path::PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{in_ns, ip, run};

pub const LEASE_DIR: &str = "/run/tracer-lab";
/// Prefix of every lab namespace: `tl<number>-<role>`.
pub const NS_PREFIX: &str = "tl";

/// A lab number held by this process until dropped.
struct Lease {
    id: u8,
    path: PathBuf,
}

impl Lease {
    fn take() -> Result<Self> {
        fs::create_dir_all(LEASE_DIR).with_context(|| format!("create {LEASE_DIR}"))?;
        // The lease appears with its owner's pid already in it (link(2) of a
        // written file), so nobody can read an empty lease and take it for stale.
        let tmp = PathBuf::from(format!(
            "{LEASE_DIR}/.tmp-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        fs::write(&tmp, format!("{}\n", std::process::id()))?;
        let taken = (1..=250u8).find_map(|id| {
            let path = PathBuf::from(format!("{LEASE_DIR}/{id}"));
            if fs::hard_link(&tmp, &path).is_ok() {
                return Some(Lease { id, path });
            }
            let owner = fs::read_to_string(&path).unwrap_or_default();
            let alive = owner
                .trim()
                .parse::<u32>()
                .map(|pid| PathBuf::from(format!("/proc/{pid}")).exists())
                .unwrap_or(false);
            if !alive && fs::remove_file(&path).is_ok() && fs::hard_link(&tmp, &path).is_ok() {
                return Some(Lease { id, path });
            }
            None
        });
        let _ = fs::remove_file(&tmp);
        if let Some(lease) = taken {
            // A lab that died without cleaning up may have left namespaces behind.
            remove_namespaces(lease.id);
            return Ok(lease);
        }
        bail!("all 250 lab numbers in {LEASE_DIR} are in use")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Serialises `ip netns add/del` across threads and processes: concurrent
/// first uses race on setting up the /run/netns mount.
fn netns_op(args: &[&str]) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    fs::create_dir_all(LEASE_DIR)?;
    let lock = fs::File::create(format!("{LEASE_DIR}/.netns.lock"))?;
    // SAFETY: plain syscall; the lock is released when `lock` is closed.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    ip(args)
}

fn remove_namespaces(id: u8) {
    let prefix = format!("{NS_PREFIX}{id}-");
    if let Ok(entries) = fs::read_dir("/var/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                let _ = netns_op(&["netns", "del", &name]);
            }
        }
    }
}

/// A set of namespaces that are deleted when the lab is dropped.
pub struct Lab {
    lease: Lease,
    namespaces: Vec<String>,
}

impl Lab {
    pub fn new() -> Result<Self> {
        Ok(Lab {
            lease: Lease::take()?,
            namespaces: Vec::new(),
        })
    }

    pub fn id(&self) -> u8 {
        self.lease.id
    }

    /// The name of this lab's namespace for `role`.
    pub fn ns_name(&self, role: &str) -> String {
        format!("{NS_PREFIX}{}-{role}", self.lease.id)
    }

    /// Every namespace of the lab, in creation order.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// `10.<lab>.<subnet>.<host>`: addresses no other lab uses.
    pub fn addr(&self, subnet: u8, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.lease.id, subnet, host)
    }

    /// A locally administered MAC address unique to this lab.
    pub fn mac(&self, role: u8, n: u8) -> String {
        format!("02:{:02x}:{role:02x}:00:00:{n:02x}", self.lease.id)
    }

    /// Creates namespace `role` with loopback up and IPv6 off, so that the
    /// only traffic in it is what a test sends (no router solicitations,
    /// MLD reports or duplicate address detection).
    pub fn add_ns(&mut self, role: &str) -> Result<String> {
        let name = self.ns_name(role);
        netns_op(&["netns", "add", &name])?;
        self.namespaces.push(name.clone());
        for key in [
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ] {
            sysctl(&name, key)?;
        }
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }

    /// A veth pair with one end in each namespace, both up.
    pub fn veth(
        &self,
        a: (&str, &str),
        b: (&str, &str),
        mtu: u32,
        macs: (&str, &str),
    ) -> Result<()> {
        let mtu = mtu.to_string();
        ip(&[
            "link", "add", a.1, "netns", a.0, "mtu", &mtu, "address", macs.0, "type", "veth",
            "peer", "name", b.1, "netns", b.0, "mtu", &mtu, "address", macs.1,
        ])?;
        up(a.0, a.1)?;
        up(b.0, b.1)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = netns_op(&["netns", "del", ns]);
        }
    }
}

/// The inode of namespace `ns` (what the kernel's `ns.inum` holds).
pub fn netns_inode(ns: &str) -> Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(fs::metadata(format!("/var/run/netns/{ns}"))?.ino())
}

/// `iptables args...` inside `ns`.
pub fn iptables(ns: &str, args: &[&str]) -> Result<()> {
    in_ns(ns, "iptables", args).map(drop)
}

/// `sysctl -w key=value` inside `ns`.
pub fn sysctl(ns: &str, assignment: &str) -> Result<()> {
    in_ns(ns, "sysctl", &["-q", "-w", assignment]).map(drop)
}

/// Shape of an overlay lab.
#[derive(Debug, Clone)]
pub struct OverlayOpts {
    pub vni: u32,
    /// UDP port of the VXLAN devices.
    pub vxlan_port: u16,
    pub underlay_mtu: u32,
    /// MTU of the VXLAN devices, bridges and container interfaces.
    pub overlay_mtu: u32,
    /// Route the underlay through a router namespace instead of one veth link.
    pub router: bool,
    /// Keep each host's bridge and VXLAN device in a namespace of their own, as
    /// Docker's overlay driver does.
    pub docker: bool,
}

impl Default for OverlayOpts {
    fn default() -> Self {
        OverlayOpts {
            vni: 4242,
            vxlan_port: 4789,
            underlay_mtu: 1500,
            overlay_mtu: 1450,
            router: false,
            docker: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Host {
    /// The host's namespace: the underlay device and the VXLAN socket live here.
    pub ns: String,
    /// Where the bridge and the VXLAN device are: `ns`, or a namespace of their own.
    pub overlay_ns: String,
    pub underlay_dev: String,
    pub underlay_ip: Ipv4Addr,
    pub vxlan_dev: String,
    pub bridge: String,
}

#[derive(Debug, Clone)]
pub struct Container {
    pub ns: String,
    pub dev: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    /// The bridge port of the container's veth pair, in its host's `overlay_ns`.
    pub bridge_port: String,
}

#[derive(Debug, Clone)]
pub struct Router {
    pub ns: String,
    /// Devices towards host A and host B.
    pub devs: (String, String),
}

/// Two hosts, a VXLAN overlay between them, one container on each.
pub struct Overlay {
    pub opts: OverlayOpts,
    pub a: Host,
    pub b: Host,
    pub c1: Container,
    pub c2: Container,
    pub router: Option<Router>,
    /// Last, so the namespaces go after everything else was dropped.
    pub lab: Lab,
}

impl Overlay {
    pub fn new(opts: OverlayOpts) -> Result<Self> {
        let mut lab = Lab::new()?;
        let ha = lab.add_ns("ha")?;
        let hb = lab.add_ns("hb")?;
        let (ova, ovb) = if opts.docker {
            (lab.add_ns("ova")?, lab.add_ns("ovb")?)
        } else {
            (ha.clone(), hb.clone())
        };
        let c1ns = lab.add_ns("c1")?;
        let c2ns = lab.add_ns("c2")?;
        let r = if opts.router {
            Some(lab.add_ns("r")?)
        } else {
            None
        };
        let ul_mac = |host: u8, n: u8| lab.mac(host, n);

        // Underlay.
        let (a_ip, b_ip, router) = if let Some(r) = r {
            let (a_ip, ra_ip) = (lab.addr(1, 1), lab.addr(1, 254));
            let (b_ip, rb_ip) = (lab.addr(2, 1), lab.addr(2, 254));
            lab.veth(
                (&ha, "ul0"),
                (&r, "ra"),
                opts.underlay_mtu,
                (&ul_mac(1, 1), &ul_mac(3, 1)),
            )?;
            lab.veth(
                (&hb, "ul0"),
                (&r, "rb"),
                opts.underlay_mtu,
                (&ul_mac(2, 1), &ul_mac(3, 2)),
            )?;
            addr(&ha, "ul0", a_ip, 24)?;
            addr(&r, "ra", ra_ip, 24)?;
            addr(&hb, "ul0", b_ip, 24)?;
            addr(&r, "rb", rb_ip, 24)?;
            sysctl(&r, "net.ipv4.ip_forward=1")?;
            neigh(&ha, "ul0", ra_ip, &ul_mac(3, 1))?;
            neigh(&r, "ra", a_ip, &ul_mac(1, 1))?;
            neigh(&hb, "ul0", rb_ip, &ul_mac(3, 2))?;
            neigh(&r, "rb", b_ip, &ul_mac(2, 1))?;
            ip(&[
                "-n",
                &ha,
                "route",
                "add",
                &format!("{}/24", lab.addr(2, 0)),
                "via",
                &ra_ip.to_string(),
            ])?;
            ip(&[
                "-n",
                &hb,
                "route",
                "add",
                &format!("{}/24", lab.addr(1, 0)),
                "via",
                &rb_ip.to_string(),
            ])?;
            (
                a_ip,
                b_ip,
                Some(Router {
                    ns: r,
                    devs: ("ra".into(), "rb".into()),
                }),
            )
        } else {
            let (a_ip, b_ip) = (lab.addr(1, 1), lab.addr(1, 2));
            lab.veth(
                (&ha, "ul0"),
                (&hb, "ul0"),
                opts.underlay_mtu,
                (&ul_mac(1, 1), &ul_mac(2, 1)),
            )?;
            addr(&ha, "ul0", a_ip, 24)?;
            addr(&hb, "ul0", b_ip, 24)?;
            neigh(&ha, "ul0", b_ip, &ul_mac(2, 1))?;
            neigh(&hb, "ul0", a_ip, &ul_mac(1, 1))?;
            (a_ip, b_ip, None)
        };

        let host = |ns: &str, overlay_ns: &str, ip: Ipv4Addr| Host {
            ns: ns.to_string(),
            overlay_ns: overlay_ns.to_string(),
            underlay_dev: "ul0".into(),
            underlay_ip: ip,
            vxlan_dev: "vx0".into(),
            bridge: "br0".into(),
        };
        let a = host(&ha, &ova, a_ip);
        let b = host(&hb, &ovb, b_ip);
        let container = |ns: &str, n: u8| Container {
            ns: ns.to_string(),
            dev: "eth0".into(),
            ip: lab.addr(100, n),
            mac: lab.mac(0x10, n),
            bridge_port: format!("vc{n}"),
        };
        let c1 = container(&c1ns, 1);
        let c2 = container(&c2ns, 2);

        for (h, c) in [(&a, &c1), (&b, &c2)] {
            vxlan_and_bridge(&opts, h)?;
            lab.veth(
                (&c.ns, &c.dev),
                (&h.overlay_ns, &c.bridge_port),
                opts.overlay_mtu,
                (&c.mac, &lab.mac(0x20, c.ip.octets()[3])),
            )?;
            ip(&[
                "-n",
                &h.overlay_ns,
                "link",
                "set",
                &c.bridge_port,
                "master",
                &h.bridge,
            ])?;
            addr(&c.ns, &c.dev, c.ip, 24)?;
        }
        // What an overlay control plane installs: neighbours of remote
        // containers, and FDB entries pointing their MACs at the remote host.
        for (c, peer, h, remote) in [(&c1, &c2, &a, &b), (&c2, &c1, &b, &a)] {
            neigh(&c.ns, &c.dev, peer.ip, &peer.mac)?;
            let dst = remote.underlay_ip.to_string();
            run(
                "bridge",
                &[
                    "-n",
                    &h.overlay_ns,
                    "fdb",
                    "add",
                    &peer.mac,
                    "dev",
                    &h.vxlan_dev,
                    "dst",
                    &dst,
                    "self",
                    "permanent",
                ],
            )?;
            run(
                "bridge",
                &[
                    "-n",
                    &h.overlay_ns,
                    "fdb",
                    "add",
                    &peer.mac,
                    "dev",
                    &h.vxlan_dev,
                    "master",
                    "static",
                ],
            )?;
        }
        Ok(Overlay {
            opts,
            a,
            b,
            c1,
            c2,
            router,
            lab,
        })
    }

    /// Every namespace of the lab, for `tracer --netns`.
    pub fn namespaces(&self) -> &[String] {
        self.lab.namespaces()
    }
}

fn vxlan_and_bridge(opts: &OverlayOpts, h: &Host) -> Result<()> {
    let (vni, port, mtu) = (
        opts.vni.to_string(),
        opts.vxlan_port.to_string(),
        opts.overlay_mtu.to_string(),
    );
    let local = h.underlay_ip.to_string();
    ip(&[
        "-n",
        &h.ns,
        "link",
        "add",
        &h.vxlan_dev,
        "mtu",
        &mtu,
        "type",
        "vxlan",
        "id",
        &vni,
        "dstport",
        &port,
        "local",
        &local,
        "nolearning",
    ])?;
    if h.overlay_ns != h.ns {
        // Docker creates the device in the host and moves it: its UDP socket stays in the host.
        ip(&[
            "-n",
            &h.ns,
            "link",
            "set",
            &h.vxlan_dev,
            "netns",
            &h.overlay_ns,
        ])?;
    }
    let ons = h.overlay_ns.as_str();
    // No multicast snooping: a snooping bridge joins 224.0.0.106 and reports it.
    ip(&[
        "-n",
        ons,
        "link",
        "add",
        &h.bridge,
        "mtu",
        &mtu,
        "type",
        "bridge",
        "mcast_snooping",
        "0",
    ])?;
    ip(&["-n", ons, "link", "set", &h.vxlan_dev, "master", &h.bridge])?;
    up(ons, &h.vxlan_dev)?;
    up(ons, &h.bridge)
}

/// Brings a device up with multicast off: otherwise a device without an
/// address may send IGMP reports a while after coming up, traffic no test sent.
pub fn up(ns: &str, dev: &str) -> Result<()> {
    ip(&["-n", ns, "link", "set", dev, "multicast", "off", "up"])
}

pub fn addr(ns: &str, dev: &str, a: Ipv4Addr, prefix: u8) -> Result<()> {
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{a}/{prefix}"),
        "dev",
        dev,
    ])
}

pub fn neigh(ns: &str, dev: &str, a: Ipv4Addr, mac: &str) -> Result<()> {
    ip(&[
        "-n",
        ns,
        "neigh",
        "replace",
        &a.to_string(),
        "lladdr",
        mac,
        "dev",
        dev,
        "nud",
        "permanent",
    ])
}

/// One end of a [`Pair`].
#[derive(Debug, Clone)]
pub struct End {
    pub ns: String,
    pub dev: String,
    pub ip: Ipv4Addr,
    pub mac: String,
}

/// Two namespaces joined by one veth link, with addresses and static neighbours.
pub struct Pair {
    pub a: End,
    pub b: End,
    pub lab: Lab,
}

impl Pair {
    pub fn new(mtu: u32) -> Result<Self> {
        let mut lab = Lab::new()?;
        let end = |lab: &mut Lab, role: &str, n: u8| -> Result<End> {
            Ok(End {
                ns: lab.add_ns(role)?,
                dev: "v0".into(),
                ip: lab.addr(1, n),
                mac: lab.mac(1, n),
            })
        };
        let a = end(&mut lab, "a", 1)?;
        let b = end(&mut lab, "b", 2)?;
        lab.veth((&a.ns, &a.dev), (&b.ns, &b.dev), mtu, (&a.mac, &b.mac))?;
        for (x, y) in [(&a, &b), (&b, &a)] {
            addr(&x.ns, &x.dev, x.ip, 24)?;
            neigh(&x.ns, &x.dev, y.ip, &y.mac)?;
        }
        Ok(Pair { a, b, lab })
    }

    pub fn namespaces(&self) -> &[String] {
        self.lab.namespaces()
    }
}

/// Two containers on one bridge: `c1` and `c2` joined through bridge `br0`
/// in a third namespace, as a single-host container network is built.
pub struct Bridged {
    /// The namespace holding the bridge and both bridge ports.
    pub ns: String,
    pub bridge: String,
    pub c1: Container,
    pub c2: Container,
    pub lab: Lab,
}

impl Bridged {
    pub fn new(mtu: u32) -> Result<Self> {
        let mut lab = Lab::new()?;
        let ns = lab.add_ns("br")?;
        let bridge = "br0".to_string();
        ip(&[
            "-n",
            &ns,
            "link",
            "add",
            &bridge,
            "mtu",
            &mtu.to_string(),
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        up(&ns, &bridge)?;
        let mut containers = Vec::new();
        for n in [1u8, 2] {
            let c = Container {
                ns: lab.add_ns(&format!("c{n}"))?,
                dev: "eth0".into(),
                ip: lab.addr(1, n),
                mac: lab.mac(0x10, n),
                bridge_port: format!("vc{n}"),
            };
            lab.veth(
                (&c.ns, &c.dev),
                (&ns, &c.bridge_port),
                mtu,
                (&c.mac, &lab.mac(0x20, n)),
            )?;
            ip(&["-n", &ns, "link", "set", &c.bridge_port, "master", &bridge])?;
            addr(&c.ns, &c.dev, c.ip, 24)?;
            containers.push(c);
        }
        let c2 = containers.pop().expect("two containers");
        let c1 = containers.pop().expect("two containers");
        // Static neighbours and FDB entries: no ARP, no flooding before learning.
        for (c, peer) in [(&c1, &c2), (&c2, &c1)] {
            neigh(&c.ns, &c.dev, peer.ip, &peer.mac)?;
            run(
                "bridge",
                &[
                    "-n",
                    &ns,
                    "fdb",
                    "add",
                    &c.mac,
                    "dev",
                    &c.bridge_port,
                    "master",
                    "static",
                ],
            )?;
        }
        Ok(Bridged {
            ns,
            bridge,
            c1,
            c2,
            lab,
        })
    }

    pub fn namespaces(&self) -> &[String] {
        self.lab.namespaces()
    }
}
