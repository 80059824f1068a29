//! Atomic, verifiable checkpoints.
//!
//! Commit protocol (we rely on neither tch nor safetensors for atomicity):
//! 1. write every file into `checkpoints/.tmp-step-N/`, fsync each;
//! 2. write `manifest.json` (format version, step, size and SHA-256 of every file) last, fsync it
//!    and the directory;
//! 3. rename the directory to `checkpoints/step-N` and fsync `checkpoints/`;
//! 4. only then delete checkpoints beyond `keep_last` and stale `.tmp-*` directories.
//!
//! A save killed at any point leaves either a `.tmp-*` directory (ignored and later removed) or a
//! complete `step-N`; earlier checkpoints are never touched before the new one is committed.
//! [`latest_complete`] returns the newest directory whose manifest verifies (sizes and hashes),
//! skipping torn or corrupt ones with a warning.
//!
//! For tests, and only when built with the `crash-injection` feature (off by default; sft-train's
//! own tests enable it through a dev-dependency, so release builds never contain it),
//! `SFT_TRAIN_CRASH_AT=K` aborts the process at the K-th file event (create, write, fsync,
//! rename) of the run, which is how the kill-during-save test reaches every crash point.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
#[cfg(feature = "crash-injection")]
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Version of the checkpoint layout.
pub const FORMAT_VERSION: u32 = 1;

/// What `manifest.json` records about each file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

/// The commit marker of a checkpoint directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Completed optimizer steps.
    pub step: u64,
    /// File name → size and hash.
    pub files: BTreeMap<String, FileEntry>,
}

/// Whether this build contains the `SFT_TRAIN_CRASH_AT` fault-injection hook (the
/// `crash-injection` feature, for tests only).
pub const CRASH_INJECTION: bool = cfg!(feature = "crash-injection");

#[cfg(feature = "crash-injection")]
static EVENTS: AtomicU64 = AtomicU64::new(0);

/// Without the `crash-injection` feature a file event is nothing.
#[cfg(not(feature = "crash-injection"))]
#[inline(always)]
fn event(_what: &str, _path: &Path) {}

/// Test hook: abort at the K-th file event when `SFT_TRAIN_CRASH_AT=K`.
#[cfg(feature = "crash-injection")]
fn event(what: &str, path: &Path) {
    let n = EVENTS.fetch_add(1, Ordering::SeqCst) + 1;
    if let Ok(k) = std::env::var("SFT_TRAIN_CRASH_AT") {
        if k.trim().parse::<u64>().ok() == Some(n) {
            eprintln!(
                "SFT_TRAIN_CRASH_AT={n}: aborting at {what} {}",
                path.display()
            );
            std::process::abort();
        }
    }
}

fn fsync_dir(dir: &Path) -> Result<()> {
    event("fsync-dir", dir);
    let f = std::fs::File::open(dir).map_err(|e| Error::io("open", dir, e))?;
    f.sync_all().map_err(|e| Error::io("fsync", dir, e))
}

/// What a checkpoint file holds.
pub enum FileContent {
    /// Bytes already in memory (JSON state, small files).
    Bytes(Vec<u8>),
    /// Named tensors, streamed to the file as safetensors one tensor at a time
    /// ([`sft_llama::write_safetensors`], `{"format": "pt"}` header): weights and moments never
    /// sit in host memory as a whole file.
    Tensors(Vec<(String, Tensor)>),
    /// Already written into the staging directory by another process ([`write_staged`]: a
    /// ZeRO-1 rank's optimizer shard); committing only hashes it.
    Staged,
}

/// Size and lower-case hex SHA-256 of a file, read in 8 MiB pieces.
fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let f = std::fs::File::open(path)?;
    let mut h = Hashing {
        inner: std::io::sink(),
        hash: Sha256::new(),
        len: 0,
    };
    std::io::copy(&mut std::io::BufReader::with_capacity(8 << 20, f), &mut h)?;
    Ok((h.len, hex::encode(h.hash.finalize())))
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_synced(path: &Path, content: &FileContent) -> Result<FileEntry> {
    if let FileContent::Staged = content {
        let (size, sha256) = hash_file(path).map_err(|e| Error::io("read", path, e))?;
        return Ok(FileEntry { size, sha256 });
    }
    event("create", path);
    let f = std::fs::File::create(path).map_err(|e| Error::io("create", path, e))?;
    event("write", path);
    let mut w = Hashing {
        inner: std::io::BufWriter::with_capacity(8 << 20, f),
        hash: Sha256::new(),
        len: 0,
    };
    match content {
        FileContent::Bytes(bytes) => w
            .write_all(bytes)
            .map_err(|e| Error::io("write", path, e))?,
        FileContent::Staged => {}
        FileContent::Tensors(tensors) => {
            sft_llama::write_safetensors(&mut w, tensors, Some(sft_llama::pt_metadata())).map_err(
                |source| Error::Llama {
                    path: Some(path.to_path_buf()),
                    source,
                },
            )?;
        }
    }
    let Hashing { inner, hash, len } = w;
    let f = inner
        .into_inner()
        .map_err(|e| Error::io("write", path, e.into_error()))?;
    event("fsync", path);
    f.sync_all().map_err(|e| Error::io("fsync", path, e))?;
    Ok(FileEntry {
        size: len,
        sha256: hex::encode(hash.finalize()),
    })
}

