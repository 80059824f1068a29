//! The crate's error type.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where in an input file a problem was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// A 1-based line of a text file (JSONL, or the first line of a JSON array element).
    Line(u64),
    /// A 0-based row of a Parquet file.
    Row(u64),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(line) => write!(f, "{line}"),
            Location::Row(row) => write!(f, "row {row}"),
        }
    }
}

/// The kinds of bad or suspicious input that validation recognises.
///
/// In strict mode (the default) every kind except [`IssueKind::Duplicate`] is an error.
/// In lenient mode bad records are skipped and counted per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueKind {
    /// The conversation has no message left (after the ShareGPT clean-up policy).
    EmptyConversation,
    /// A role or `from` value that is not system/user/assistant (or a known alias).
    UnknownRole,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong JSON type (e.g. `content` is a number).
    WrongType,
    /// The line is not valid UTF-8.
    BadUtf8,
    /// The JSON ends early (typically a truncated last line).
    TruncatedLine,
    /// Any other JSON syntax error.
    InvalidJson,
    /// A line longer than the configured maximum (refused before parsing).
    LineTooLong,
    /// An exact duplicate of an earlier record of the same source (same messages).
    Duplicate,
}

impl IssueKind {
    /// The snake_case name used in reports and manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            IssueKind::EmptyConversation => "empty_conversation",
            IssueKind::UnknownRole => "unknown_role",
            IssueKind::MissingField => "missing_field",
            IssueKind::WrongType => "wrong_type",
            IssueKind::BadUtf8 => "bad_utf8",
            IssueKind::TruncatedLine => "truncated_line",
            IssueKind::InvalidJson => "invalid_json",
            IssueKind::LineTooLong => "line_too_long",
            IssueKind::Duplicate => "duplicate",
        }
    }
}

impl fmt::Display for IssueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong in `sft-compose`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A record in an input file is malformed.
    #[error("{path}:{location}: {kind}: {detail}")]
    Record {
        /// The file.
        path: PathBuf,
        /// The line or row.
        location: Location,
        /// What kind of problem.
        kind: IssueKind,
        /// A human-readable reason.
        detail: String,
    },
    /// A JSON array file ends before its closing `]` (a cut-off download or package): strict mode
    /// refuses it; lenient mode keeps the complete records and reports the cut in
    /// [`crate::LoadReport::truncated`].
    #[error(
        "{path}: JSON array truncated at byte {cut_at}: {}; {complete_records} complete records \
         precede it (--lenient keeps them and reports the loss)",
        match partial_record_start {
            Some(start) => format!("the file ends inside record {complete_records} (it starts at byte {start})"),
            None => "the file ends between records, before the closing `]`".to_string(),
        }
    )]
    TruncatedArray {
        /// The file.
        path: PathBuf,
        /// The byte offset where the file ends (its size).
        cut_at: u64,
        /// The byte offset where the partial record starts, if the cut is inside a record.
        partial_record_start: Option<u64>,
        /// Complete records before the cut.
        complete_records: usize,
    },
    /// A file holds no records at all (or none survived lenient validation).
    #[error("{path}: empty source: {detail}")]
    EmptySource {
        /// The file.
        path: PathBuf,
        /// Why it is considered empty.
        detail: String,
    },
    /// The format or container of a file could not be determined or is not supported.
    #[error("{path}: {detail}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// A Parquet file could not be read or written.
    #[error("{path}: parquet: {source}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Box<parquet::errors::ParquetError>,
    },
    /// An Arrow array had an unexpected shape.
    #[error("{path}: arrow: {source}")]
    Arrow {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Box<arrow::error::ArrowError>,
    },
    /// A ratio such as `1/64` or `0.25` could not be parsed or is out of range.
    #[error("invalid ratio {text:?}: {reason}")]
    InvalidRatio {
        /// The text as given.
        text: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A tag-filter expression has a syntax error.
    #[error("filter syntax error at offset {offset}: {message}\n  {expr}\n  {caret:>width$}", caret = "^", width = offset + 1)]
    FilterSyntax {
        /// The expression.
        expr: String,
        /// Byte offset of the problem in `expr`.
        offset: usize,
        /// What was expected.
        message: String,
    },
    /// A mixture spec is inconsistent (unknown source name, duplicate names, both ratio and count, …).
    #[error("invalid mixture spec: {0}")]
    Spec(String),
    /// A spec file has a `format_version` this build does not understand.
    #[error("unsupported format_version {found} (this build supports {supported})")]
    UnsupportedFormatVersion {
        /// The version in the file.
        found: u32,
        /// The version this build writes and reads.
        supported: u32,
    },
    /// A TOML spec file could not be parsed.
    #[error("{path}: {source}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The underlying error (it carries line and column).
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A JSON document (manifest, spec) could not be (de)serialized.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// A JSONL or JSON file could not be written (or read) by `sft-record`.
    #[error(transparent)]
    File(#[from] sft_record::Error),
    /// A source has no records left after its tag filter.
    #[error("source {source_name:?}: no records left after filter {filter:?} ({before} before)")]
    EmptyAfterFilter {
        /// The source name.
        source_name: String,
        /// The filter expression.
        filter: String,
        /// How many records there were before filtering.
        before: usize,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
