//! [`TrainConfig`]: every hyperparameter of a run, with the paper's FastChat recipe as defaults.
//!
//! Defined in the libtorch-free `sft-config` crate (so plans can resolve and validate stage
//! settings without the trainer) and re-exported here unchanged.

pub use sft_config::{
    Dtype, MaskErrorPolicy, NanPolicy, Overlong, Schedule, TrainConfig, TrainOverrides,
    OPERATIONAL_KEYS,
};
