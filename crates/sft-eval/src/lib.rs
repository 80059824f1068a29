//! `sft-eval`: see the crate description; documentation grows with the implementation.
