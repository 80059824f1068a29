//! The crate's error types.

use std::path::PathBuf;

/// A role name that is not `system`, `user` or `assistant`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role `{found}` (expected system, user or assistant)")]
pub struct ParseRoleError {
    /// The name as given.
    pub found: String,
}

/// What kind of failure an [`Error`] is, for callers that sort errors (e.g. into
/// `io` and `data` failures) without matching every variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The file system failed (open, read, write, sync, rename).
    Io,
    /// The content of a file is not what was expected (bad JSON, bad UTF-8, unknown role).
    Data,
}

/// Everything that can go wrong reading or writing JSONL and JSON files.
///
/// Every variant names the file; the ones about a line carry its 1-based number.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened, read, written, synced or renamed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`open`, `read`, `write`, `sync`, `rename`, `create`).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not valid UTF-8.
    #[error("{path}:{line}: invalid UTF-8: {source}")]
    Utf8 {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The decoding error.
        #[source]
        source: std::str::Utf8Error,
    },
    /// A line is not the expected JSON value (syntax, a missing field, an unknown role, …).
    #[error("{path}:{line}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// serde's error (its column is within the line).
        #[source]
        source: serde_json::Error,
    },
    /// A value could not be serialized (e.g. a map with non-string keys).
    #[error("{path}: cannot serialize item {index}: {source}")]
    Serialize {
        /// The file being written.
        path: PathBuf,
        /// 0-based index of the item (0 for a single JSON document).
        index: usize,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } => ErrorKind::Io,
            Error::Utf8 { .. } | Error::Parse { .. } | Error::Serialize { .. } => ErrorKind::Data,
        }
    }

    /// The file the error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            Error::Io { path, .. }
            | Error::Utf8 { path, .. }
            | Error::Parse { path, .. }
            | Error::Serialize { path, .. } => path,
        }
    }

    /// The 1-based line the error is about, when it is about one.
    pub fn line(&self) -> Option<usize> {
        match self {
            Error::Utf8 { line, .. } | Error::Parse { line, .. } => Some(*line),
            Error::Io { .. } | Error::Serialize { .. } => None,
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
