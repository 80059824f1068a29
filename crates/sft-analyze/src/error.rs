//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while checking inputs, analysing them or writing the outputs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The embeddings of one model are unusable (mismatched lengths, too few sources, a source
    /// with too few records, non-finite values). `model` is its label.
    #[error("embeddings of model `{model}`: {message}")]
    Input {
        /// The model's label.
        model: String,
        /// What is wrong.
        message: String,
    },
    /// The models do not fit together (different records or sources), or none was given.
    #[error("{0}")]
    Mismatch(String),
    /// A setting is out of range for the data (e.g. a perplexity too large for the records).
    #[error("invalid analysis settings: {0}")]
    Settings(String),
    /// A numerical step failed (e.g. the ridge probe's normal equations are singular).
    #[error("model `{model}`: {message}")]
    Numeric {
        /// The model's label.
        model: String,
        /// What failed.
        message: String,
    },
    /// The t-SNE thread pool could not be built.
    #[error("t-SNE thread pool: {0}")]
    ThreadPool(#[source] rayon::ThreadPoolBuildError),
    /// A file or directory could not be created, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `embeddings.parquet` could not be written or read.
    #[error("{path}: {source}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// An Arrow batch could not be built or read.
    #[error("{path}: {source}")]
    Arrow {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: arrow::error::ArrowError,
    },
    /// `separation.json` could not be written or read.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// A plot could not be drawn (`path` is the file being drawn).
    #[error("{path}: drawing failed: {message}")]
    Plot {
        /// The file.
        path: PathBuf,
        /// The backend's message.
        message: String,
    },
    /// No usable plot font (see `sft_plot::register_font`).
    #[error("plot font: {0}")]
    Font(#[from] sft_plot::FontError),
    /// A paired difference could not be formed.
    #[error("change between models: {0}")]
    Stats(#[source] sft_eval::EvalError),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
