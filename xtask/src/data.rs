//! The training/eval datasets: where the tools look for them, and `cargo xtask fetch-data`, which
//! downloads GSM8K and Code Alpaca from their public sources at pinned commits.

use anyhow::{bail, Context, Result};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::setup::workspace_root;

/// The default `--base-url`: GitHub's raw file host.
pub const DEFAULT_BASE_URL: &str = "https://raw.githubusercontent.com";

/// One file of a public repository at a pinned commit.
pub struct DataFile {
    /// Path under the base URL: `owner/repo/commit/path`.
    pub url_path: &'static str,
    /// Destination under `--out`.
    pub dest: &'static str,
    /// sha256 of the copy in the shared data directory (`../shared/data`): the only copy this
    /// project could hash. For GSM8K it is byte-identical to upstream (same git blob id).
    pub sha256: &'static str,
    /// The git blob id (sha1 of `blob <len>\0<bytes>`) of the upstream file at that commit, from
    /// the shared data's README. Code Alpaca's shared copy is a reordered rebuild, so a download of
    /// the original is recognised by this id, not by the sha256.
    pub git_blob: &'static str,
}

/// The files `fetch-data` downloads.
pub const DATA_FILES: &[DataFile] = &[
    DataFile {
        url_path: "openai/grade-school-math/3101c7d5072418e28b9008a6636bde82a006892c/grade_school_math/data/train.jsonl",
        dest: "gsm8k/train.jsonl",
        sha256: "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
        git_blob: "7d97154b91aef28d01c3301741c81ce90039a4b1",
    },
    DataFile {
        url_path: "openai/grade-school-math/3101c7d5072418e28b9008a6636bde82a006892c/grade_school_math/data/test.jsonl",
        dest: "gsm8k/test.jsonl",
        sha256: "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
        git_blob: "e4c2ff4942b9a78bd74f04141224c11e28d12dc9",
    },
    DataFile {
        url_path: "sahil280114/codealpaca/2f78ddc5c682ed6738ad092bbbfa59ba915afcb0/data/code_alpaca_20k.json",
        dest: "code_alpaca/code_alpaca_20k.json",
        sha256: "fe2db387764bf8991a16d011f4e768ee18fe42483d65ca5fcc206bb467109175",
        git_blob: "4599591b17572755907bd945e34d25a956dcab09",
    },
];

/// The data directory the tools use by default: `SFT_DATA_DIR` when set, else `../shared/data`
/// beside the checkout when it exists.
pub fn default_data_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SFT_DATA_DIR") {
        return Some(PathBuf::from(d));
    }
    let shared = workspace_root().join("../shared/data");
    shared
        .is_dir()
        .then(|| shared.canonicalize().unwrap_or(shared))
}

/// The identity of some bytes: sha256 and git blob id.
struct Digests {
    sha256: String,
    git_blob: String,
}

fn digests_of_file(path: &Path) -> Result<Digests> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata()?.len();
    let mut sha = Sha256::new();
    let mut blob = Sha1::new();
    blob.update(format!("blob {len}\0").as_bytes());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        blob.update(&buf[..n]);
    }
    Ok(Digests {
        sha256: hex::encode(sha.finalize()),
        git_blob: hex::encode(blob.finalize()),
    })
}

impl DataFile {
    fn accepts(&self, d: &Digests) -> bool {
        d.sha256 == self.sha256 || d.git_blob == self.git_blob
    }
}

/// What `fetch` did with one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// A valid copy was there already: nothing downloaded.
    Present,
    /// Downloaded and checked.
    Downloaded,
}

