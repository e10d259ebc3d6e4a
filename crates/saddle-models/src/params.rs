//! Named parameter sets and their safetensors form.

use std::collections::HashMap;

use saddle_tensor::{Backend, TensorLike};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{ModelError, Result};

/// A tensor copied to the host: `(name, shape, little-endian f32 bytes)`.
pub type HostTensor = (String, Vec<usize>, Vec<u8>);

/// An ordered set of named tensors (a model's parameters, an optimiser's state), named as in
/// PyTorch's `state_dict`.
#[derive(Clone, Debug)]
pub struct ParamSet<B: Backend> {
    names: Vec<String>,
    tensors: Vec<B::Tensor>,
}

impl<B: Backend> Default for ParamSet<B> {
    fn default() -> Self {
        ParamSet {
            names: Vec::new(),
            tensors: Vec::new(),
        }
    }
}

impl<B: Backend> ParamSet<B> {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a tensor under `name`.
    ///
    /// # Errors
    /// [`ModelError::Mismatch`] if the name is already present.
    pub fn push(&mut self, name: impl Into<String>, t: B::Tensor) -> Result<()> {
        let name = name.into();
        if self.names.contains(&name) {
            return Err(ModelError::Mismatch(format!(
                "parameter {name} given twice"
            )));
        }
        self.names.push(name);
        self.tensors.push(t);
        Ok(())
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The names, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The tensors, in order.
    pub fn tensors(&self) -> &[B::Tensor] {
        &self.tensors
    }

    /// Mutable tensors, in order.
    pub fn tensors_mut(&mut self) -> &mut [B::Tensor] {
        &mut self.tensors
    }

    /// The position of `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The tensor named `name`.
    pub fn get(&self, name: &str) -> Option<&B::Tensor> {
        self.index_of(name).map(|i| &self.tensors[i])
    }

    /// Pairs of name and tensor.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &B::Tensor)> {
        self.names
            .iter()
            .map(String::as_str)
            .zip(self.tensors.iter())
    }

    /// Total number of scalar parameters.
    pub fn numel(&self) -> usize {
        self.tensors.iter().map(|t| t.numel()).sum()
    }

    /// Replaces every tensor with the one of the same name in `bytes` (a safetensors file),
    /// checking that each is present, `F32`, and of the same shape. Other tensors in the file
    /// are ignored, so a checkpoint holding optimiser state loads too.
    ///
    /// # Errors
    /// [`ModelError::Format`] for a file that is not safetensors; [`ModelError::Mismatch`]
    /// naming the tensor for a missing name, another dtype or another shape.
    pub fn load_safetensors(&mut self, backend: &B, bytes: &[u8], prefix: &str) -> Result<()> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Format(e.to_string()))?;
        let mut loaded = Vec::with_capacity(self.len());
        for (name, cur) in self.iter() {
            let key = format!("{prefix}{name}");
            let view = st.tensor(&key).map_err(|_| {
                ModelError::Mismatch(format!(
                    "tensor {key} is missing (the file holds: {})",
                    summarize_names(&st)
                ))
            })?;
            if view.dtype() != Dtype::F32 {
                return Err(ModelError::Mismatch(format!(
                    "tensor {key} is {:?}, expected F32",
                    view.dtype()
                )));
            }
            if view.shape() != cur.dims() {
                return Err(ModelError::Mismatch(format!(
                    "tensor {key} has shape {:?}, expected {:?}",
                    view.shape(),
                    cur.dims()
                )));
            }
            let data = f32_from_le(view.data());
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                return Err(ModelError::Mismatch(format!(
                    "tensor {key} holds a non-finite value ({}) at flat index {i}",
                    data[i]
                )));
            }
            loaded.push(backend.from_vec(view.shape(), data)?);
        }
        self.tensors = loaded;
        Ok(())
    }

    /// The tensors as `(prefix + name, shape, little-endian f32 bytes)`, copied to the host.
    pub fn to_host(&self, backend: &B, prefix: &str) -> Result<Vec<HostTensor>> {
        self.iter()
            .map(|(n, t)| {
                let v = backend.to_vec(t)?;
                Ok((format!("{prefix}{n}"), t.dims().to_vec(), f32_to_le(&v)))
            })
            .collect()
    }
}

/// Serialises named f32 tensors `(name, shape, little-endian bytes)` and metadata to the
/// safetensors format.
///
/// # Errors
/// [`ModelError::Format`] if safetensors refuses (duplicate names, inconsistent sizes).
pub fn serialize_safetensors(
    tensors: &[HostTensor],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, b)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| ModelError::Format(format!("tensor {n}: {e}")))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, Some(metadata)).map_err(|e| ModelError::Format(e.to_string()))
}

/// Reads the metadata map of a safetensors file.
pub fn safetensors_metadata(bytes: &[u8]) -> Result<HashMap<String, String>> {
    let (_, meta) =
        SafeTensors::read_metadata(bytes).map_err(|e| ModelError::Format(e.to_string()))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

fn summarize_names(st: &SafeTensors<'_>) -> String {
    let mut names = st.names();
    names.sort();
    let n = names.len();
    let mut s: Vec<String> = names.into_iter().take(12).map(str::to_string).collect();
    if n > 12 {
        s.push(format!("… {} more", n - 12));
    }
    if s.is_empty() {
        "no tensors".into()
    } else {
        s.join(", ")
    }
}

/// Decodes little-endian f32 bytes.
pub fn f32_from_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Encodes f32 values as little-endian bytes.
pub fn f32_to_le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
