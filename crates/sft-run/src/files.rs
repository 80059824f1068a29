//! Small file helpers: atomic JSON writes, hashing, locks.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Writes `bytes` to `path` through a temporary file in the same directory, fsync and rename,
/// so a reader sees the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).map_err(Error::io("create", &tmp))?;
        f.write_all(bytes).map_err(Error::io("write", &tmp))?;
        f.sync_all().map_err(Error::io("fsync", &tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(Error::io("rename", path))?;
    Ok(())
}

/// Pretty JSON of `value`, written atomically.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Reads and parses a JSON file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(Error::io("read", path))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Hex SHA-256 of a file's bytes.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(Error::io("open", path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(Error::io("read", path))?;
    Ok(hex::encode(h.finalize()))
}

/// Fingerprint of a model: the SHA-256 of a file, or for a directory the SHA-256 over the names and
/// SHA-256s of its regular files (sorted), so the same weights give the same key wherever they are.
pub fn fingerprint_model(path: &Path) -> Result<String> {
    if path.is_file() {
        return sha256_file(path);
    }
    let mut names: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(Error::io("list", path))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(Error::Settings(format!(
            "model {} is an empty directory",
            path.display()
        )));
    }
    let mut h = Sha256::new();
    for p in names {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        h.update(name.as_bytes());
        h.update(b"\0");
        h.update(sha256_file(&p)?.as_bytes());
        h.update(b"\n");
    }
    Ok(hex::encode(h.finalize()))
}

/// An exclusive lock on a directory, held by this process until dropped.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
}

impl DirLock {
    /// Takes `dir/lock`, or fails with [`Error::Locked`] when a live process holds it.
    /// A lock left by a dead process is taken over (with a warning).
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
        let path = dir.join("lock");
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    let me = std::process::id();
                    f.write_all(me.to_string().as_bytes())
                        .map_err(Error::io("write", &path))?;
                    return Ok(DirLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(&path)
                        .unwrap_or_default()
                        .trim()
                        .parse::<u32>()
                        .ok();
                    match owner {
                        Some(pid)
                            if pid != std::process::id()
                                && Path::new(&format!("/proc/{pid}")).exists() =>
                        {
                            return Err(Error::Locked { path, pid });
                        }
                        _ => {
                            tracing::warn!(lock = %path.display(), ?owner, "taking over a stale lock");
                            std::fs::remove_file(&path).map_err(Error::io("remove", &path))?;
                        }
                    }
                }
                Err(e) => return Err(Error::io("create", &path)(e)),
            }
        }
        Err(Error::Settings(format!(
            "{}: could not take the lock",
            path.display()
        )))
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive_and_stale_locks_are_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let lock = DirLock::acquire(dir.path()).unwrap();
        // Our own pid: a second acquire from the same process is treated as stale (re-entrant).
        drop(lock);
        assert!(!dir.path().join("lock").exists());
        // pid 1 is alive on any Linux machine.
        std::fs::write(dir.path().join("lock"), "1").unwrap();
        assert!(matches!(
            DirLock::acquire(dir.path()),
            Err(Error::Locked { pid: 1, .. })
        ));
        // A pid that cannot exist.
        std::fs::write(dir.path().join("lock"), "4294967295").unwrap();
        let _l = DirLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn directory_fingerprint_depends_on_content_not_location() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            std::fs::write(d.join("config.json"), "{}").unwrap();
            std::fs::write(d.join("model.safetensors"), "weights").unwrap();
        }
        assert_eq!(
            fingerprint_model(a.path()).unwrap(),
            fingerprint_model(b.path()).unwrap()
        );
        std::fs::write(b.path().join("model.safetensors"), "weightz").unwrap();
        assert_ne!(
            fingerprint_model(a.path()).unwrap(),
            fingerprint_model(b.path()).unwrap()
        );
    }
}
