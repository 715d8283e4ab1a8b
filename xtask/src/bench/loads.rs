//! The loads: iperf3 TCP and UDP-64 between two lab namespaces, a UDP
//! request/response ping-pong, and paced UDP to many distinct flows.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use xtask::{
    cmd::in_ns,
    traffic::{in_netns, udp_socket},
};

use super::sys::{Proc, check_interrupted};

pub const IPERF_PORT: u16 = 5201;
/// The iperf3 server of the BPF statistics pass, apart so that its packets
/// are not counted with the measured UDP-64 load's.
pub const STATS_PORT: u16 = 5202;
pub const RR_PORT: u16 = 7000;
pub const RR_CLIENT_PORT: u16 = 7001;
/// UDP payload of the request/response load and of the UDP-64 load.
pub const SMALL_PAYLOAD: usize = 64;

/// An iperf3 server in a namespace for the whole bench.
pub struct IperfServer {
    _proc: Proc,
}

impl IperfServer {
    pub fn start(ns: &str, ip: Ipv4Addr, port: u16) -> Result<Self> {
        let (ip, port) = (ip.to_string(), port.to_string());
        let proc = Proc::spawn(
            Command::new("ip")
                .args(["netns", "exec", ns, "iperf3", "-s", "-B", &ip, "-p", &port])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "iperf3 server",
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let filter = format!("sport = :{port}");
        loop {
            let out = in_ns(ns, "ss", &["-Hltn", &filter])?;
            if !out.stdout.is_empty() {
                return Ok(IperfServer { _proc: proc });
            }
            if Instant::now() > deadline {
                bail!("iperf3 server in {ns} not listening after 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs an iperf3 client in `ns` against `server`; returns its JSON report.
fn iperf_client(
    ns: &str,
    server: Ipv4Addr,
    port: u16,
    seconds: f64,
    extra: &[&str],
) -> Result<Value> {
    let (server, port, secs) = (server.to_string(), port.to_string(), format!("{seconds}"));
    let mut args = vec![
        "netns", "exec", ns, "iperf3", "-c", &server, "-p", &port, "-t", &secs, "-J",
    ];
    // Client on CPU 0, server on CPU 1: the scheduler moving them around
    // would otherwise be the largest source of run-to-run variation.
    if std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2) {
        args.extend(["-A", "0,1"]);
    }
    args.extend_from_slice(extra);
    // One retry: a client that fails to connect once should not end a
    // quarter of an hour of measurements.
    match iperf_once(&args) {
        Err(e) => {
            eprintln!("bench: {e:#}; trying once more");
            std::thread::sleep(Duration::from_secs(1));
            iperf_once(&args)
        }
        ok => ok,
    }
}

fn iperf_once(args: &[&str]) -> Result<Value> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("run iperf3")?;
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 printed no JSON ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3 failed: {e}");
    }
    Ok(v)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TcpResult {
    /// Goodput seen by the receiver.
    pub gbps: f64,
    pub retransmits: u64,
}

pub fn parse_iperf_tcp(v: &Value) -> Result<TcpResult> {
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 TCP report without end.sum_received")?;
    Ok(TcpResult {
        gbps: bps / 1e9,
        retransmits: v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    })
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct UdpResult {
    /// Datagrams the client sent.
    pub sent: u64,
    /// Datagrams the server read (sent less those it saw missing).
    pub received: u64,
    pub seconds: f64,
    /// Received datagrams per second.
    pub pps: f64,
}

pub fn parse_iperf_udp(v: &Value) -> Result<UdpResult> {
    let end = &v["end"];
    let recv = &end["sum_received"];
    let n = |x: &Value, what: &str| {
        x.as_u64()
            .with_context(|| format!("iperf3 UDP report without {what}"))
    };
    let sent = n(&end["sum_sent"]["packets"], "sum_sent.packets")?;
    let packets = n(&recv["packets"], "sum_received.packets")?;
    let lost = n(&recv["lost_packets"], "sum_received.lost_packets")?;
    let seconds = recv["seconds"]
        .as_f64()
        .context("iperf3 UDP report without sum_received.seconds")?;
    let received = packets.saturating_sub(lost);
    Ok(UdpResult {
        sent,
        received,
        seconds,
        pps: if seconds > 0.0 {
            received as f64 / seconds
        } else {
            0.0
        },
    })
}

pub fn tcp(ns: &str, server: Ipv4Addr, seconds: f64) -> Result<TcpResult> {
    parse_iperf_tcp(&iperf_client(ns, server, IPERF_PORT, seconds, &[])?)
}

/// UDP with 64-byte payloads as fast as the client can send (`-b 0`), to
/// the iperf3 server on `port`.
pub fn udp64(ns: &str, server: Ipv4Addr, port: u16, seconds: f64) -> Result<UdpResult> {
    let len = SMALL_PAYLOAD.to_string();
    parse_iperf_udp(&iperf_client(
        ns,
        server,
        port,
        seconds,
        &["-u", "-l", &len, "-b", "0"],
    )?)
}

/// Answers every datagram with itself until stopped, polling its socket
/// (see [`udp_rr`]).
pub struct Echo {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    pub fn start(ns: &str, addr: SocketAddrV4) -> Result<Self> {
        let sock = udp_socket(ns, addr)?;
        sock.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), served.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                match sock.recv_from(&mut buf) {
                    Ok((len, from)) => {
                        n.fetch_add(1, Ordering::Relaxed);
                        let _ = sock.send_to(&buf[..len], from);
                    }
                    Err(_) => std::thread::yield_now(),
                }
            }
        });
        Ok(Echo {
            stop,
            served,
            thread: Some(thread),
        })
    }

    /// Stops answering; returns how many datagrams arrived.
    pub fn stop(mut self) -> u64 {
        self.halt();
        self.served.load(Ordering::Relaxed)
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.halt();
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RrResult {
    /// Requests sent, warm-up included.
    pub sent: u64,
    /// Requests that reached the echo server.
    #[serde(default)]
    pub served: u64,
    /// Measured requests that got no answer within the timeout.
    pub lost: u64,
    pub p50_us: f64,
    pub p99_us: f64,
}

const RR_WARMUP: u32 = 500;
const RR_TIMEOUT: Duration = Duration::from_millis(200);

/// `requests` 64-byte UDP requests from `client` (in `client_ns`) to an echo
/// server at `server` (in `server_ns`), one at a time; the round-trip time of
/// each is taken with `Instant` around send and receive. Both ends poll their
/// non-blocking sockets: on this VM an idle vCPU takes tens of microseconds
/// to wake up, which would swamp the datapath's own latency. They yield the
/// CPU between polls, so that a tool waking up on a busy core runs at once
/// instead of stalling a spinning end for a whole time slice.
pub fn udp_rr(
    client_ns: &str,
    client: Ipv4Addr,
    server_ns: &str,
    server: SocketAddrV4,
    requests: u32,
) -> Result<RrResult> {
    let echo = Echo::start(server_ns, server)?;
    let sock = udp_socket(client_ns, SocketAddrV4::new(client, RR_CLIENT_PORT))?;
    sock.connect(server)?;
    sock.set_nonblocking(true)?;
    let mut rtts = Vec::with_capacity(requests as usize);
    let mut lost = 0;
    let mut buf = [0u8; SMALL_PAYLOAD];
    let mut reply = [0u8; 2048];
    for seq in 0..(RR_WARMUP + requests) {
        buf[..4].copy_from_slice(&seq.to_be_bytes());
        let t0 = Instant::now();
        sock.send(&buf).context("send request")?;
        if await_reply(&sock, seq, &mut reply) {
            if seq >= RR_WARMUP {
                rtts.push(t0.elapsed().as_nanos() as u64);
            }
        } else if seq >= RR_WARMUP {
            lost += 1;
        }
        if seq % 4096 == 0 {
            check_interrupted()?;
        }
    }
    let served = echo.stop();
    if rtts.is_empty() {
        bail!("no request to {server} was answered");
    }
    rtts.sort_unstable();
    let us = |ns: u64| ns as f64 / 1000.0;
    Ok(RrResult {
        sent: (RR_WARMUP + requests) as u64,
        served,
        lost,
        p50_us: us(super::stats::nearest_rank(&rtts, 50.0)),
        p99_us: us(super::stats::nearest_rank(&rtts, 99.0)),
    })
}

/// Spins until the answer to request `seq` arrives, skipping late answers
/// to earlier ones; false after [`RR_TIMEOUT`].
fn await_reply(sock: &UdpSocket, seq: u32, buf: &mut [u8]) -> bool {
    let deadline = Instant::now() + RR_TIMEOUT;
    loop {
        match sock.recv(buf) {
            Ok(n) if n >= 4 && buf[..4] == seq.to_be_bytes() => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::yield_now();
            }
            Err(_) => return false,
        }
    }
}

/// One IPv4/UDP datagram with the given ports, header checksum filled in and
/// no UDP checksum (allowed for IPv4).
pub fn udp_packet(src: SocketAddrV4, dst: SocketAddrV4, payload: usize) -> Vec<u8> {
    let total = 20 + 8 + payload;
    let mut p = vec![0u8; total];
    p[0] = 0x45; // IPv4, 20-byte header
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40; // DF: these packets are never fragmented
    p[8] = 64; // TTL
    p[9] = 17; // UDP
    p[12..16].copy_from_slice(&src.ip().octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let sum = ipv4_checksum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p[20..22].copy_from_slice(&src.port().to_be_bytes());
    p[22..24].copy_from_slice(&dst.port().to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    p
}

/// The Internet checksum of an IPv4 header whose checksum field is zero.
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Paced UDP from many source ports: a raw socket, so that any number of
/// distinct flows costs one file descriptor.
pub struct Blast {
    pub src: Ipv4Addr,
    pub dst: SocketAddrV4,
    pub payload: usize,
    /// Packets in all.
    pub packets: u64,
    /// Spread evenly over this long.
    pub duration: Duration,
}

impl Blast {
    /// Sends packet `i` from the source port `sport(i)`; returns how many
    /// the kernel accepted.
    pub fn run(&self, ns: &str, sport: impl Fn(u64) -> u16 + Send + Sync) -> Result<u64> {
        in_netns(ns, || self.send_all(&sport))?
    }

    fn send_all(&self, sport: &(impl Fn(u64) -> u16 + Sync)) -> Result<u64> {
        // SAFETY: plain syscall; the fd is closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            bail!("raw socket: {}", std::io::Error::last_os_error());
        }
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(self.dst.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let start = Instant::now();
        let per_packet = self.duration.as_secs_f64() / self.packets.max(1) as f64;
        let mut sent = 0;
        let mut result = Ok(());
        for i in 0..self.packets {
            let due = start + Duration::from_secs_f64(per_packet * i as f64);
            let now = Instant::now();
            // Sleep in steps of at least a millisecond: finer sleeps overshoot.
            if due > now + Duration::from_millis(1) {
                std::thread::sleep(due - now);
            }
            let pkt = udp_packet(
                SocketAddrV4::new(self.src, sport(i)),
                self.dst,
                self.payload,
            );
            // SAFETY: valid buffer and address for the duration of the call.
            let n = unsafe {
                libc::sendto(
                    fd,
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&raw const to).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                )
            };
            if n == pkt.len() as isize {
                sent += 1;
            }
            if i % 1024 == 0
                && let Err(e) = check_interrupted()
            {
                result = Err(e);
                break;
            }
        }
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
        result.map(|()| sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf_tcp_report() {
        let v: Value = serde_json::from_str(
            r#"{"end":{"sum_sent":{"bits_per_second":12.9e9,"retransmits":92},
                       "sum_received":{"bits_per_second":12.8e9}}}"#,
        )
        .unwrap();
        assert_eq!(
            parse_iperf_tcp(&v).unwrap(),
            TcpResult {
                gbps: 12.8,
                retransmits: 92
            }
        );
        assert!(parse_iperf_tcp(&serde_json::json!({"end": {}})).is_err());
    }

    #[test]
    fn iperf_udp_report_counts_what_arrived() {
        // Shape of iperf 3.12's client report with -u.
        let v: Value = serde_json::from_str(
            r#"{"end":{"sum":{"packets":241320,"lost_packets":107572},
               "sum_sent":{"seconds":2.000058,"packets":241320,"lost_packets":0},
               "sum_received":{"seconds":2.0,"bytes":8559872,"packets":241320,"lost_packets":107572}}}"#,
        )
        .unwrap();
        let u = parse_iperf_udp(&v).unwrap();
        assert_eq!((u.sent, u.received), (241320, 133748));
        assert_eq!(u.pps, 66874.0);
        assert!(parse_iperf_udp(&serde_json::json!({"end": {"sum_sent": {}}})).is_err());
    }

    #[test]
    fn udp_packet_headers() {
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 1, 1, 1), 20000);
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 1, 1, 2), 9000);
        let p = udp_packet(src, dst, 18);
        assert_eq!(p.len(), 46);
        assert_eq!(&p[2..4], &46u16.to_be_bytes());
        assert_eq!(
            (p[9], &p[12..16], &p[16..20]),
            (17, &[10, 1, 1, 1][..], &[10, 1, 1, 2][..])
        );
        assert_eq!(&p[20..24], &[0x4e, 0x20, 0x23, 0x28]);
        assert_eq!(&p[24..26], &26u16.to_be_bytes());
        // A header with a correct checksum sums to 0xffff, i.e. checksums to 0.
        assert_eq!(ipv4_checksum(&p[..20]), 0);
    }

    #[test]
    fn checksum_of_a_known_header() {
        // The classic example header; its checksum is 0xb861.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_checksum(&h), 0xb861);
    }
}
