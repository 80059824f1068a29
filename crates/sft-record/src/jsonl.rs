//! JSONL and JSON files: one reader, one writer, one atomic replace.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::record::Record;

/// Reads every non-blank line of a JSONL file as a `T`, in file order.
///
/// A name ending in `.gz` is read through gzip. A UTF-8 BOM before the first line and CRLF line
/// endings are accepted; surrounding whitespace and blank lines are skipped. A line that is not
/// UTF-8 or not a `T` is an error naming `path:line` (1-based) with the decoder's or serde's
/// error as its source.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let file = File::open(path).map_err(Error::io("open", path))?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut out = Vec::new();
    for (i, line) in BufReader::with_capacity(1 << 20, reader)
        .split(b'\n')
        .enumerate()
    {
        let line_no = i + 1;
        let bytes = line.map_err(Error::io("read", path))?;
        let text = std::str::from_utf8(&bytes).map_err(|source| Error::Utf8 {
            path: path.to_path_buf(),
            line: line_no,
            source,
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
        let value = serde_json::from_str(text).map_err(|source| Error::Parse {
            path: path.to_path_buf(),
            line: line_no,
            source,
        })?;
        out.push(value);
    }
    Ok(out)
}

/// Reads chat-format records ([`Record`]) from a JSONL file; see [`read_jsonl`].
///
/// A role other than `system`, `user` or `assistant` is a [`Error::Parse`] naming the line.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    read_jsonl(path)
}

/// Writes `items` as JSONL (one compact JSON value and `\n` per item) to `path`, atomically
/// (see [`write_atomic`]). Returns the number of items written.
pub fn write_jsonl<'a, T, I>(path: &Path, items: I) -> Result<u64>
where
    T: Serialize + 'a,
    I: IntoIterator<Item = &'a T>,
{
    replace_with(path, |w| {
        let mut n = 0u64;
        for (index, item) in items.into_iter().enumerate() {
            serde_json::to_writer(&mut *w, item).map_err(|source| {
                if source.is_io() {
                    Error::Io {
                        op: "write",
                        path: path.to_path_buf(),
                        source: source.into(),
                    }
                } else {
                    Error::Serialize {
                        path: path.to_path_buf(),
                        index,
                        source,
                    }
                }
            })?;
            w.write_all(b"\n").map_err(Error::io("write", path))?;
            n += 1;
        }
        Ok(n)
    })
}

/// Writes `value` as pretty JSON with a final newline to `path`, atomically.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let mut buf = serde_json::to_vec_pretty(value).map_err(|source| Error::Serialize {
        path: path.to_path_buf(),
        index: 0,
        source,
    })?;
    buf.push(b'\n');
    write_atomic(path, &buf)
}

/// Replaces `path` with `bytes` so that readers see the old or the new file, never half of one:
/// the bytes go to a temporary sibling (`.<name>.tmp-<pid>-<n>`), which is synced and renamed over
/// `path`. On failure the temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_with(path, |w| {
        w.write_all(bytes).map_err(Error::io("write", path))
    })
}

/// The one atomic-replace path: `write` fills a buffered temporary sibling of `path`, which is
/// then flushed, synced and renamed to `path`.
fn replace_with<T>(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<T>,
) -> Result<T> {
    let tmp = temp_sibling(path);
    let result = (|| {
        let file = File::create(&tmp).map_err(Error::io("create", &tmp))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let out = write(&mut w)?;
        let file = w
            .into_inner()
            .map_err(|e| Error::io("write", path)(e.into_error()))?;
        file.sync_all().map_err(Error::io("sync", path))?;
        std::fs::rename(&tmp, path).map_err(Error::io("rename", path))?;
        Ok(out)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn temp_sibling(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}
