//! The shared op suite (`saddle_tensor::testing`) on the wgpu backend.
mod common;
use saddle_tensor::testing::Tol;
saddle_tensor::op_suite!(optional: common::backend(), Tol::GPU);