/// Writes `bytes` to `path` atomically: sibling temp file, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file_atomic(path, &FileContent::Bytes(bytes.to_vec()))
}

/// [`write_atomic`] of any [`FileContent`] (tensors are streamed).
pub fn write_file_atomic(path: &Path, content: &FileContent) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    write_synced(&tmp, content)?;
    event("rename", path);
    std::fs::rename(&tmp, path).map_err(|e| Error::io("rename", &tmp, e))?;
    fsync_dir(dir)
}

fn tch_kind(dtype: safetensors::Dtype) -> Result<Kind> {
    Ok(match dtype {
        safetensors::Dtype::F32 => Kind::Float,
        safetensors::Dtype::BF16 => Kind::BFloat16,
        safetensors::Dtype::F16 => Kind::Half,
        safetensors::Dtype::F64 => Kind::Double,
        safetensors::Dtype::I64 => Kind::Int64,
        other => {
            return Err(Error::Config(format!(
                "cannot load tensors of dtype {other:?}"
            )))
        }
    })
}

/// Serialises named tensors to safetensors bytes (copied to the CPU, contiguous) with the
/// `{"format": "pt"}` header transformers expects: [`sft_llama::safetensors_bytes`].
pub fn safetensors_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    sft_llama::safetensors_bytes(tensors, Some(sft_llama::pt_metadata()))
        .map_err(|source| Error::Llama { path: None, source })
}

/// Reads a safetensors file into named CPU tensors.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::ckpt_file(path, "not a valid safetensors file")(e.into()))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, tch_kind(view.dtype())?)?;
        out.push((name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Files of one checkpoint, as bytes, before they are committed.
pub struct PendingCheckpoint {
    /// Completed optimizer steps.
    pub step: u64,
    /// File name → contents.
    pub files: Vec<(String, FileContent)>,
}

/// Name of a committed checkpoint directory.
pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:09}")
}

/// Commits a checkpoint under `root` with the protocol in the module docs, then keeps only the
/// newest `keep_last` complete checkpoints. Returns the committed directory.
pub fn commit(root: &Path, ckpt: &PendingCheckpoint, keep_last: usize) -> Result<PathBuf> {
    prepare_staging(root, ckpt.step)?;
    commit_staged(root, ckpt, keep_last)
}

/// The staging directory of step `step`'s checkpoint under `root`.
pub fn staging_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!(".tmp-{}", step_dir_name(step)))
}

/// Creates an empty staging directory for step `step` (removing a stale one).
pub fn prepare_staging(root: &Path, step: u64) -> Result<PathBuf> {
    std::fs::create_dir_all(root).map_err(|e| Error::io("create", root, e))?;
    let tmp = staging_dir(root, step);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io("remove", &tmp, e))?;
    }
    event("create-dir", &tmp);
    std::fs::create_dir(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    Ok(tmp)
}

/// Writes (and fsyncs) one file of step `step`'s checkpoint into its staging directory, for a
/// process other than the committer (a ZeRO-1 rank's optimizer shard). The committer lists it
/// as [`FileContent::Staged`].
pub fn write_staged(root: &Path, step: u64, name: &str, content: &FileContent) -> Result<()> {
    write_synced(&staging_dir(root, step).join(name), content).map(|_| ())
}

/// [`commit`] into a staging directory already prepared ([`prepare_staging`]), which may hold
/// files other processes wrote ([`write_staged`]).
pub fn commit_staged(root: &Path, ckpt: &PendingCheckpoint, keep_last: usize) -> Result<PathBuf> {
    let final_dir = root.join(step_dir_name(ckpt.step));
    let tmp = staging_dir(root, ckpt.step);
    let mut files = BTreeMap::new();
    for (name, content) in &ckpt.files {
        files.insert(name.clone(), write_synced(&tmp.join(name), content)?);
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        step: ckpt.step,
        files,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|source| Error::Serialize {
        what: "checkpoint manifest",
        source,
    })?;
    write_synced(&tmp.join("manifest.json"), &FileContent::Bytes(json))?;
    fsync_dir(&tmp)?;
    if final_dir.exists() {
        // Only possible when the same step is saved twice; the old copy is replaced.
        std::fs::remove_dir_all(&final_dir).map_err(|e| Error::io("remove", &final_dir, e))?;
    }
    event("rename", &final_dir);
    std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io("rename", &tmp, e))?;
    fsync_dir(root)?;
    prune(root, keep_last)?;
    Ok(final_dir)
}

