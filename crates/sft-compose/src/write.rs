//! Writing records in the chat format.

use std::path::{Path, PathBuf};

use crate::error::{io_err, Result};
use sft_record::Record;

/// Runs `write` on a temporary path beside `path`, then renames it into place, so a crash
/// never leaves a half-written output under the final name.
pub(crate) fn write_atomically<T>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    let mut tmp_name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    tmp_name.push(".tmp");
    let tmp: PathBuf = path.with_file_name(tmp_name);
    let out = write(&tmp)?;
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(out)
}

/// Writes records as JSONL: one `{"id","source","messages","tags"[,"metadata"]}` object per line,
/// atomically, through [`sft_record::write_jsonl`]. Returns the number of records written.
pub fn write_jsonl<'a>(path: &Path, records: impl IntoIterator<Item = &'a Record>) -> Result<u64> {
    Ok(sft_record::write_jsonl(path, records)?)
}

/// Writes records as Parquet (see [`crate::parquet_io`] for the schema).
pub fn write_parquet<'a>(
    path: &Path,
    records: impl IntoIterator<Item = &'a Record>,
) -> Result<u64> {
    write_atomically(path, |tmp| crate::parquet_io::write_parquet(tmp, records))
}
