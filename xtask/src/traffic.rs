//! Known traffic, sent and received inside lab namespaces.

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::cmd::in_ns;

/// Runs `f` on a thread inside network namespace `ns`: a name under
/// /var/run/netns, or a path that opens one (`/proc/PID/ns/net`, a
/// container's). Sockets made there keep that namespace afterwards.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = if ns.contains('/') {
        ns.to_string()
    } else {
        format!("/var/run/netns/{ns}")
    };
    let file = File::open(&path).with_context(|| format!("open netns {ns}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: plain syscall on a valid fd.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(anyhow!("setns {ns}: {}", std::io::Error::last_os_error()));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow!("thread in {ns} panicked"))?
    })
}

/// A UDP socket bound inside a namespace.
///
/// Binding is retried for a second while the address is in use: a socket
/// of the same address closed just before (the same test sending again
/// from the same port) stays bound while a child that another thread is
/// spawning holds its copy of the fd table, until its exec closes it.
pub fn udp_socket(ns: &str, addr: SocketAddrV4) -> Result<UdpSocket> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match in_netns(ns, || UdpSocket::bind(addr))? {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            bound => return bound.with_context(|| format!("bind {addr} in {ns}")),
        }
    }
}

/// How a UDP socket sets IPv4 "don't fragment" (`IP_MTU_DISCOVER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Df {
    /// Never set DF: datagrams larger than the MTU are fragmented.
    Dont = 0,
    /// Linux's default: DF set on datagrams that fit the path MTU.
    Want = 1,
    /// Always set DF and ignore the learnt path MTU, so every datagram is sent.
    Probe = 3,
}

/// Sends `count` datagrams of `payload` bytes from `from` (in `ns`) to `to`.
pub fn send_udp(
    ns: &str,
    from: SocketAddrV4,
    to: SocketAddrV4,
    count: u32,
    payload: usize,
) -> Result<()> {
    send_udp_df(ns, from, to, count, payload, Df::Want)
}

/// [`send_udp`] with the DF behaviour chosen.
pub fn send_udp_df(
    ns: &str,
    from: SocketAddrV4,
    to: SocketAddrV4,
    count: u32,
    payload: usize,
    df: Df,
) -> Result<()> {
    let sock = udp_socket(ns, from)?;
    set_int(
        &sock,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        df as libc::c_int,
    )
    .context("IP_MTU_DISCOVER")?;
    let buf = vec![0x5a; payload];
    for _ in 0..count {
        let n = sock
            .send_to(&buf, to)
            .with_context(|| format!("send {from} -> {to}"))?;
        if n != payload {
            bail!("short send: {n} of {payload}");
        }
    }
    Ok(())
}

/// Sets the int socket option `name` of `level`.
fn set_int(
    sock: &UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> Result<()> {
    // SAFETY: the options set here take an int, passed with its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("{}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A sink's receive buffer: a test's burst (hundreds of datagrams from a
/// loop of senders) must wait there while the receiving thread, one among
/// parallel tests and tracer on two CPUs, is not running; the default
/// (about 200 datagrams' worth) overflowed.
const SINK_BUFFER: libc::c_int = 16 << 20;

/// Counts datagrams arriving on a socket until dropped.
pub struct UdpSink {
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub addr: SocketAddrV4,
}

impl UdpSink {
    pub fn start(ns: &str, addr: SocketAddrV4) -> Result<Self> {
        let sock = udp_socket(ns, addr)?;
        set_int(&sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, SINK_BUFFER)
            .context("SO_RCVBUFFORCE")?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (received.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                if sock.recv_from(&mut buf).is_ok() {
                    r.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(UdpSink {
            received,
            stop,
            thread: Some(thread),
            addr,
        })
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits until `n` datagrams arrived; false after `timeout`.
    pub fn wait_for(&self, n: u64, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.received() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.received() >= n
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `ping -c count -s size [-M do] dst` in `ns`; returns how many replies came back.
pub fn ping(ns: &str, dst: Ipv4Addr, count: u32, size: u32, dont_fragment: bool) -> Result<u32> {
    let (count_s, size_s, dst_s) = (count.to_string(), size.to_string(), dst.to_string());
    let mut args = vec![
        "-n", "-q", "-c", &count_s, "-i", "0.01", "-W", "1", "-s", &size_s,
    ];
    if dont_fragment {
        args.extend(["-M", "do"]);
    }
    args.push(&dst_s);
    // ping exits non-zero when replies are missing; that is a result, not an error.
    let out = match in_ns(ns, "ping", &args) {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => e.to_string(),
    };
    let received = out
        .split(',')
        .find_map(|part| part.trim().strip_suffix(" received")?.trim().parse().ok())
        .unwrap_or(0);
    Ok(received)
}
