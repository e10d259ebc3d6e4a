//! End-to-end tests that cross saddle crates live in `tests/*.rs` beside this file.
