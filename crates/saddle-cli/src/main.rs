//! The `saddle` binary; everything it does is [`saddle_cli::main_with_args`].

use std::process::ExitCode;

fn main() -> ExitCode {
    // Errors are reported as one line; a panic (a bug) is reported the same way, without a
    // backtrace, and with a request to report it.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        eprintln!("saddle: internal error (please report it): {msg}");
    }));
    saddle_cli::main_with_args(std::env::args_os())
}
