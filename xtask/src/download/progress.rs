//! Progress bars (indicatif), drawn on stderr only when it is a terminal.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `len` bytes (a spinner with a byte count when the length is unknown).
pub fn bytes(len: Option<u64>, msg: impl Into<String>) -> ProgressBar {
    let bar = match len {
        Some(len) => ProgressBar::new(len).with_style(style(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )),
        None => {
            ProgressBar::new_spinner().with_style(style("{spinner} {msg} {bytes} {bytes_per_sec}"))
        }
    };
    bar.set_message(msg.into());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A bar over `len` items.
pub fn items(len: u64, msg: impl Into<String>) -> ProgressBar {
    let bar = ProgressBar::new(len).with_style(style("{msg} [{bar:30}] {pos}/{len} eta {eta}"));
    bar.set_message(msg.into());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A spinner with the elapsed time, for work of unknown length (a subprocess).
pub fn spinner(msg: impl Into<String>) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_style(style("{spinner} {msg} ({elapsed})"));
    bar.set_message(msg.into());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}
