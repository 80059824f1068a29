//! The crate's error type: every variant names the setting (or the file) it is about.

use std::path::PathBuf;

/// Everything that can go wrong while reading, overriding or validating a [`crate::TrainConfig`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting has a value out of its range, or settings contradict each other.
    #[error("`{key}`: {message}")]
    Invalid {
        /// The setting (a [`crate::TrainConfig`] field name).
        key: String,
        /// What is wrong with its value.
        message: String,
    },
    /// A setting that [`crate::TrainConfig`] does not have (usually a typo).
    #[error("unknown training setting `{key}` (known: {known})")]
    UnknownKey {
        /// The key as written.
        key: String,
        /// The known keys, comma-separated.
        known: String,
    },
    /// A setting's value has the wrong type or spelling (`lr = "fast"`, `schedule = "cosin"`).
    #[error("`{key}`: {source}")]
    Value {
        /// The setting.
        key: String,
        /// The deserializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// Overrides were not a table of settings.
    #[error("training settings must be a table of `key = value`, got {found}")]
    NotATable {
        /// What was given instead (JSON).
        found: String,
    },
    /// A config file could not be read.
    #[error("read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A config file is not valid TOML or does not match the schema (unknown key, wrong type).
    #[error("{path}: {source}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's error; its message carries the line and column.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A model's shape could not be read (`config.json` or GGUF metadata) for a memory estimate.
    #[error("{path}: cannot read the model's shape: {message}")]
    Model {
        /// The model path.
        path: PathBuf,
        /// What is missing or wrong.
        message: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A config file parsed but one of its values is invalid.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The validation error, naming the key.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// The setting this error is about, when it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Error::Invalid { key, .. }
            | Error::UnknownKey { key, .. }
            | Error::Value { key, .. } => Some(key),
            Error::File { source, .. } => source.key(),
            Error::NotATable { .. }
            | Error::Io { .. }
            | Error::Toml { .. }
            | Error::Model { .. } => None,
        }
    }

    pub(crate) fn invalid(key: &str, message: impl Into<String>) -> Error {
        Error::Invalid {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
