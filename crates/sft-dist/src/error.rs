//! The crate's error: a kind to branch on, and the message (c10d's own text for C++ failures).

use std::fmt;

/// What went wrong, as far as it can be told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Invalid configuration or arguments: launcher variables missing or inconsistent, a rank
    /// outside the world, tensors of the wrong size or device. Nothing was sent.
    Config,
    /// The group could not be formed: the TCPStore could not be reached or hosted, or not every
    /// rank joined within the timeout (the message tells which, e.g. "Timed out after … waiting
    /// for clients. 1/2 clients joined").
    Rendezvous,
    /// A collective on a formed group did not finish within the timeout (a peer is alive but did
    /// not take part, or is too slow).
    Timeout,
    /// A collective failed because a peer's connection closed or reset (the peer died).
    PeerLost,
    /// Any other failure inside c10d or libtorch.
    Backend,
    /// The backend or operation is not available in this build, on this machine or for these
    /// tensors (NCCL not compiled in, NCCL without a GPU, CUDA tensors on Gloo).
    Unsupported,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Config => "Config",
            Self::Rendezvous => "Rendezvous",
            Self::Timeout => "Timeout",
            Self::PeerLost => "PeerLost",
            Self::Backend => "Backend",
            Self::Unsupported => "Unsupported",
        };
        f.write_str(name)
    }
}

/// An error from sft-dist: its [`ErrorKind`] and a message that keeps c10d's text verbatim.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message: c10d's or Gloo's own text for failures inside libtorch.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        Self::new(ErrorKind::Backend, format!("libtorch: {e}"))
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