/// Downloads `file` from `base_url` into `out`: streamed to `<dest>.part`, checked, renamed into
/// place. An existing valid file is kept; a wrong download is deleted and refused.
pub fn fetch(file: &DataFile, base_url: &str, out: &Path) -> Result<Fetched> {
    let dest = out.join(file.dest);
    if dest.is_file() && digests_of_file(&dest).is_ok_and(|d| file.accepts(&d)) {
        return Ok(Fetched::Present);
    }
    let dir = dest.parent().expect("data paths have a parent");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let url = format!("{}/{}", base_url.trim_end_matches('/'), file.url_path);
    let part = dest.with_file_name(format!(
        "{}.part",
        dest.file_name().expect("a file name").to_string_lossy()
    ));
    let result = download(&url, &part).and_then(|()| {
        let d = digests_of_file(&part)?;
        if !file.accepts(&d) {
            bail!(
                "{url}: sha256 {} (git blob {}) matches neither the pinned sha256 {} nor the \
                 upstream git blob {}: refusing it",
                d.sha256,
                d.git_blob,
                file.sha256,
                file.git_blob
            );
        }
        std::fs::rename(&part, &dest)
            .with_context(|| format!("renaming {} to {}", part.display(), dest.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result.map(|()| Fetched::Downloaded)
}

fn download(url: &str, part: &Path) -> Result<()> {
    let resp = ureq::get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let mut body = resp.into_body();
    let mut reader = body.as_reader();
    let mut f =
        std::fs::File::create(part).with_context(|| format!("creating {}", part.display()))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("reading {url}"))?;
        if n == 0 {
            break;
        }
        f.write_all(&buf[..n])
            .with_context(|| format!("writing {}", part.display()))?;
    }
    f.sync_all()?;
    Ok(())
}

/// `cargo xtask fetch-data [--base-url URL] [--out DIR]`.
pub fn fetch_data(base_url: &str, out: &Path) -> Result<()> {
    let mut failed = Vec::new();
    for file in DATA_FILES {
        match fetch(file, base_url, out) {
            Ok(Fetched::Present) => {
                eprintln!("[fetch-data] {}: present", out.join(file.dest).display())
            }
            Ok(Fetched::Downloaded) => {
                eprintln!("[fetch-data] {}: downloaded", out.join(file.dest).display())
            }
            Err(e) => {
                eprintln!("[fetch-data] {}: {e:#}", file.dest);
                failed.push(file.dest);
            }
        }
    }
    if !failed.is_empty() {
        bail!("could not fetch {}", failed.join(", "));
    }
    eprintln!(
        "[fetch-data] done; use it with SFT_DATA_DIR={} (ShareGPT comes from `cargo xtask setup`)",
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;

    /// A loopback HTTP/1.1 server that serves `files` (url path → bytes), 404 for anything else.
    fn serve(files: Vec<(String, Vec<u8>)>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    continue;
                }
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                        break;
                    }
                }
                let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
                let body = files
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map(|(_, b)| b.clone());
                let (status, body) = match body {
                    Some(b) => ("200 OK", b),
                    None => ("404 Not Found", b"not found".to_vec()),
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(&body);
            }
        });
        format!("http://{addr}")
    }

    fn shared() -> PathBuf {
        let dir = default_data_dir().expect(
            "the shared data directory is needed (set SFT_DATA_DIR, or put it at ../shared/data)",
        );
        assert!(
            dir.join("gsm8k/train.jsonl").is_file(),
            "{} has no gsm8k/train.jsonl (set SFT_DATA_DIR to the data directory)",
            dir.display()
        );
        dir
    }

    #[test]
    fn fetches_checks_and_is_idempotent() {
        let data = shared();
        let files = DATA_FILES
            .iter()
            .map(|f| {
                (
                    format!("/{}", f.url_path),
                    std::fs::read(data.join(f.dest)).unwrap(),
                )
            })
            .collect();
        let base = serve(files);
        let out = tempfile::tempdir().unwrap();
        for f in DATA_FILES {
            assert_eq!(fetch(f, &base, out.path()).unwrap(), Fetched::Downloaded);
            assert_eq!(
                std::fs::read(out.path().join(f.dest)).unwrap(),
                std::fs::read(data.join(f.dest)).unwrap()
            );
        }
        // A second run downloads nothing, even with the server unreachable.
        for f in DATA_FILES {
            assert_eq!(
                fetch(f, "http://127.0.0.1:9", out.path()).unwrap(),
                Fetched::Present
            );
        }
        fetch_data(&base, out.path()).unwrap();
    }

    #[test]
    fn a_wrong_download_is_refused_and_leaves_no_file() {
        let f = &DATA_FILES[1];
        let base = serve(vec![(
            format!("/{}", f.url_path),
            b"{\"question\": \"tampered\", \"answer\": \"#### 0\"}\n".to_vec(),
        )]);
        let out = tempfile::tempdir().unwrap();
        let e = format!("{:#}", fetch(f, &base, out.path()).unwrap_err());
        assert!(e.contains("refusing"), "{e}");
        assert!(e.contains(f.sha256), "{e}");
        let dest = out.path().join(f.dest);
        assert!(!dest.exists());
        let left: Vec<_> = std::fs::read_dir(dest.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        // A 404 is an error too, and leaves nothing.
        let e = format!(
            "{:#}",
            fetch(&DATA_FILES[0], &base, out.path()).unwrap_err()
        );
        assert!(e.contains("404"), "{e}");
        assert!(!out.path().join(DATA_FILES[0].dest).exists());
    }

    #[test]
    fn git_blob_ids_are_computed_like_git() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"hello\n").unwrap();
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(
            digests_of_file(&p).unwrap().git_blob,
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
    }
}
