//! Loader for `tests/golden/mnist_madry.safetensors`, made by `tests/golden/make_golden.py`
//! (PyTorch, float64): the paper's MNIST network with int8-coded weights, 16 MNIST test images,
//! and reference outputs. See the script's docstring for the encoding.

use std::collections::HashMap;

use saddle_models::{Classifier, MnistNet};
use saddle_tensor::Backend;
use safetensors::tensor::{Dtype, SafeTensors};

/// The golden file, embedded so tests never read outside the repository.
pub const BYTES: &[u8] = include_bytes!("../golden/mnist_madry.safetensors");

/// A tensor of the golden file as f32 (int8 and int64 converted) with its shape.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Shape.
    pub shape: Vec<usize>,
    /// Values.
    pub data: Vec<f32>,
    /// The raw int64 values, for index tensors.
    pub ints: Vec<i64>,
}

/// All tensors of the golden file.
#[derive(Debug)]
pub struct Golden {
    entries: HashMap<String, Entry>,
}

impl Golden {
    /// Parses the embedded MNIST file.
    pub fn load() -> Golden {
        Golden::from_bytes(BYTES)
    }

    /// Parses a golden file.
    pub fn from_bytes(bytes: &[u8]) -> Golden {
        let st = SafeTensors::deserialize(bytes).expect("golden file parses");
        let mut entries = HashMap::new();
        for (name, view) in st.tensors() {
            let bytes = view.data();
            let (data, ints): (Vec<f32>, Vec<i64>) = match view.dtype() {
                Dtype::F32 => (
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                    vec![],
                ),
                Dtype::I8 => (bytes.iter().map(|&b| b as i8 as f32).collect(), vec![]),
                Dtype::I64 => {
                    let ints: Vec<i64> = bytes
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .collect();
                    (ints.iter().map(|&v| v as f32).collect(), ints)
                }
                other => panic!("unexpected dtype {other:?} for {name}"),
            };
            entries.insert(
                name,
                Entry {
                    shape: view.shape().to_vec(),
                    data,
                    ints,
                },
            );
        }
        Golden { entries }
    }

    /// Whether the file holds `name`.
    pub fn has(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The entry `name`; panics with the name if missing.
    pub fn get(&self, name: &str) -> &Entry {
        self.entries
            .get(name)
            .unwrap_or_else(|| panic!("golden file has no {name}"))
    }

    /// The weight `name` decoded as the script defines it: `float32(q) * scale` in float32.
    pub fn param(&self, name: &str) -> Entry {
        let q = self.get(&format!("param.{name}.q"));
        let scale = self.get(&format!("param.{name}.scale")).data[0];
        Entry {
            shape: q.shape.clone(),
            data: q.data.iter().map(|&v| v * scale).collect(),
            ints: vec![],
        }
    }

    /// The paper's network with the golden weights on backend `b`.
    pub fn model<B: Backend>(&self, b: &B) -> MnistNet<B> {
        let mut net = MnistNet::paper(b.clone(), 0).expect("network builds");
        let names: Vec<String> = net.params().names().to_vec();
        for (i, name) in names.iter().enumerate() {
            let e = self.param(name);
            net.params_mut().tensors_mut()[i] = b.from_vec(&e.shape, e.data).expect("weight fits");
        }
        net
    }

    /// The input images `input.x` and labels `input.y` on backend `b`.
    pub fn inputs<B: Backend>(&self, b: &B) -> (B::Tensor, B::Tensor) {
        let x = self.get("input.x");
        let y = self.get("input.y");
        (
            b.from_vec(&x.shape, x.data.clone()).unwrap(),
            b.from_vec(&y.shape, y.data.clone()).unwrap(),
        )
    }
}
