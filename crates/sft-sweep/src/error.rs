//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in a sweep; variants name the file, cell or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A sweep spec is not valid TOML or does not match the schema.
    #[error("{path}: invalid sweep spec: {message}")]
    SpecSyntax {
        /// The spec file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A sweep spec parses but says something impossible.
    #[error("{path}: {message}")]
    SpecInvalid {
        /// The spec file.
        path: PathBuf,
        /// What is wrong, naming the grid and field.
        message: String,
    },
    /// The spec's `format_version` is not one this crate reads.
    #[error(
        "{path}: sweep spec format_version {found} is not supported (this build reads {supported})"
    )]
    UnsupportedFormatVersion {
        /// The spec file.
        path: PathBuf,
        /// The version found.
        found: u32,
        /// The version supported.
        supported: u32,
    },
    /// A cell's plan does not validate (an empty stage, an unknown source, ...).
    #[error("{path}: cell {cell}: {source}")]
    Plan {
        /// The spec file.
        path: PathBuf,
        /// The cell's readable name.
        cell: String,
        /// The planner's error.
        #[source]
        source: Box<sft_schedule::Error>,
    },
    /// The runner settings a spec's `[run]` tables give a model's cells do not load.
    #[error("{path}: the [run] tables of the spec and model {model:?}: {source}")]
    RunSettings {
        /// The spec file.
        path: PathBuf,
        /// The model whose cells get these settings.
        model: String,
        /// The runner's error (names the key).
        #[source]
        source: Box<sft_run::Error>,
    },
    /// A model's `config` (its shape for memory estimates) does not read.
    #[error("{path}: [[models]] {model:?}: `config`: {source}")]
    ModelConfig {
        /// The spec file.
        path: PathBuf,
        /// The model's name.
        model: String,
        /// The error naming the config file.
        #[source]
        source: Box<sft_config::Error>,
    },
    /// A file of a done cell's run directory (`heldout_loss.json`, `eval/*.items.json`) does
    /// not read.
    #[error("cell {cell}: {source}")]
    RunFile {
        /// The cell id.
        cell: String,
        /// The runner's error (names the file).
        #[source]
        source: Box<sft_run::Error>,
    },
    /// A cell's `results.json` or `status.json` is malformed.
    #[error("{path}: {message}")]
    CellFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The runner command could not be started.
    #[error("cell {cell}: cannot start runner {program:?}: {source}")]
    Spawn {
        /// The cell id.
        cell: String,
        /// The program.
        program: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Invalid execution options (no devices, zero jobs, ...).
    #[error("invalid sweep options: {0}")]
    Options(String),
    /// Writing a Parquet or Arrow table failed.
    #[error("{path}: writing parquet: {message}")]
    Parquet {
        /// The output file.
        path: PathBuf,
        /// The library's message.
        message: String,
    },
    /// Rendering a plot failed.
    #[error("{path}: plotting: {message}")]
    Plot {
        /// The output file.
        path: PathBuf,
        /// The backend's message.
        message: String,
    },
    /// No usable TrueType font was found for plot text.
    #[error(transparent)]
    Font(#[from] sft_plot::FontError),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
