//! `sft-record`: the one conversation model of the workspace and its JSONL files.
//!
//! Every crate that holds a conversation holds these types: `sft-compose` loads sources into
//! [`Record`]s, `sft-chat` renders [`Message`]s, `sft-train` trains on [`Record`]s and `sft-eval`
//! builds its prompts as [`Message`]s. There is no second message type to convert to.
//!
//! * [`Role`] — `system`, `user`, `assistant`. Role names are parsed in one place,
//!   [`Role`]'s [`FromStr`](std::str::FromStr) (serde uses it too); the ShareGPT/Vicuna aliases
//!   (`human`, `gpt`, …) that only the source loaders accept go through [`Role::from_sharegpt`].
//! * [`Message`] — `{"role", "content"}`.
//! * [`Record`] — `{"id", "source", "messages", "tags"[, "metadata"]}`, the chat format
//!   `sft-compose` writes.
//! * JSONL: [`read_jsonl`] (any `T`, `.jsonl` or gzip `.jsonl.gz`, BOM and CRLF accepted, errors
//!   naming `path:line` with the serde error as their source), [`read_records`],
//!   [`write_jsonl`], [`write_json`] and [`write_atomic`] (readers see the old file or the new
//!   one, never half of one).
//!
//! This crate depends on serde, serde_json, thiserror and flate2 only.

#![deny(missing_docs)]

mod error;
mod jsonl;
mod record;

pub use error::{Error, ErrorKind, ParseRoleError, Result};
pub use jsonl::{read_jsonl, read_records, write_atomic, write_json, write_jsonl};
pub use record::{Message, Record, Role};
