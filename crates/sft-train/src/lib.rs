//! `sft-train`: see the crate description; documentation grows with the implementation.
