//! `cargo xtask repro`: placeholder until the task is implemented.

/// Arguments of `cargo xtask repro` (none yet; anything given is accepted and ignored).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Arguments for the future implementation.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub rest: Vec<String>,
}

/// Fails with a clear "not yet implemented" message.
pub fn run(_args: Args) -> anyhow::Result<()> {
    crate::not_yet_implemented("repro")
}
