//! The crate's error type.

/// Everything that can go wrong while parsing or validating a plan.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A plan file is not valid TOML or does not match the plan schema.
    #[error("{origin}: {source}")]
    Toml {
        /// Where the text came from (a file path, or a description).
        origin: String,
        /// The parser's error; its message carries the line and column.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// The file has a `format_version` this build does not understand.
    #[error("{origin}: unsupported format_version {found} (this build supports {supported})")]
    UnsupportedFormatVersion {
        /// Where the plan came from.
        origin: String,
        /// The version in the file.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// A stage's mixture names a source the data catalog does not have.
    #[error("plan {plan:?}, stage {stage:?}: unknown source {source_name:?} (known: {known})")]
    UnknownSource {
        /// The plan's name.
        plan: String,
        /// The stage's name.
        stage: String,
        /// The source as written.
        source_name: String,
        /// The known source names, comma-separated.
        known: String,
    },
    /// A stage has no data.
    #[error("plan {plan:?}, stage {stage:?}: empty stage (its mixture names no source with a proportion above 0)")]
    EmptyStage {
        /// The plan's name.
        plan: String,
        /// The stage's name.
        stage: String,
    },
    /// A plan has no stages.
    #[error("plan {plan:?} has no stages")]
    NoStages {
        /// The plan's name.
        plan: String,
    },
    /// DMT's `k` must lie in `[0, 1]`.
    #[error("DMT k = {k} is out of range: k is the proportion of the code and math data added to the general stage, so 0 ≤ k ≤ 1 (the paper uses 1, 1/2, 1/4, …, 1/256; k = 0 is mixed sequential)")]
    KOutOfRange {
        /// The value given.
        k: String,
    },
    /// A strategy name could not be parsed.
    #[error("unknown strategy {text:?}: expected one of individual:<source>, multi-task, sequential, mixed-sequential, dmt:<k> (e.g. dmt:1/256)")]
    UnknownStrategy {
        /// The text as given.
        text: String,
    },
    /// A proportion could not be parsed.
    #[error("{context}: {source}")]
    Ratio {
        /// What was being parsed.
        context: String,
        /// The underlying error.
        #[source]
        source: sft_compose::Error,
    },
    /// A training setting of the plan (its `[train]` table, or a stage's `train`) is unknown,
    /// mistyped or out of range.
    #[error("{origin}: plan {plan:?}, {}: {source}", stage_label(stage))]
    Train {
        /// Where the plan came from (the file, with the line when the parser gave one).
        origin: String,
        /// The plan's name.
        plan: String,
        /// The stage's name; `None` for the plan-wide `[train]` table.
        stage: Option<String>,
        /// The setting's error; [`sft_config::Error::key`] names the key.
        #[source]
        source: sft_config::Error,
    },
    /// Any other inconsistency in a plan (duplicate stage names, a missing key-context entry, …).
    #[error("plan {plan:?}: {detail}")]
    Invalid {
        /// The plan's name.
        plan: String,
        /// What is wrong.
        detail: String,
    },
}

fn stage_label(stage: &Option<String>) -> String {
    match stage {
        Some(s) => format!("stage {s:?}"),
        None => "plan-wide [train]".to_string(),
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
