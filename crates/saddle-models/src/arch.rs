//! The architecture registry: networks by name, and model files by their `arch` metadata.
//!
//! | name | network |
//! |---|---|
//! | `mnist` | the paper's MNIST network ([`MnistNet`]); its capacity scale is read from the tensor shapes |
//! | `wrn-madry-DEPTH-WIDTH` | the paper's CIFAR-10 wide ResNet, MadryLab's variant (`wrn-madry-34-10`) |
//! | `wrn-DEPTH-WIDTH` | RobustBench's and TRADES' WideResNet (`wrn-28-10`, `wrn-34-10`) |
//!
//! A model file written by saddle names its architecture in the safetensors metadata `arch`; a
//! `state_dict` saved from PyTorch has no metadata, and then the caller names it (the CLI's
//! `--arch`). When both are present they must agree.
//!
//! ```
//! use saddle_models::{Arch, Classifier, Model};
//! use saddle_tensor::cpu::Cpu;
//! let arch: Arch = "wrn-madry-16-2".parse().unwrap();
//! let net = Model::build(&arch, Cpu::new(), 1).unwrap();
//! let bytes = net.to_safetensors().unwrap();          // carries arch = wrn-madry-16-2
//! let back = Model::load(Cpu::new(), &bytes, None).unwrap();
//! assert_eq!(back.arch(), arch);
//! assert!(Model::load(Cpu::new(), &bytes, Some("wrn-16-2")).is_err()); // disagrees with the file
//! ```

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use saddle_autograd::{Graph, Var};
use saddle_tensor::Backend;

use crate::error::{ModelError, Result};
use crate::mnist::{MnistNet, ARCH as MNIST, LEGACY_ARCH};
use crate::params::{safetensors_metadata, ParamSet};
use crate::wrn::{WideResNet, WrnSpec};
use crate::{Classifier, Forward};

/// An architecture of the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// The paper's MNIST network at a capacity scale (16 is the paper's network). Parsed from
    /// `mnist` with no scale: it is then read from a file's metadata or tensor shapes, or given
    /// by the caller when building.
    Mnist {
        /// Capacity scale, if known.
        scale: Option<usize>,
    },
    /// A wide ResNet.
    Wrn(WrnSpec),
}

/// The names the registry knows, for messages.
pub const KNOWN: &str = "mnist, wrn-madry-DEPTH-WIDTH (the paper's CIFAR-10 network is \
                         wrn-madry-34-10), wrn-DEPTH-WIDTH (RobustBench's, e.g. wrn-28-10)";

impl FromStr for Arch {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Arch> {
        let unknown = || ModelError::Config(format!("unknown architecture '{s}'; known: {KNOWN}"));
        if s == MNIST || s == LEGACY_ARCH {
            return Ok(Arch::Mnist { scale: None });
        }
        let (madry, rest) = if let Some(r) = s.strip_prefix("wrn-madry-") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("wrn-") {
            (false, r)
        } else {
            return Err(unknown());
        };
        let (d, w) = rest.split_once('-').ok_or_else(unknown)?;
        let num = |t: &str| {
            t.parse::<usize>()
                .ok()
                .filter(|_| t.bytes().all(|b| b.is_ascii_digit()))
        };
        let (depth, width) = match (num(d), num(w)) {
            (Some(d), Some(w)) => (d, w),
            _ => return Err(unknown()),
        };
        let spec = WrnSpec {
            madry,
            depth,
            width,
        };
        spec.validate()?;
        Ok(Arch::Wrn(spec))
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arch::Mnist { .. } => f.write_str(MNIST),
            Arch::Wrn(s) => f.write_str(&s.name()),
        }
    }
}

impl Arch {
    /// Whether `self` and `other` name the same network (an MNIST scale left open matches any).
    pub fn same_network(&self, other: &Arch) -> bool {
        match (self, other) {
            (Arch::Mnist { scale: a }, Arch::Mnist { scale: b }) => {
                a.is_none() || b.is_none() || a == b
            }
            (Arch::Wrn(a), Arch::Wrn(b)) => a == b,
            _ => false,
        }
    }
}

/// A model of any registered architecture.
#[derive(Clone, Debug)]
pub enum Model<B: Backend> {
    /// The MNIST network.
    Mnist(MnistNet<B>),
    /// A wide ResNet.
    Wrn(WideResNet<B>),
}

impl<B: Backend> Model<B> {
    /// A freshly initialised network of `arch` (an MNIST network without a scale gets the
    /// paper's, 16), seeded.
    ///
    /// # Errors
    /// An invalid configuration.
    pub fn build(arch: &Arch, backend: B, seed: u64) -> Result<Self> {
        Ok(match *arch {
            Arch::Mnist { scale } => {
                Model::Mnist(MnistNet::new(backend, scale.unwrap_or(16), seed)?)
            }
            Arch::Wrn(spec) => Model::Wrn(WideResNet::new(backend, spec, seed)?),
        })
    }

