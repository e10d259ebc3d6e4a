//! Named parameter sets and their safetensors form.

use std::collections::HashMap;

use saddle_tensor::{Backend, TensorLike};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{ModelError, Result};

/// A tensor copied to the host, ready for a safetensors file.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// The name in the file.
    pub name: String,
    /// The shape in the file.
    pub shape: Vec<usize>,
    /// The element type: `F32`, or `I64` for counters.
    pub dtype: Dtype,
    /// Little-endian bytes.
    pub bytes: Vec<u8>,
}

impl HostTensor {
    /// An f32 tensor.
    pub fn f32(name: impl Into<String>, shape: &[usize], values: &[f32]) -> Self {
        HostTensor {
            name: name.into(),
            shape: shape.to_vec(),
            dtype: Dtype::F32,
            bytes: f32_to_le(values),
        }
    }
}

/// What a tensor of a [`ParamSet`] is for: which ones train, which ones weight decay touches,
/// which ones are state that a training-mode forward pass updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A trainable convolution or linear weight: weight decay applies.
    Weight,
    /// Another trainable tensor (a bias, a batch-norm scale or shift): no weight decay.
    Param,
    /// Non-trainable state in f32 (batch norm's `running_mean` and `running_var`).
    State,
    /// A non-trainable count (batch norm's `num_batches_tracked`): held as an f32 `[1]` on the
    /// backend (exact up to 2²⁴), written as PyTorch writes it, an int64 scalar `[]`.
    Counter,
}

impl Role {
    /// Whether the optimiser updates tensors of this role.
    pub fn trainable(self) -> bool {
        matches!(self, Role::Weight | Role::Param)
    }

    /// The role [`ParamSet::push`] gives a trainable tensor: `Weight` for a `*.weight` of two or
    /// more dimensions (convolution, linear), `Param` otherwise (biases, batch-norm affine).
    pub fn infer(name: &str, dims: &[usize]) -> Role {
        if name.ends_with("weight") && dims.len() >= 2 {
            Role::Weight
        } else {
            Role::Param
        }
    }
}

/// An ordered set of named tensors (a model's parameters and state, an optimiser's state),
/// named as in PyTorch's `state_dict`, each with its [`Role`].
#[derive(Clone, Debug)]
pub struct ParamSet<B: Backend> {
    names: Vec<String>,
    tensors: Vec<B::Tensor>,
    roles: Vec<Role>,
}

impl<B: Backend> Default for ParamSet<B> {
    fn default() -> Self {
        ParamSet {
            names: Vec::new(),
            tensors: Vec::new(),
            roles: Vec::new(),
        }
    }
}

impl<B: Backend> ParamSet<B> {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a trainable tensor under `name`, its role inferred by [`Role::infer`].
    ///
    /// # Errors
    /// [`ModelError::Mismatch`] if the name is already present.
    pub fn push(&mut self, name: impl Into<String>, t: B::Tensor) -> Result<()> {
        let name = name.into();
        let role = Role::infer(&name, t.dims());
        self.push_with(name, t, role).map(|_| ())
    }

    /// Appends a tensor under `name` with `role`; returns its index.
    ///
    /// # Errors
    /// [`ModelError::Mismatch`] if the name is already present, or a counter is not `[1]`.
    pub fn push_with(
        &mut self,
        name: impl Into<String>,
        t: B::Tensor,
        role: Role,
    ) -> Result<usize> {
        let name = name.into();
        if self.names.contains(&name) {
            return Err(ModelError::Mismatch(format!(
                "parameter {name} given twice"
            )));
        }
        if role == Role::Counter && t.dims() != [1] {
            return Err(ModelError::Mismatch(format!(
                "counter {name} must have shape [1], not {:?}",
                t.dims()
            )));
        }
        self.names.push(name);
        self.tensors.push(t);
        self.roles.push(role);
        Ok(self.names.len() - 1)
    }

    /// The role of tensor `i`.
    pub fn role(&self, i: usize) -> Role {
        self.roles[i]
    }

    /// The roles, in order.
    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    /// Indices of the trainable tensors, in order.
    pub fn trainable(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len()).filter(|&i| self.roles[i].trainable())
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

