//! The crate's error type.

use std::path::PathBuf;

use crate::GgmlType;

/// Everything that can go wrong reading a GGUF file or dequantizing one of its tensors.
///
/// Variants name the file and, where it applies, the metadata key or tensor.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The first four bytes are not `GGUF`.
    #[error("{path}: not a GGUF file (magic bytes {found:02x?}, expected \"GGUF\")")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The bytes found.
        found: [u8; 4],
    },
    /// A GGUF version other than 2 or 3 (version 1 used 32-bit counts; big-endian files read as huge versions).
    #[error("{path}: GGUF version {version} is not supported (supported: 2, 3)")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version field.
        version: u32,
    },
    /// The file ends before a structure it declares.
    #[error(
        "{path}: truncated: {what} needs {needed} bytes at offset {offset}, file has {file_len}"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was being read.
        what: String,
        /// Byte offset of the read.
        offset: u64,
        /// Bytes needed.
        needed: u64,
        /// File length.
        file_len: u64,
    },
    /// A string in the header is not UTF-8.
    #[error("{path}: {what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// What was being read.
        what: String,
        /// Byte offset of the string.
        offset: u64,
    },
    /// A metadata value type id outside the GGUF specification.
    #[error("{path}: metadata key {key:?} has unknown value type {type_id}")]
    UnknownValueType {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The type id found.
        type_id: u32,
    },
    /// A ggml tensor type id this reader does not know at all.
    #[error("{path}: tensor {tensor:?} has unknown ggml type id {type_id}")]
    UnknownGgmlType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The type id found.
        type_id: u32,
    },
    /// A structurally invalid header field.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tensor whose type is known but cannot be dequantized by this crate.
    #[error("{path}: tensor {tensor:?} has ggml type {ggml_type}, which sft-gguf cannot dequantize (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K)")]
    UnsupportedType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its type.
        ggml_type: GgmlType,
    },
    /// A tensor requested by name is not in the file.
    #[error("{path}: no tensor named {name:?}")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        name: String,
    },
    /// A metadata key requested by name is not in the file.
    #[error("{path}: no metadata key {key:?}")]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The key asked for.
        key: String,
    },
    /// A metadata key holds a value of another type than expected.
    #[error("{path}: metadata key {key:?} is {found}, expected {expected}")]
    WrongValueType {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What the caller needed.
        expected: &'static str,
        /// What the file has.
        found: String,
    },
    /// The file describes a model architecture this crate has no hyperparameter mapping for.
    #[error("{path}: general.architecture is {found:?}; only \"llama\" is supported")]
    UnsupportedArchitecture {
        /// The file.
        path: PathBuf,
        /// The architecture found.
        found: String,
    },
    /// Raw block data whose length does not fit the tensor's type (from [`crate::dequantize`] callers).
    #[error("{what}: {len} bytes of {ggml_type} data do not hold {n_elements} elements")]
    BadDataLength {
        /// What was being dequantized.
        what: String,
        /// The type.
        ggml_type: GgmlType,
        /// Bytes given.
        len: usize,
        /// Elements asked for.
        n_elements: usize,
    },
    /// A Q/K unpermute whose shape does not divide into heads.
    #[error("cannot unpermute {rows}x{cols} rows into {n_head} heads of even size (data has {len} values)")]
    BadPermuteShape {
        /// Row count.
        rows: usize,
        /// Column count.
        cols: usize,
        /// Heads.
        n_head: usize,
        /// Data length.
        len: usize,
    },
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, GgufError>;
