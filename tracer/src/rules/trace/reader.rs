//! The netlink socket the trace events arrive on.

use std::{
    io::ErrorKind,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
};

use anyhow::{Context as _, Result};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use super::event::{NFNLGRP_NFTRACE, TraceEvent, decode};

/// A netlink socket receiving the nftables trace events of the namespace it
/// was opened in. Non-blocking: poll its fd (e.g. tokio `AsyncFd`) and call
/// [`TraceReader::read`] when it is readable.
pub struct TraceReader {
    socket: Socket,
    buf: Vec<u8>,
    overruns: u64,
}

impl TraceReader {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> Result<TraceReader> {
        let mut socket = Socket::new(NETLINK_NETFILTER).context("netfilter netlink socket")?;
        socket.bind_auto().context("netlink bind")?;
        socket
            .add_membership(NFNLGRP_NFTRACE)
            .context("subscribe to nftables trace events")?;
        socket
            .set_non_blocking(true)
            .context("netlink non-blocking")?;
        // A burst of traced packets makes several events each: a large buffer
        // (beyond rmem_max, as root may) keeps the kernel from dropping them.
        let size: libc::c_int = 8 << 20;
        // SAFETY: setsockopt with a pointer to a c_int of the given size.
        let forced = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        } == 0;
        if !forced {
            let _ = socket.set_rx_buf_sz(size as usize);
        }
        Ok(TraceReader {
            socket,
            buf: vec![0; 1 << 16],
            overruns: 0,
        })
    }

    /// Every event received so far, without blocking: reads until the socket
    /// would block (so an `AsyncFd` guard may then be cleared).
    pub fn read(&mut self) -> Result<Vec<TraceEvent>> {
        let mut events = Vec::new();
        self.read_with(|buf| events.extend(decode(buf)))?;
        Ok(events)
    }

    /// How many times the kernel had to drop events because the socket
    /// buffer was full (`ENOBUFS`): when non-zero, counts are lower bounds.
    pub fn overruns(&self) -> u64 {
        self.overruns
    }

    fn read_with(&mut self, mut f: impl FnMut(&[u8])) -> Result<()> {
        loop {
            match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => f(&self.buf[..n.min(self.buf.len())]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => self.overruns += 1,
                Err(e) => return Err(e).context("read nftables trace events"),
            }
        }
    }

    /// The raw datagrams, for capturing fixtures.
    pub fn read_raw(&mut self) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        self.read_with(|buf| out.push(buf.to_vec()))?;
        Ok(out)
    }
}

impl AsRawFd for TraceReader {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl AsFd for TraceReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}
