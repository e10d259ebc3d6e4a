//! The compute kernels: one WGSL file each in this crate's `shaders/` folder (the workspace's
//! top-level `shaders/` is a link to it), embedded with `include_str!`, each with a single entry
//! point `main`. The files live inside the crate so that it packages and builds on its own.
//!
//! **Preludes.** Code that several kernels share (the tiled GEMM core, the DLR top-4) lives in
//! `shaders/prelude_*.wgsl` ([`PRELUDES`]). A kernel pulls one in with a line of its own,
//! `//! include prelude_gemm.wgsl` (a WGSL comment, so editors and linters read the file as
//! WGSL); [`Kernel::wgsl`] replaces the line with the prelude's text when the pipeline is built.
//! An unknown name, or an include inside a prelude, is an error naming the file and line.

use std::borrow::Cow;

use saddle_tensor::{Result, TensorError};

/// The directive that includes a prelude: `//! include <file name>` on a line of its own.
pub const INCLUDE_DIRECTIVE: &str = "//! include ";

/// Shared WGSL code, by file name in `shaders/`: what a kernel may include.
pub const PRELUDES: &[(&str, &str)] = &[
    (
        "prelude_gemm.wgsl",
        include_str!("../shaders/prelude_gemm.wgsl"),
    ),
    (
        "prelude_dlr.wgsl",
        include_str!("../shaders/prelude_dlr.wgsl"),
    ),
];

/// `source` (the text of the file `name`) with every `//! include <prelude>` line replaced by the
/// prelude's text (one level: preludes include nothing).
///
/// # Errors
/// [`TensorError::InvalidArgument`] naming the file, the line and the preludes that exist when an
/// include names no prelude, or when a prelude itself includes one.
pub fn resolve_includes<'a>(name: &str, source: &'a str) -> Result<Cow<'a, str>> {
    if !source.contains(INCLUDE_DIRECTIVE) {
        return Ok(Cow::Borrowed(source));
    }
    let mut out = String::with_capacity(source.len() + 4096);
    for (i, line) in source.lines().enumerate() {
        let Some(target) = line.trim().strip_prefix(INCLUDE_DIRECTIVE.trim_end()) else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let target = target.trim();
        let where_ = format!("{name}, line {}", i + 1);
        if PRELUDES.iter().any(|&(p, _)| p == name) {
            return Err(TensorError::invalid(
                "wgsl include",
                format!("{where_}: a prelude cannot include another (`{target}`)"),
            ));
        }
        let Some(&(_, text)) = PRELUDES.iter().find(|&&(p, _)| p == target) else {
            let known: Vec<&str> = PRELUDES.iter().map(|&(p, _)| p).collect();
            return Err(TensorError::invalid(
                "wgsl include",
                format!(
                    "{where_}: unknown include `{target}` (the preludes are {})",
                    known.join(", ")
                ),
            ));
        };
        out.push_str(&format!("// ---- begin {target} ----\n"));
        out.push_str(text);
        if !text.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("// ---- end {target} ----\n"));
    }
    Ok(Cow::Owned(out))
}

macro_rules! kernels {
    ($($(#[$doc:meta])* $variant:ident => $file:literal,)*) => {
        /// A compute kernel of this crate, named after its file in `shaders/`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kernel {
            $($(#[$doc])* $variant,)*
        }

        impl Kernel {
            /// Every kernel, in declaration order.
            pub const ALL: &'static [Kernel] = &[$(Kernel::$variant,)*];

            /// The kernel's file name in `shaders/`.
            pub fn file_name(self) -> &'static str {
                match self {
                    $(Kernel::$variant => $file,)*
                }
            }

            /// The kernel's file as written, embedded at compile time (with its include lines).
            pub fn source(self) -> &'static str {
                match self {
                    $(Kernel::$variant => include_str!(concat!("../shaders/", $file)),)*
                }
            }

            /// The WGSL the device compiles: [`Kernel::source`] with its preludes included.
            ///
            /// # Errors
            /// As [`resolve_includes`] (an unknown include).
            pub fn wgsl(self) -> Result<Cow<'static, str>> {
                resolve_includes(self.file_name(), self.source())
            }
        }
    };
}

kernels! {
    /// Fill with a constant.
    Fill => "fill.wgsl",
    /// Element-wise ops of one input: affine, sqrt, sign, clamp, ReLU, leaky ReLU.
    Unary => "unary.wgsl",
    /// Broadcasting add, sub, mul, div, minimum, maximum.
    Binary => "binary.wgsl",
    /// Gradients of ReLU and leaky ReLU.
    ActivationBackward => "activation_backward.wgsl",
    /// Sum over axes, one workgroup per output (long reductions).
    SumAxes => "sum_axes.wgsl",
    /// Sum over axes, one thread per output (short reductions, many outputs).
    SumAxesThread => "sum_axes_thread.wgsl",
    /// Tiled matrix product with optional transposes and split-K.
    Matmul => "matmul.wgsl",
    /// Convolution as a tiled implicit GEMM.
    Conv2d => "conv2d.wgsl",
    /// Input gradient of the convolution as a tiled implicit GEMM.
    Conv2dBackwardInput => "conv2d_backward_input.wgsl",
    /// Input gradient of the convolution, one thread per input element (few channels).
    Conv2dBackwardInputDirect => "conv2d_backward_input_direct.wgsl",
    /// Weight gradient of the convolution as a tiled implicit GEMM with split-K.
    Conv2dBackwardWeight => "conv2d_backward_weight.wgsl",
    /// Max-pool.
    MaxPool2d => "max_pool2d.wgsl",
    /// Gradient of max-pool.
    MaxPool2dBackward => "max_pool2d_backward.wgsl",
    /// Per-example softmax cross-entropy.
    CrossEntropy => "cross_entropy.wgsl",
    /// Gradient of the cross-entropy with respect to the logits.
    CrossEntropyBackward => "cross_entropy_backward.wgsl",
    /// Per-example CW margin loss.
    CwLoss => "cw_loss.wgsl",
    /// Gradient of the CW loss with respect to the logits.
    CwLossBackward => "cw_loss_backward.wgsl",
    /// Per-example DLR loss (untargeted or targeted), a top-4 of each row.
    DlrLoss => "dlr_loss.wgsl",
    /// Gradient of the DLR loss with respect to the logits.
    DlrLossBackward => "dlr_loss_backward.wgsl",
    /// Each example's row times its own scalar.
    MulRows => "mul_rows.wgsl",
    /// Per-example select between two batches.
    SelectRows => "select_rows.wgsl",
    /// One restart merged into the best so far (multi-restart attacks).
    RestartMerge => "restart_merge.wgsl",
    /// Per-channel batch mean and variance.
    BatchNormStats => "batch_norm_stats.wgsl",
    /// Per-channel normalisation with given statistics.
    BatchNormApply => "batch_norm_apply.wgsl",
    /// Per-channel sums of the batch-norm backward pass.
    BatchNormBackwardReduce => "batch_norm_backward_reduce.wgsl",
    /// Input gradient of batch norm in training mode.
    BatchNormBackwardInput => "batch_norm_backward_input.wgsl",
    /// Fused L∞ PGD step (and L∞ projection).
    PgdStepLinf => "pgd_step_linf.wgsl",
    /// Fused L2 PGD step (and L2 projection), one workgroup per example.
    PgdStepL2 => "pgd_step_l2.wgsl",
    /// Fused in-place Adam update.
    AdamUpdate => "adam_update.wgsl",
    /// Fused in-place SGD update with momentum and weight decay.
    SgdUpdate => "sgd_update.wgsl",
}
