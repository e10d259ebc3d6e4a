//! The MNIST network of Madry et al. (2018), from MadryLab's `mnist_challenge`:
//!
//! ```text
//! conv 5×5×2s (pad 2) → ReLU → maxpool 2 → conv 5×5×4s (pad 2) → ReLU → maxpool 2
//!   → flatten (C, H, W) → fc 7·7·4s → 64s → ReLU → fc 64s → 10
//! ```
//!
//! Scale `s = 16` is the paper's network (32 and 64 filters, fc 1024); the appendix's capacity
//! study uses s = 1, 2, 4, 8, 16. Parameters are named and laid out as PyTorch's `state_dict` of
//! the same model: `conv1.weight` `[2s, 1, 5, 5]`, `conv1.bias`, `conv2.weight` `[4s, 2s, 5, 5]`,
//! `conv2.bias`, `fc1.weight` `[64s, 196s]`, `fc1.bias`, `fc2.weight` `[10, 64s]`, `fc2.bias`.

use std::collections::HashMap;

use saddle_autograd::{Graph, Var};
use saddle_tensor::{rng::Rng, Backend, Conv2dParams};

use crate::error::{ModelError, Result};
use crate::layers::{Builder, Conv2d, Ctx, Init, Linear};
use crate::params::{safetensors_metadata, ParamSet};
use crate::{Classifier, Forward};

/// The paper's MNIST convolutional network.
#[derive(Clone, Debug)]
pub struct MnistNet<B: Backend> {
    backend: B,
    scale: usize,
    params: ParamSet<B>,
    training: bool,
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
    fc2: Linear,
}

/// The architecture name written into safetensors metadata.
pub const ARCH: &str = "mnist";

/// The name files written before the architecture registry carry; read as [`ARCH`].
pub const LEGACY_ARCH: &str = "madry-mnist";

const PAD2: Conv2dParams = Conv2dParams {
    stride: 1,
    padding: 2,
};

/// Parameter names and shapes of the network at capacity scale `s`.
pub fn param_shapes(s: usize) -> Vec<(&'static str, Vec<usize>)> {
    let (c1, c2, f) = (2 * s, 4 * s, 64 * s);
    vec![
        ("conv1.weight", vec![c1, 1, 5, 5]),
        ("conv1.bias", vec![c1]),
        ("conv2.weight", vec![c2, c1, 5, 5]),
        ("conv2.bias", vec![c2]),
        ("fc1.weight", vec![f, 7 * 7 * c2]),
        ("fc1.bias", vec![f]),
        ("fc2.weight", vec![10, f]),
        ("fc2.bias", vec![10]),
    ]
}

impl<B: Backend> MnistNet<B> {
    /// A network at capacity `scale` with PyTorch's default initialisation
    /// (`U(−1/√fan_in, 1/√fan_in)` for weights and biases), seeded.
    ///
    /// # Errors
    /// [`ModelError::Config`] for a scale of 0 or above 64.
    pub fn new(backend: B, scale: usize, seed: u64) -> Result<Self> {
        if scale == 0 || scale > 64 {
            return Err(ModelError::Config(format!(
                "capacity scale {scale} must be between 1 and 64 (16 is the paper's network)"
            )));
        }
        // PyTorch's default: U(−1/√fan_in, 1/√fan_in) for the weight and the bias of a layer,
        // drawn in state_dict order.
        let mut rng = Rng::new(seed);
        let mut params = ParamSet::new();
        let (c1, c2, f) = (2 * scale, 4 * scale, 64 * scale);
        let u = |fan_in: usize| Init::Uniform(1.0 / (fan_in as f32).sqrt());
        let mut bld = Builder::new(&backend, &mut params, &mut rng);
        let conv1 = Conv2d::new(&mut bld, "conv1", [c1, 1, 5], PAD2, u(25), Some(u(25)))?;
        let conv2 = Conv2d::new(
            &mut bld,
            "conv2",
            [c2, c1, 5],
            PAD2,
            u(25 * c1),
            Some(u(25 * c1)),
        )?;
        let fc1 = Linear::new(&mut bld, "fc1", 49 * c2, f, u(49 * c2), Some(u(49 * c2)))?;
        let fc2 = Linear::new(&mut bld, "fc2", f, 10, u(f), Some(u(f)))?;
        Ok(MnistNet {
            backend,
            scale,
            params,
            training: false,
            conv1,
            conv2,
            fc1,
            fc2,
        })
    }

    /// The paper's network (scale 16).
    pub fn paper(backend: B, seed: u64) -> Result<Self> {
        Self::new(backend, 16, seed)
    }

    /// The capacity scale.
    pub fn scale(&self) -> usize {
        self.scale
    }

