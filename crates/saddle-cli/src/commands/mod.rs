//! The subcommands and what they share.

pub mod attack;
pub mod capacity;
pub mod eval;
pub mod inspect;
pub mod landscape;
pub mod train;
pub mod transfer;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use saddle_models::{Classifier, Model};
use saddle_tensor::{cpu::Cpu, Backend};
use saddle_wgsl::{DeviceChoice, Wgpu};

use crate::{fsutil, npy, Device, PredictArgs};

/// Where a command computes: the options every subcommand that runs a model shares.
#[derive(clap::Args, Debug, Clone)]
pub struct Compute {
    /// Compute device.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// Worker threads of the CPU backend (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// [`Compute`] and where the data sets are: the options of every subcommand that reads one.
#[derive(clap::Args, Debug, Clone)]
pub struct Run {
    #[command(flatten)]
    pub compute: Compute,
    /// The datasets folder (default: $SADDLE_DATASETS or ./datasets).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Runs a command's body on a pool of `threads` worker threads (default: one per core).
///
/// The body runs *on* a worker, so the CPU backend's parallel loops start inside the pool
/// instead of being injected from outside (rayon's injection queue allocates a block every few
/// dozen jobs, and each hand-over costs a wake-up): after warm-up a training step or a PGD step
/// then allocates nothing, from the CLI as in the benches.
pub fn in_pool<T: Send>(
    threads: Option<usize>,
    body: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    let mut builder = rayon::ThreadPoolBuilder::new().stack_size(16 << 20);
    if let Some(t) = threads {
        if t == 0 {
            bail!("--threads must be at least 1");
        }
        builder = builder.num_threads(t);
    }
    let pool = builder.build().context("cannot start the worker threads")?;
    pool.install(body)
}

/// The backend chosen by `--device`.
pub enum AnyBackend {
    /// The CPU backend.
    Cpu(Cpu),
    /// The wgpu backend.
    Gpu(Wgpu),
}

/// Resolves `--device`: `cpu`; `gpu` (a real GPU through wgpu, or an error saying what is
/// missing); `auto` (a real GPU when there is one, else the CPU).
pub fn backend(device: Device) -> Result<AnyBackend> {
    Ok(match device {
        Device::Cpu => AnyBackend::Cpu(Cpu::new()),
        Device::Gpu => AnyBackend::Gpu(Wgpu::new(DeviceChoice::Gpu).context("--device gpu")?),
        Device::Any => AnyBackend::Gpu(Wgpu::new(DeviceChoice::Any).context("--device any")?),
        Device::Auto => match Wgpu::auto().context("--device auto")? {
            Some(w) => AnyBackend::Gpu(w),
            None => AnyBackend::Cpu(Cpu::new()),
        },
    })
}

/// Runs `$body` with `$b` bound to the backend `--device` selects (monomorphised per backend).
macro_rules! with_backend {
    ($device:expr, |$b:ident| $body:expr) => {
        match $crate::commands::backend($device)? {
            $crate::commands::AnyBackend::Cpu($b) => $body,
            $crate::commands::AnyBackend::Gpu($b) => {
                eprintln!("device: {}", saddle_tensor::Backend::name(&$b));
                $body
            }
        }
    };
}
pub(crate) use with_backend;

/// Loads a model from a safetensors file: its architecture is `arch` (the `--arch` flag) or the
/// file's `arch` metadata, which must agree when both are there.
pub fn load_model<B: Backend>(b: &B, path: &Path, arch: Option<&str>) -> Result<Model<B>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read model {}", path.display()))?;
    Model::load(b.clone(), &bytes, arch).with_context(|| format!("model {}", path.display()))
}

/// Reads a batch of images for `model` from a `.npy` file into host memory, checking shape and
/// range.
pub fn read_images<B: Backend, M: Classifier<B>>(model: &M, path: &Path) -> Result<npy::Array> {
    let a = npy::read(path)?;
    let [c, h, w] = model.input_shape();
    if a.shape.len() != 4 || a.shape[1..] != [c, h, w] {
        bail!(
            "{}: images must have shape [n, {c}, {h}, {w}] (float32 NCHW), not {:?}",
            path.display(),
            a.shape
        );
    }
    if let Some(i) = a.data.iter().position(|v| !(0.0..=1.0).contains(v)) {
        bail!(
            "{}: pixel values must be in [0, 1]; element {i} is {} (divide 8-bit images by 255)",
            path.display(),
            a.data[i]
        );
    }
    Ok(a)
}

/// Reads a batch of images for `model` from a `.npy` file onto the backend.
pub fn load_images<B: Backend, M: Classifier<B>>(
    b: &B,
    model: &M,
    path: &Path,
) -> Result<B::Tensor> {
    let a = read_images(model, path)?;
    Ok(b.from_vec(&a.shape, a.data)?)
}

/// Reads labels `[n]` from a `.npy` file, checking that they are class indices.
pub fn load_labels<B: Backend>(b: &B, path: &Path, n: usize, classes: usize) -> Result<B::Tensor> {
    let a = npy::read(path)?;
    if a.shape != [n] {
        bail!(
            "{}: labels must have shape [{n}] to match the images, not {:?}",
            path.display(),
            a.shape
        );
    }
    if let Some(i) = a
        .data
        .iter()
        .position(|&v| !(v >= 0.0 && v.fract() == 0.0 && (v as usize) < classes))
    {
        bail!(
            "{}: label {} at position {i} is not a class in 0..{classes}",
            path.display(),
            a.data[i]
        );
    }
    Ok(b.from_vec(&[n], a.data)?)
}

/// `saddle predict`.
pub fn predict(a: PredictArgs) -> Result<()> {
    in_pool(a.compute.threads, || {
        crate::commands::with_backend!(a.compute.device, |b| predict_on(&b, &a))
    })
}

fn predict_on<B: Backend>(b: &B, a: &PredictArgs) -> Result<()> {
    let model = load_model(b, &a.model, a.arch.as_deref())?;
    // Chunks go to the backend straight from the file's host copy.
    let x = read_images(&model, &a.inputs)?;
    let n = x.shape[0];
    let per = x.data.len() / n.max(1);
    let mut out = Vec::with_capacity(n * model.num_classes());
    let bs = 500;
    for s in (0..n).step_by(bs) {
        let e = (s + bs).min(n);
        let mut shape = x.shape.clone();
        shape[0] = e - s;
        let xb = b.from_vec(&shape, x.data[s * per..e * per].to_vec())?;
        out.extend(b.to_vec(&model.logits(&xb)?)?);
    }
    // A finite model on finite pixels can still overflow (weights near f32::MAX): say so
    // instead of writing infinities as if they were logits.
    if let Some(i) = out.iter().position(|v| !v.is_finite()) {
        let k = model.num_classes();
        bail!(
            "the model's logit {} of image {} is {}: its weights overflow float32 on this \
             input; nothing was written",
            i % k,
            i / k,
            out[i]
        );
    }
    fsutil::write_atomic(&a.out, &npy::encode_f32(&[n, model.num_classes()], &out))?;
    eprintln!(
        "wrote logits [{n}, {}] to {}",
        model.num_classes(),
        a.out.display()
    );
    Ok(())
}
