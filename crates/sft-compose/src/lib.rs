//! `sft-compose`: see the crate description; documentation grows with the implementation.
