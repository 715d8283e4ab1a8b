//! The live view for a terminal (ratatui on crossterm): paths, drops and
//! verdicts, cumulative since start, with keys for sort, filter, pause,
//! hop-by-hop detail, help and quit.
//!
//! The view draws on the session's thread, when a report comes and when a
//! key does: a thread of its own only reads the terminal's events and hands
//! them to the session's loop, which passes them to [`LiveSink::input`] (and
//! stops, as on SIGINT, when that says quit). The state ([`state`]) is
//! separate from the drawing ([`render`]), which tests run on ratatui's
//! `TestBackend`.

pub mod render;
pub mod state;
#[cfg(test)]
mod tests;

use std::{
    io::{self, Write as _},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use ratatui::{
    DefaultTerminal,
    crossterm::event::{self, Event},
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::{Report, Scope, Sink, text};
use crate::{filter::Filter, topology::links::Links};
use state::State;

/// The terminal's events (keys, resizes), read on a thread of their own.
pub type Events = UnboundedReceiver<Event>;

/// The live view on the terminal. Dropping it gives the terminal back and
/// prints the run's totals.
pub struct LiveSink {
    terminal: DefaultTerminal,
    state: State,
    /// The totals, printed once the terminal is given back.
    total: Option<Report>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl LiveSink {
    /// How the traced devices connect now.
    pub fn set_links(&mut self, links: Links) {
        self.state.set_links(links);
    }

    /// Takes over the terminal and draws the view; `filter` is the initial
    /// filter. The terminal's events come on the returned channel.
    pub fn start(links: Links, filter: Option<Filter>) -> io::Result<(Self, Events)> {
        let terminal = ratatui::try_init()?;
        let (tx, rx) = unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("terminal events".into())
                .spawn(move || read_events(&tx, &stop))
        };
        let reader = match reader {
            Ok(r) => r,
            Err(e) => {
                ratatui::restore();
                return Err(e);
            }
        };
        let mut sink = LiveSink {
            terminal,
            state: State::new(links, filter),
            total: None,
            stop,
            reader: Some(reader),
        };
        sink.draw()?;
        Ok((sink, rx))
    }

    fn draw(&mut self) -> io::Result<()> {
        let state = &self.state;
        self.terminal.draw(|f| render::draw(f, state))?;
        Ok(())
    }

    /// A key or resize; true when the user asked to quit.
    pub fn input(&mut self, ev: Event) -> io::Result<bool> {
        match ev {
            Event::Key(k) => self.state.key(k),
            Event::Resize(..) => {}
            _ => return Ok(false),
        }
        self.draw()?;
        Ok(self.state.quit)
    }
}

/// Forwards the terminal's events until told to stop or nobody listens.
fn read_events(tx: &UnboundedSender<Event>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        // Polling with a timeout lets the thread notice `stop`.
        match event::poll(Duration::from_millis(100)) {
            Ok(true) => match event::read().map(|ev| tx.send(ev)) {
                Ok(Ok(())) => {}
                _ => return,
            },
            Ok(false) => {}
            Err(_) => return,
        }
    }
}

impl Sink for LiveSink {
    fn report(&mut self, report: &Report) -> io::Result<()> {
        if report.scope == Scope::Total {
            self.total = Some(report.clone());
            return Ok(());
        }
        self.state.report(report.clone());
        self.draw()
    }
}

impl Drop for LiveSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        ratatui::restore();
        if let Some(mut t) = self.total.take() {
            if let Some(f) = &self.state.filter {
                f.retain(&mut t);
            }
            if let Err(e) = print_totals(&t) {
                eprintln!("tracer: print totals: {e}");
            }
        }
    }
}
/// What stays on the terminal after the view: the run's paths, drops and
/// dropping verdicts, as text lines.
fn print_totals(t: &Report) -> io::Result<()> {
    let mut out = io::stdout().lock();
    for p in &t.paths {
        writeln!(out, "{}", text::path_line(t.scope, p))?;
    }
    for d in &t.drops {
        writeln!(out, "{}", text::drop_line(t.scope, d))?;
    }
    for v in t.verdicts.iter().filter(|v| v.counts.dropped() > 0) {
        writeln!(out, "{}", text::verdict_line(t.scope, v))?;
    }
    out.flush()
}
