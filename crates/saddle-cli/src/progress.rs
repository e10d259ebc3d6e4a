//! Progress of a long command: a bar on a terminal, and where stderr is a file or a pipe (a
//! log, `cargo xtask repro`), one plain line at least once a minute.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar that also logs.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    what: &'static str,
    /// Seconds between plain lines; `None` on a terminal (the bar shows it).
    every: Option<Duration>,
    start: Instant,
    last: Instant,
    /// The position at `start` (a resumed run's first step).
    from: u64,
}

impl Progress {
    /// Progress of `len` units of `what` (`"training"`, `"evaluation"`). The plain lines come
    /// every 60 s, or every `SADDLE_PROGRESS_SECS` seconds (0: at every update).
    pub fn new(len: u64, what: &'static str) -> Result<Self> {
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} ETA {eta} {msg}",
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .progress_chars("=> "),
        );
        let secs = std::env::var("SADDLE_PROGRESS_SECS")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or(60.0);
        let every = (!std::io::stderr().is_terminal()).then(|| Duration::from_secs_f64(secs));
        let now = Instant::now();
        Ok(Progress {
            bar,
            what,
            every,
            start: now,
            last: now,
            from: 0,
        })
    }

    /// Starts at `pos` (a resumed run): the rate and ETA count from here.
    pub fn resume_at(&mut self, pos: u64) {
        self.bar.set_position(pos);
        self.from = pos;
    }

    /// Moves to `pos` with `msg`.
    pub fn set(&mut self, pos: u64, msg: impl Into<String>) {
        self.bar.set_position(pos);
        self.bar.set_message(msg.into());
        self.log();
    }

    /// Moves on by `n`.
    pub fn inc(&mut self, n: u64) {
        self.bar.inc(n);
        self.log();
    }

    /// Prints a line above the bar (on a terminal) or into the log.
    pub fn println(&self, line: impl AsRef<str>) {
        if self.every.is_some() {
            eprintln!("{}", line.as_ref());
        } else {
            self.bar.println(line.as_ref());
        }
    }

    /// Sets the message only.
    pub fn message(&mut self, msg: impl Into<String>) {
        self.bar.set_message(msg.into());
    }

    fn log(&mut self) {
        let Some(every) = self.every else { return };
        if self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let (pos, len) = (self.bar.position(), self.bar.length().unwrap_or(0));
        let secs = self.start.elapsed().as_secs_f64();
        let done = pos.saturating_sub(self.from);
        let eta = if done > 0 && len >= pos {
            let left = secs * (len - pos) as f64 / done as f64;
            format!(", ETA {:.1} min", left / 60.0)
        } else {
            String::new()
        };
        eprintln!(
            "{}: {pos}/{len} ({:.0}%) after {:.1} min{eta}: {}",
            self.what,
            100.0 * pos as f64 / len.max(1) as f64,
            secs / 60.0,
            self.bar.message()
        );
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