    /// Loads a model file. The architecture is the file's `arch` metadata or `arch`; with both,
    /// they must agree; with neither (a `state_dict` saved from PyTorch), it is an error asking
    /// for the name.
    ///
    /// # Errors
    /// [`ModelError::Format`] for bytes that are not safetensors; [`ModelError::Config`] for an
    /// unknown, missing or disagreeing architecture; [`ModelError::Mismatch`] naming the first
    /// tensor that does not fit the architecture, with its expected and actual shape.
    pub fn load(backend: B, bytes: &[u8], arch: Option<&str>) -> Result<Self> {
        let meta = safetensors_metadata(bytes)?;
        let given = arch.map(str::parse::<Arch>).transpose()?;
        let stored = match meta.get("arch") {
            Some(a) => Some(
                a.parse::<Arch>()
                    .map_err(|e| ModelError::Config(format!("the file's metadata arch: {e}")))?,
            ),
            None => None,
        };
        let arch = match (given, stored) {
            (Some(g), Some(s)) if !g.same_network(&s) => {
                return Err(ModelError::Config(format!(
                    "the architecture given, {g}, is not the file's ({s}, from its metadata)"
                )))
            }
            (_, Some(s)) => s,
            (Some(g), None) => g,
            (None, None) => {
                return Err(ModelError::Config(format!(
                    "the file does not say its architecture (no `arch` metadata, as in a \
                     state_dict saved from PyTorch): name it (the CLI's --arch); known: {KNOWN}"
                )))
            }
        };
        Ok(match arch {
            Arch::Mnist { .. } => {
                Model::Mnist(MnistNet::from_safetensors_unchecked(backend, bytes)?)
            }
            Arch::Wrn(spec) => {
                // Built before its weights are read: a file must be able to hold them, so that
                // a claim in it (`arch` = wrn-1000-32) cannot make the loader allocate more
                // than the file's size.
                spec.validate()?;
                if (bytes.len() as u64) < spec.min_file_bytes() {
                    return Err(ModelError::Mismatch(format!(
                        "a {} network has at least {} bytes of weights, more than the whole \
                         file ({} bytes)",
                        spec.name(),
                        spec.min_file_bytes(),
                        bytes.len()
                    )));
                }
                let mut net = WideResNet::new(backend, spec, 0)?;
                let b = net.backend().clone();
                net.params_mut().load_safetensors(&b, bytes, "")?;
                Model::Wrn(net)
            }
        })
    }

    /// The architecture, with the MNIST scale.
    pub fn arch(&self) -> Arch {
        match self {
            Model::Mnist(m) => Arch::Mnist {
                scale: Some(m.scale()),
            },
            Model::Wrn(w) => Arch::Wrn(w.spec()),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $m:ident => $e:expr) => {
        match $self {
            Model::Mnist($m) => $e,
            Model::Wrn($m) => $e,
        }
    };
}

impl<B: Backend> Classifier<B> for Model<B> {
    fn backend(&self) -> &B {
        delegate!(self, m => m.backend())
    }
    fn num_classes(&self) -> usize {
        delegate!(self, m => m.num_classes())
    }
    fn input_shape(&self) -> [usize; 3] {
        delegate!(self, m => m.input_shape())
    }
    fn params(&self) -> &ParamSet<B> {
        delegate!(self, m => m.params())
    }
    fn params_mut(&mut self) -> &mut ParamSet<B> {
        delegate!(self, m => m.params_mut())
    }
    fn is_training(&self) -> bool {
        delegate!(self, m => m.is_training())
    }
    fn set_training(&mut self, training: bool) {
        delegate!(self, m => m.set_training(training))
    }
    fn metadata(&self) -> HashMap<String, String> {
        delegate!(self, m => m.metadata())
    }
    fn forward(&self, g: &Graph<B>, x: Var, param_grads: bool) -> Result<Forward> {
        delegate!(self, m => m.forward(g, x, param_grads))
    }
    fn commit_state(&mut self, g: &Graph<B>, f: &Forward) -> Result<()> {
        delegate!(self, m => m.commit_state(g, f))
    }
}

#[cfg(test)]
mod tests {
    use saddle_tensor::cpu::Cpu;

    use super::*;

    /// Found by `cargo xtask fuzz`: a small file whose `arch` metadata names a far larger wide
    /// ResNet made the loader build that network before reading a tensor.
    #[test]
    fn a_network_the_file_cannot_hold_is_an_error_before_it_is_built() {
        let arch: Arch = "wrn-10-1".parse().unwrap();
        let bytes = Model::build(&arch, Cpu::new(), 0)
            .unwrap()
            .to_safetensors()
            .unwrap();
        let from = &b"\"wrn-10-1\""[..];
        let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
        for big in ["wrn-10-32", "wrn-994-32"] {
            // The metadata names another network; the header's length field is kept in step.
            let to = format!("\"{big}\"");
            let mut lying = [&bytes[..at], to.as_bytes(), &bytes[at + from.len()..]].concat();
            let header = u64::from_le_bytes(bytes[..8].try_into().unwrap());
            let grown = header + (to.len() - from.len()) as u64;
            lying[..8].copy_from_slice(&grown.to_le_bytes());
            let err = Model::load(Cpu::new(), &lying, None).unwrap_err();
            assert!(
                err.to_string().contains("more than the whole file"),
                "{big}: {err}"
            );
        }
        assert!(Model::load(Cpu::new(), &bytes, None).is_ok());
        // The bound is below the real size of every network (checked on a few).
        for name in ["wrn-10-1", "wrn-16-2", "wrn-madry-16-1", "wrn-22-1"] {
            let arch: Arch = name.parse().unwrap();
            let Arch::Wrn(spec) = arch else {
                unreachable!()
            };
            let file = Model::build(&arch, Cpu::new(), 0)
                .unwrap()
                .to_safetensors()
                .unwrap();
            assert!(spec.min_file_bytes() <= file.len() as u64, "{name}");
            assert!(
                spec.min_file_bytes() * 2 > file.len() as u64,
                "{name}: a loose bound"
            );
        }
    }
}