    /// Loads a network from safetensors bytes. The scale is read from the metadata if present,
    /// otherwise inferred from `conv1.weight`'s shape.
    ///
    /// # Errors
    /// [`ModelError::Format`] for bytes that are not safetensors; [`ModelError::Mismatch`] for
    /// missing tensors, wrong shapes or dtypes, or non-finite values.
    pub fn from_safetensors(backend: B, bytes: &[u8]) -> Result<Self> {
        let meta = safetensors_metadata(bytes)?;
        if let Some(arch) = meta.get("arch") {
            if arch != ARCH && arch != LEGACY_ARCH {
                return Err(ModelError::Mismatch(format!(
                    "the file holds a '{arch}' model, not '{ARCH}'"
                )));
            }
        }
        Self::from_safetensors_unchecked(backend, bytes)
    }

    /// [`MnistNet::from_safetensors`] without the check of the `arch` metadata (the registry
    /// has made it).
    pub(crate) fn from_safetensors_unchecked(backend: B, bytes: &[u8]) -> Result<Self> {
        let meta = safetensors_metadata(bytes)?;
        let scale = match meta.get("scale") {
            Some(s) => s.parse::<usize>().map_err(|_| {
                ModelError::Mismatch(format!("metadata scale '{s}' is not a number"))
            })?,
            None => infer_scale(bytes)?,
        };
        // The network is built before its weights are read: refuse a scale whose weights the
        // file is too short to hold, so that a file's claim cannot make it allocate more than
        // the file's own size.
        if (1..=64).contains(&scale) {
            let need = 4 * param_shapes(scale)
                .iter()
                .map(|(_, dims)| dims.iter().product::<usize>())
                .sum::<usize>();
            if bytes.len() < need {
                return Err(ModelError::Mismatch(format!(
                    "an MNIST network of scale {scale} has {need} bytes of weights, more than \
                     the whole file ({} bytes)",
                    bytes.len()
                )));
            }
        }
        let mut net = Self::new(backend, scale, 0)?;
        let b = net.backend.clone();
        net.params.load_safetensors(&b, bytes, "")?;
        Ok(net)
    }
}

fn infer_scale(bytes: &[u8]) -> Result<usize> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| ModelError::Format(e.to_string()))?;
    let w = st
        .tensor("conv1.weight")
        .map_err(|_| ModelError::Mismatch("tensor conv1.weight is missing".into()))?;
    let c1 = w.shape().first().copied().unwrap_or(0);
    if c1 == 0 || c1 % 2 != 0 {
        return Err(ModelError::Mismatch(format!(
            "conv1.weight has shape {:?}; expected [2s, 1, 5, 5]",
            w.shape()
        )));
    }
    Ok(c1 / 2)
}

impl<B: Backend> Classifier<B> for MnistNet<B> {
    module_accessors!();
    fn num_classes(&self) -> usize {
        10
    }
    fn input_shape(&self) -> [usize; 3] {
        [1, 28, 28]
    }
    fn metadata(&self) -> HashMap<String, String> {
        HashMap::from([
            ("arch".to_string(), ARCH.to_string()),
            ("scale".to_string(), self.scale.to_string()),
            ("format".to_string(), "pt".to_string()),
        ])
    }

    fn forward(&self, g: &Graph<B>, x: Var, param_grads: bool) -> Result<Forward> {
        self.check_input(&g.value(x))?;
        let mut cx = Ctx::new(g, &self.params, param_grads, self.training);
        // conv → ReLU → max-pool as one node each: the backend fuses bias and ReLU into the
        // convolution, and the backward pass routes the pool's and the ReLU's gradient at once.
        let h = self.conv1.forward_relu_max_pool(&mut cx, x, 2)?;
        let h = self.conv2.forward_relu_max_pool(&mut cx, h, 2)?;
        let h = g.flatten(h)?;
        let h = g.relu(self.fc1.forward(&mut cx, h)?)?;
        let logits = self.fc2.forward(&mut cx, h)?;
        Ok(cx.finish(logits))
    }
}

#[cfg(test)]
mod tests {
    use saddle_tensor::cpu::Cpu;

    use super::*;
    use crate::Classifier;

    /// Found by `cargo xtask fuzz`: a scale-1 file whose metadata claims scale 64 made the
    /// loader build the 51-million-parameter network (400 MB) before reading a tensor.
    #[test]
    fn a_scale_the_file_cannot_hold_is_an_error_before_the_network_is_built() {
        let bytes = MnistNet::new(Cpu::new(), 1, 0)
            .unwrap()
            .to_safetensors()
            .unwrap();
        let (from, to) = (&b"\"scale\":\"1\""[..], &b"\"scale\":\"64\""[..]);
        let at = bytes.windows(from.len()).position(|w| w == from);
        let at = at.expect("the metadata names the scale");
        let mut lying = [&bytes[..at], to, &bytes[at + from.len()..]].concat();
        // The header grew by a byte: its length field follows (data offsets are relative).
        let header = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        lying[..8].copy_from_slice(&(header + 1).to_le_bytes());
        let err = MnistNet::from_safetensors(Cpu::new(), &lying).unwrap_err();
        assert!(
            err.to_string().contains("more than the whole file"),
            "{err}"
        );
        assert!(MnistNet::from_safetensors(Cpu::new(), &bytes).is_ok());
    }
}