fn step_dirs(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io("read", root, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("read", root, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Checks a checkpoint directory against its manifest (sizes and SHA-256 of every file).
pub fn verify(dir: &Path) -> Result<Manifest> {
    let mpath = dir.join("manifest.json");
    let text = std::fs::read(&mpath)
        .map_err(|e| Error::ckpt_file(&mpath, "no readable manifest.json")(e.into()))?;
    let m: Manifest = serde_json::from_slice(&text)
        .map_err(|e| Error::ckpt_file(&mpath, "bad manifest")(e.into()))?;
    if m.format_version != FORMAT_VERSION {
        return Err(Error::ckpt(
            &mpath,
            format!(
                "format_version {} (supported: {FORMAT_VERSION})",
                m.format_version
            ),
        ));
    }
    for (name, entry) in &m.files {
        let p = dir.join(name);
        // Streamed: a checkpoint's files can be far larger than RAM.
        let (size, sha256) =
            hash_file(&p).map_err(|e| Error::ckpt_file(&p, "unreadable")(e.into()))?;
        if size != entry.size {
            return Err(Error::ckpt(
                &p,
                format!("size {size} but manifest says {}", entry.size),
            ));
        }
        if sha256 != entry.sha256 {
            return Err(Error::ckpt(&p, "SHA-256 differs from the manifest"));
        }
    }
    Ok(m)
}

/// The newest checkpoint under `root` that verifies, if any. Torn or corrupt ones are skipped
/// with a warning. `Ok(None)` means there is no `step-*` directory at all; directories that all
/// fail verification are an error, so a run never silently restarts from scratch.
pub fn latest_complete(root: &Path) -> Result<Option<(PathBuf, Manifest)>> {
    let dirs = step_dirs(root)?;
    if dirs.is_empty() {
        return Ok(None);
    }
    let mut problems = Vec::new();
    for (_, dir) in dirs.into_iter().rev() {
        match verify(&dir) {
            Ok(m) => return Ok(Some((dir, m))),
            Err(e) => {
                tracing::warn!(%e, "skipping incomplete or corrupt checkpoint");
                problems.push(e.to_string());
            }
        }
    }
    Err(Error::ckpt(
        root,
        format!("no complete checkpoint: {}", problems.join("; ")),
    ))
}

fn prune(root: &Path, keep_last: usize) -> Result<()> {
    let dirs = step_dirs(root)?;
    let n = dirs.len();
    for (_, dir) in dirs.into_iter().take(n.saturating_sub(keep_last)) {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io("remove", &dir, e))?;
    }
    if let Ok(rd) = std::fs::read_dir(root) {
        for entry in rd.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(step: u64) -> PendingCheckpoint {
        PendingCheckpoint {
            step,
            files: vec![("a.bin".into(), FileContent::Bytes(vec![step as u8; 100]))],
        }
    }

    #[test]
    fn commit_verify_prune_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("checkpoints");
        assert!(latest_complete(&root).unwrap().is_none());
        for s in 1..=4 {
            commit(&root, &pending(s), 2).unwrap();
        }
        let names: Vec<u64> = step_dirs(&root)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(names, vec![3, 4]);
        let (p, m) = latest_complete(&root).unwrap().unwrap();
        assert_eq!(m.step, 4);
        // Flip one byte of the newest: resume falls back to step 3.
        let f = p.join("a.bin");
        let mut bytes = std::fs::read(&f).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&f, bytes).unwrap();
        assert_eq!(latest_complete(&root).unwrap().unwrap().1.step, 3);
        // A torn directory without manifest is ignored too.
        std::fs::create_dir(root.join(step_dir_name(9))).unwrap();
        assert_eq!(latest_complete(&root).unwrap().unwrap().1.step, 3);
        // Nothing valid at all is an error, not a fresh start.
        std::fs::remove_dir_all(root.join(step_dir_name(3))).unwrap();
        let err = latest_complete(&root).unwrap_err().to_string();
        assert!(err.contains("no complete checkpoint"), "{err}");
    }

    #[test]
    fn safetensors_round_trip() {
        let t = Tensor::from_slice(&[1.5f32, -2.0, 3.25, 4.0]).reshape([2, 2]);
        let bytes = safetensors_bytes(&[("w".into(), t.shallow_clone())]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        write_atomic(&p, &bytes).unwrap();
        let back = read_safetensors(&p).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].0, "w");
        assert!(back[0].1.equal(&t));
    }
}
