//! `sft-llama`: LLaMA-architecture language models on libtorch through `tch`.
//!
//! This crate (with `sft-train`) is one of the only two library crates that link libtorch.
//! Every function that creates tensors takes the [`tch::Device`] as an argument; binaries turn a
//! `--device` string into one with [`device::DeviceSpec`].

pub mod device;