    /// Mutable tensors beside their roles (an optimiser updates the first by the second).
    pub fn tensors_mut_with_roles(&mut self) -> (&mut [B::Tensor], &[Role]) {
        (&mut self.tensors, &self.roles)
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

    /// Total number of scalars in trainable tensors (state and counters excluded).
    pub fn numel(&self) -> usize {
        self.trainable().map(|i| self.tensors[i].numel()).sum()
    }

    /// Replaces every tensor with the one of the same name in `bytes` (a safetensors file),
    /// checking that each is present, `F32`, of the same shape and finite. Other tensors in the
    /// file are ignored, so a checkpoint holding optimiser state loads too. A counter
    /// ([`Role::Counter`]) may be int64 or f32, of shape `[]` or `[1]`, and may be absent (as in
    /// files from PyTorch before 0.4.1): it then starts at 0.
    ///
    /// # Errors
    /// [`ModelError::Format`] for a file that is not safetensors; [`ModelError::Mismatch`]
    /// naming the first tensor that does not fit: missing, another dtype, another shape (with the
    /// expected and the actual one), or a non-finite value.
    pub fn load_safetensors(&mut self, backend: &B, bytes: &[u8], prefix: &str) -> Result<()> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Format(e.to_string()))?;
        let mut loaded = Vec::with_capacity(self.len());
        for (i, (name, cur)) in self.iter().enumerate() {
            let key = format!("{prefix}{name}");
            if self.roles[i] == Role::Counter {
                let count = match st.tensor(&key) {
                    Err(_) => 0.0,
                    Ok(view) => read_counter(&key, &view)?,
                };
                loaded.push(backend.from_vec(&[1], vec![count])?);
                continue;
            }
            let view = st.tensor(&key).map_err(|_| {
                ModelError::Mismatch(format!(
                    "tensor {key} (expected shape {:?}) is missing; the file holds: {}",
                    cur.dims(),
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
            if self.roles[i] == Role::State
                && name.ends_with("running_var")
                && data.iter().any(|&v| v < 0.0)
            {
                return Err(ModelError::Mismatch(format!(
                    "tensor {key} holds a negative variance"
                )));
            }
            loaded.push(backend.from_vec(view.shape(), data)?);
        }
        self.tensors = loaded;
        Ok(())
    }

    /// The tensors as [`HostTensor`]s named `prefix + name`, copied to the host; counters as
    /// int64 scalars, as PyTorch writes `num_batches_tracked`.
    pub fn to_host(&self, backend: &B, prefix: &str) -> Result<Vec<HostTensor>> {
        self.iter()
            .enumerate()
            .map(|(i, (n, t))| {
                let v = backend.to_vec(t)?;
                Ok(if self.roles[i] == Role::Counter {
                    HostTensor {
                        name: format!("{prefix}{n}"),
                        shape: vec![],
                        dtype: Dtype::I64,
                        bytes: (v[0].round() as i64).to_le_bytes().to_vec(),
                    }
                } else {
                    HostTensor::f32(format!("{prefix}{n}"), t.dims(), &v)
                })
            })
            .collect()
    }
}

fn read_counter(key: &str, view: &TensorView<'_>) -> Result<f32> {
    if view.shape().iter().product::<usize>() != 1 {
        return Err(ModelError::Mismatch(format!(
            "counter {key} has shape {:?}, expected [] or [1]",
            view.shape()
        )));
    }
    let v = match view.dtype() {
        Dtype::I64 => i64::from_le_bytes(view.data()[..8].try_into().expect("8 bytes")) as f64,
        Dtype::F32 => f32_from_le(view.data())[0] as f64,
        other => {
            return Err(ModelError::Mismatch(format!(
                "counter {key} is {other:?}, expected I64 or F32"
            )))
        }
    };
    if !(0.0..=16_777_216.0).contains(&v) || v.fract() != 0.0 {
        return Err(ModelError::Mismatch(format!(
            "counter {key} holds {v}, not a count in 0..=2^24"
        )));
    }
    Ok(v as f32)
}

/// Serialises host tensors and metadata to the safetensors format.
///
/// # Errors
/// [`ModelError::Format`] if safetensors refuses (duplicate names, inconsistent sizes).
pub fn serialize_safetensors(
    tensors: &[HostTensor],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| ModelError::Format(format!("tensor {}: {e}", t.name)))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, Some(metadata.clone()))
        .map_err(|e| ModelError::Format(e.to_string()))?;
    sort_metadata(bytes, &metadata)
}

/// Rewrites the metadata of safetensors bytes with its keys sorted.
///
/// safetensors writes the map in `HashMap` order, which differs from one process to the next, so
/// that the same weights saved twice gave two different files (and two different checksums).
/// The map is always the header's first entry and its sorted form has the same length (the same
/// entries, compact JSON), so it is replaced in place.
fn sort_metadata(mut bytes: Vec<u8>, metadata: &HashMap<String, String>) -> Result<Vec<u8>> {
    if metadata.len() < 2 {
        return Ok(bytes);
    }
    let sorted: std::collections::BTreeMap<&String, &String> = metadata.iter().collect();
    let want = serde_json::to_string(&sorted).map_err(|e| ModelError::Format(e.to_string()))?;
    const PREFIX: &[u8] = b"{\"__metadata__\":";
    let start = 8 + PREFIX.len();
    let end = start + want.len();
    let found = bytes.get(start..end).filter(|_| &bytes[8..start] == PREFIX);
    let same_map = found
        .and_then(|f| serde_json::from_slice::<HashMap<String, String>>(f).ok())
        .is_some_and(|m| &m == metadata);
    if !same_map {
        return Err(ModelError::Format(
            "safetensors wrote its metadata in an unexpected place: cannot sort it".into(),
        ));
    }
    bytes[start..end].copy_from_slice(want.as_bytes());
    Ok(bytes)
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

#[cfg(test)]
mod metadata_order_tests {
    use super::*;

    /// The same tensors and metadata give the same bytes, whatever order the maps iterate in
    /// (every `HashMap` has its own random hash keys, so twelve keys in two maps almost surely
    /// iterate differently: this failed before the keys were sorted), and the file reads back.
    #[test]
    fn saved_bytes_do_not_depend_on_hash_map_order() {
        let t = HostTensor {
            name: "w".into(),
            dtype: Dtype::F32,
            shape: vec![2],
            bytes: f32_to_le(&[1.0, -2.0]),
        };
        let meta = |rev: bool| {
            let mut keys: Vec<String> = (0..12).map(|i| format!("key{i}")).collect();
            if rev {
                keys.reverse();
            }
            keys.into_iter()
                .map(|k| (k.clone(), format!("value \"of\" {k}")))
                .collect::<HashMap<_, _>>()
        };
        let a = serialize_safetensors(std::slice::from_ref(&t), meta(false)).unwrap();
        let b = serialize_safetensors(std::slice::from_ref(&t), meta(true)).unwrap();
        assert_eq!(a, b);
        assert_eq!(safetensors_metadata(&a).unwrap(), meta(false));
    }
}
