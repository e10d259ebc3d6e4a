//! `ndarray` at the boundary: arrays in, tensors of any backend out, and back.
//!
//! An embedding program keeps its data in [`ndarray`] arrays; [`ArrayExt`] moves them onto a
//! backend and brings results back, for every [`Backend`] (the CPU backend here, the wgpu backend
//! of `saddle-wgsl`, or one written elsewhere): it is implemented once, on the trait's
//! `from_vec` and `to_vec`. Any array works — owned or a view, of any dimension, in any memory
//! order (a transposed or sliced view is read in its logical, row-major order) — and what comes
//! back is an owned [`ArrayD<f32>`] in standard layout.
//!
//! ```
//! use ndarray::{array, ArrayD, IxDyn};
//! use saddle_tensor::{cpu::Cpu, ArrayExt, Backend, TensorLike};
//! let b = Cpu::new();
//! let a = array![[1.0f32, -2.0, 3.0], [-4.0, 5.0, -6.0]];
//! let t = b.from_array(&a.t()).unwrap(); // a transposed view: shape [3, 2]
//! assert_eq!(t.dims(), &[3, 2]);
//! let y: ArrayD<f32> = b.to_array(&b.relu(&t).unwrap()).unwrap();
//! assert_eq!(y, ArrayD::from_shape_vec(IxDyn(&[3, 2]), vec![1.0, 0.0, 0.0, 5.0, 3.0, 0.0]).unwrap());
//! ```

use ndarray::{ArrayBase, ArrayD, Data, Dimension, IxDyn};

use crate::backend::{Backend, TensorLike};
use crate::error::{Result, TensorError};

/// Conversions between [`ndarray`] arrays and the tensors of a backend; implemented for every
/// [`Backend`].
pub trait ArrayExt: Backend {
    /// A tensor holding `a`'s elements in its logical (row-major) order, with `a`'s shape.
    ///
    /// # Errors
    /// Whatever the backend's `from_vec` reports (for example a device out of memory).
    #[allow(clippy::wrong_self_convention)] // a constructor on the backend, as `from_vec`
    fn from_array<S, D>(&self, a: &ArrayBase<S, D>) -> Result<Self::Tensor>
    where
        S: Data<Elem = f32>,
        D: Dimension,
    {
        let data = match a.as_slice() {
            Some(s) => s.to_vec(),
            None => a.iter().copied().collect(),
        };
        self.from_vec(a.shape(), data)
    }

    /// The elements of `t` as an owned array of its shape, in standard (row-major) layout.
    ///
    /// # Errors
    /// Whatever the backend's `to_vec` reports, or a backend whose data does not match the
    /// tensor's shape (a shape error naming both).
    fn to_array(&self, t: &Self::Tensor) -> Result<ArrayD<f32>> {
        let data = self.to_vec(t)?;
        let len = data.len();
        ArrayD::from_shape_vec(IxDyn(t.dims()), data).map_err(|_| {
            TensorError::shape(
                "to_array",
                format!(
                    "tensor of shape {:?} came back with {len} elements",
                    t.dims()
                ),
            )
        })
    }
}

impl<B: Backend> ArrayExt for B {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::Cpu;
    use ndarray::{s, Array, Array4, Axis};

    #[test]
    fn round_trips_owned_arrays_of_every_rank() {
        let b = Cpu::new();
        for shape in [vec![], vec![5], vec![2, 3], vec![2, 1, 3, 4]] {
            let n: usize = shape.iter().product();
            let a = Array::from_shape_fn(IxDyn(&shape), |i| {
                i.as_array_view()
                    .iter()
                    .fold(0.5f32, |acc, &k| acc * 3.0 + k as f32)
            });
            assert_eq!(a.len(), n);
            let t = b.from_array(&a).unwrap();
            assert_eq!(t.dims(), &shape[..]);
            assert_eq!(b.to_array(&t).unwrap(), a);
        }
    }

    #[test]
    fn non_contiguous_views_are_read_in_logical_order() {
        let b = Cpu::new();
        let a = Array4::from_shape_fn((2, 3, 4, 5), |(n, c, h, w)| {
            (n * 1000 + c * 100 + h * 10 + w) as f32
        });
        // A strided slice and a permuted view: neither is contiguous.
        let v = a.slice(s![.., 1.., ..;2, 1..4]);
        assert!(v.as_slice().is_none());
        let t = b.from_array(&v).unwrap();
        assert_eq!(t.dims(), &[2, 2, 2, 3]);
        assert_eq!(b.to_vec(&t).unwrap(), v.iter().copied().collect::<Vec<_>>());
        let p = a.view().permuted_axes([0, 2, 3, 1]);
        let back = b.to_array(&b.from_array(&p).unwrap()).unwrap();
        assert_eq!(back, p.into_dyn());
        assert_eq!(back.index_axis(Axis(3), 2)[[1, 3, 4]], 1234.0);
    }

    #[test]
    fn results_of_ops_come_back_with_their_shape() {
        let b = Cpu::new();
        let x = Array::from_shape_vec((2, 3), vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let w = Array::from_shape_vec((4, 3), (0..12).map(|v| v as f32).collect()).unwrap();
        let y = b
            .matmul(
                &b.from_array(&x).unwrap(),
                &b.from_array(&w).unwrap(),
                false,
                true,
            )
            .unwrap();
        let got = b.to_array(&y).unwrap();
        let want = x.dot(&w.t()).into_dyn();
        assert_eq!(got, want);
    }
}
