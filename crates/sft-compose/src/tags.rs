//! InsTag-style tag files.
//!
//! Accepted shapes (JSON or JSONL, detected like sources):
//! - JSONL, one object per line: `{"id": "<record id>", "tags": [{"tag": "...", "explanation": "..."}, ...]}`
//!   (tags may also be plain strings; the id may be a number);
//! - a JSON array of such objects;
//! - a JSON object mapping id → tag list.
//!
//! An id matches a record when it equals the record id (`general:17`) or the record's original id
//! (`metadata.orig_id`, e.g. the ShareGPT id `wi6LrU9_19`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{io_err, Error, IssueKind, Location, Result};
use crate::load::{classify, TagList};
use sft_record::Record;

/// Tags per id, read from a tag file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagFile {
    /// id → tags.
    pub tags: HashMap<String, Vec<String>>,
    /// Hex SHA-256 of the file.
    pub sha256: String,
}

/// What applying a tag file did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TagFileStats {
    /// Ids in the file.
    pub entries: usize,
    /// Records that found their id in the file.
    pub records_matched: usize,
    /// Ids in the file that matched no record.
    pub entries_unmatched: usize,
    /// Records carrying each tag from the file.
    pub per_tag: BTreeMap<String, usize>,
}

#[derive(Deserialize)]
struct Entry {
    id: IdValue,
    tags: TagList,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IdValue {
    Text(String),
    Number(i64),
}

impl IdValue {
    fn into_string(self) -> String {
        match self {
            IdValue::Text(s) => s,
            IdValue::Number(n) => n.to_string(),
        }
    }
}

fn bad(path: &Path, line: u64, kind: IssueKind, detail: String) -> Error {
    Error::Record {
        path: path.to_path_buf(),
        location: Location::Line(line),
        kind,
        detail,
    }
}

/// Reads a tag file (strictly: a malformed line is an error naming the file and line).
pub fn load_tag_file(path: &Path) -> Result<TagFile> {
    let data = std::fs::read(path).map_err(io_err(path))?;
    let sha256 = hex::encode(Sha256::digest(&data));
    let text = std::str::from_utf8(&data).map_err(|e| {
        let line = 1 + data[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        bad(path, line, IssueKind::BadUtf8, "invalid UTF-8".into())
    })?;
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    let mut tags = HashMap::new();
    let first = text.trim_start().chars().next();
    let json_whole = |e: serde_json::Error| {
        let (kind, detail) = classify(&e);
        bad(path, e.line() as u64, kind, detail)
    };
    match first {
        None => {
            return Err(Error::EmptySource {
                path: path.to_path_buf(),
                detail: "empty tag file".into(),
            })
        }
        Some('[') => {
            let entries: Vec<Entry> = serde_json::from_str(text).map_err(json_whole)?;
            for e in entries {
                tags.insert(e.id.into_string(), e.tags.into_tags());
            }
        }
        Some('{')
            if serde_json::from_str::<serde_json::Value>(text)
                .is_ok_and(|v| v.get("id").is_none()) =>
        {
            let map: BTreeMap<String, TagList> = serde_json::from_str(text).map_err(json_whole)?;
            for (id, t) in map {
                tags.insert(id, t.into_tags());
            }
        }
        Some(_) => {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let e: Entry = serde_json::from_str(line).map_err(|e| {
                    let (kind, detail) = classify(&e);
                    bad(path, i as u64 + 1, kind, detail)
                })?;
                tags.insert(e.id.into_string(), e.tags.into_tags());
            }
        }
    }
    Ok(TagFile { tags, sha256 })
}

/// Adds the file's tags to matching records.
pub fn apply_tag_file(file: &TagFile, records: &mut [Record]) -> TagFileStats {
    let mut stats = TagFileStats {
        entries: file.tags.len(),
        ..Default::default()
    };
    let mut used = std::collections::HashSet::new();
    for record in records.iter_mut() {
        let orig = record.orig_id();
        let hit = file
            .tags
            .get_key_value(&record.id)
            .or_else(|| orig.as_ref().and_then(|o| file.tags.get_key_value(o)));
        if let Some((key, tags)) = hit {
            used.insert(key.clone());
            stats.records_matched += 1;
            let mut unique = tags.clone();
            unique.sort();
            unique.dedup();
            for t in &unique {
                *stats.per_tag.entry(t.clone()).or_insert(0) += 1;
            }
            record.add_tags(unique);
        }
    }
    stats.entries_unmatched = file.tags.len() - used.len();
    stats
}
