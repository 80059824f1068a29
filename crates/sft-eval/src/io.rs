//! JSONL and JSON files for every benchmark: `sft-record`'s one reader and writer, re-exported
//! (`.jsonl` or gzip `.jsonl.gz`, errors that name the file and line, atomic writes). Their
//! errors convert into [`crate::EvalError::File`].

pub use sft_record::{read_jsonl, write_atomic, write_json, write_jsonl};
