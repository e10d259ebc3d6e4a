//! The compute kernels: one WGSL file each in this crate's `shaders/` folder (the workspace's
//! top-level `shaders/` is a link to it), embedded with `include_str!`, each with a single entry
//! point `main`. The files live inside the crate so that it packages and builds on its own.

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

            /// The kernel's WGSL source, embedded at compile time.
            pub fn source(self) -> &'static str {
                match self {
                    $(Kernel::$variant => include_str!(concat!("../shaders/", $file)),)*
                }
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
