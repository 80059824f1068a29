//! The crate's one error type.

use std::path::PathBuf;

/// What kind of failure an [`Error`] is, for tools that act on it (retry later, fix the config,
/// fix the credentials).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A setting is invalid; nothing was sent.
    Config,
    /// A file could not be read or written.
    Io,
    /// The server refused the credentials (401/403); retrying cannot help.
    Auth,
    /// The server answered an error status or could not be reached, after the retries.
    Http,
    /// The server answered 200 with a body that is not a completion.
    Reply,
    /// The local model failed.
    Backend,
}

/// Everything that can go wrong while completing prompts.
///
/// No variant ever carries an API key: every text from a request is redacted before it is put
/// into an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is out of range or inconsistent.
    #[error("invalid completion settings: {0}")]
    Config(String),
    /// A file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSONL file could not be read or written (a bad line names `path:line`).
    #[error(transparent)]
    File(#[from] sft_record::Error),
    /// A file parsed but is unusable (a line that is not what it should be).
    #[error("{path}:{line}: {message}")]
    BadLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// An HTTP request failed for good (after retries, or at once when retrying cannot help).
    #[error("request failed: {message}")]
    Request {
        /// HTTP status, when the server answered.
        status: Option<u16>,
        /// What happened (redacted).
        message: String,
    },
    /// The server's 200 reply is not a completion.
    #[error("unusable reply: {0}")]
    Reply(String),
    /// The local model failed.
    #[error("local model: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config(_) => ErrorKind::Config,
            Error::Io { .. } | Error::File(_) | Error::BadLine { .. } => ErrorKind::Io,
            Error::Request {
                status: Some(401 | 403),
                ..
            } => ErrorKind::Auth,
            Error::Request { .. } => ErrorKind::Http,
            Error::Reply(_) => ErrorKind::Reply,
            Error::Backend(_) => ErrorKind::Backend,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
