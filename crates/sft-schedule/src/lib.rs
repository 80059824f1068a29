//! `sft-schedule`: see the crate description; documentation grows with the implementation.
