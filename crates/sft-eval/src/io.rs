//! JSONL reading and writing shared by every benchmark: `.jsonl` or gzip-compressed `.jsonl.gz`,
//! errors that name the file and line, and atomic writes.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{EvalError, Result};

/// Reads every non-blank line of a JSONL file (gzip when the name ends in `.gz`) as a `T`.
///
/// A UTF-8 BOM and CRLF endings are accepted; a bad line is an error naming `path:line`.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let file = File::open(path).map_err(|e| EvalError::io(path, e))?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut out = Vec::new();
    for (i, line) in BufReader::new(reader).split(b'\n').enumerate() {
        let line_no = i + 1;
        let bytes = line.map_err(|e| EvalError::io(path, e))?;
        let text = std::str::from_utf8(&bytes).map_err(|e| EvalError::BadRecord {
            path: path.to_path_buf(),
            line: line_no,
            message: format!("invalid UTF-8: {e}"),
        })?;
        let text = if line_no == 1 {
            text.trim_start_matches('\u{feff}')
        } else {
            text
        };
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let value = serde_json::from_str(text).map_err(|e| EvalError::BadRecord {
            path: path.to_path_buf(),
            line: line_no,
            message: e.to_string(),
        })?;
        out.push(value);
    }
    Ok(out)
}

/// Writes `records` as JSONL to `path` atomically (a sibling temp file, fsync, rename).
pub fn write_jsonl<T: Serialize>(path: &Path, records: &[T]) -> Result<()> {
    let mut buf = Vec::new();
    for r in records {
        serde_json::to_writer(&mut buf, r)
            .map_err(|e| EvalError::io(path, std::io::Error::other(e)))?;
        buf.push(b'\n');
    }
    write_atomic(path, &buf)
}

/// Writes `value` as pretty JSON (with a final newline) to `path` atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut buf = serde_json::to_vec_pretty(value)
        .map_err(|e| EvalError::io(path, std::io::Error::other(e)))?;
    buf.push(b'\n');
    write_atomic(path, &buf)
}

/// Replaces `path` with `bytes` so that readers see the old or the new file, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| EvalError::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| EvalError::io(path, e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| EvalError::io(path, e))?;
    tmp.persist(path)
        .map_err(|e| EvalError::io(path, e.error))?;
    Ok(())
}
