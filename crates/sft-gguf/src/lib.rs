//! `sft-gguf`: see the crate description.
