//! `sft-chat`: see the crate description; documentation grows with the implementation.
