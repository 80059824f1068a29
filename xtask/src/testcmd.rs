//! `cargo xtask test`: the whole suite with one summary line, and the fresh-clone rehearsal.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::setup::{cargo, run, setup, workspace_root};

/// Counts summed over every `test result:` line of `cargo test`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Tests that passed.
    pub passed: u64,
    /// Tests that failed.
    pub failed: u64,
    /// Tests not run: `#[ignore]`d ones.
    pub skipped: u64,
    /// `test result:` lines seen (one per test binary and doc-test run).
    pub binaries: u64,
}

impl Counts {
    /// The one summary line.
    pub fn line(&self) -> String {
        format!(
            "test summary: {} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

/// Parses one `test result: ok. 4 passed; 0 failed; 1 ignored; 0 measured; 2 filtered out; …`
/// line. `Ok(None)` for any other line; `Err` for a `test result:` line that does not parse.
pub fn parse_result_line(line: &str) -> Result<Option<(u64, u64, u64)>> {
    let Some(rest) = line.trim().strip_prefix("test result: ") else {
        return Ok(None);
    };
    let (_status, counts) = rest
        .split_once(". ")
        .with_context(|| format!("cannot parse {line:?}"))?;
    let get = |what: &str| -> Result<u64> {
        counts
            .split(';')
            .map(str::trim)
            .find_map(|part| part.strip_suffix(what).map(str::trim))
            .with_context(|| format!("no `{what}` count in {line:?}"))?
            .parse::<u64>()
            .with_context(|| format!("bad `{what}` count in {line:?}"))
    };
    Ok(Some((get("passed")?, get("failed")?, get("ignored")?)))
}

/// Adds one line of output to `counts`.
pub fn account(counts: &mut Counts, line: &str) -> Result<()> {
    if let Some((p, f, i)) = parse_result_line(line)? {
        counts.passed += p;
        counts.failed += f;
        counts.skipped += i;
        counts.binaries += 1;
    }
    Ok(())
}

/// A CI run builds once from nothing: incremental state would only cost disk (it was 17 GB of a
/// 58 GB `target/debug`). Developers keep it; the user can set `CARGO_INCREMENTAL` either way.
fn no_incremental_on_ci(cmd: &mut Command) {
    if std::env::var_os("CI").is_some() && std::env::var_os("CARGO_INCREMENTAL").is_none() {
        cmd.env("CARGO_INCREMENTAL", "0");
    }
}

/// `cargo xtask test [ARGS]`: set-up, build every target, `cargo test --no-fail-fast`, then the
/// summary line. Fails when a test failed, cargo failed, or the summary cannot be parsed.
pub fn run_tests(extra: &[String]) -> Result<()> {
    let env = setup()?;
    let root = workspace_root();
    // The sweep's end-to-end test drives the real `run_plan` binary, which `cargo test
    // --all-targets` only builds under a hashed test name: build the plain binary first. Building
    // every target of the workspace (not only that example) resolves features exactly as the
    // `cargo test` below does, so nothing is compiled twice.
    let mut build = Command::new(cargo());
    build
        .current_dir(&root)
        .args(["build", "--workspace", "--all-targets"]);
    for (k, v) in env.vars() {
        build.env(k, v);
    }
    no_incremental_on_ci(&mut build);
    run(&mut build, "building the workspace")?;
    let mut cmd = Command::new(cargo());
    cmd.current_dir(&root)
        .args(["test", "--workspace", "--all-targets", "--no-fail-fast"]);
    if let Some(dir) = crate::data::default_data_dir() {
        cmd.env("SFT_DATA_DIR", dir);
    }
    for (k, v) in env.vars() {
        cmd.env(k, v);
    }
    no_incremental_on_ci(&mut cmd);
    if !extra.is_empty() {
        cmd.args(extra);
    }
    let t = Instant::now();
    cmd.stdout(Stdio::piped());
    let mut child = cmd.spawn().context("running cargo test")?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut counts = Counts::default();
    let mut parse_error = None;
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test's output")?;
        // Stream the output through unchanged while counting.
        let _ = writeln!(out, "{line}");
        if let Err(e) = account(&mut counts, &line) {
            parse_error.get_or_insert(e);
        }
    }
    let _ = out.flush();
    drop(out);
    let status = child.wait().context("waiting for cargo test")?;
    eprintln!(
        "[test] cargo test finished in {:.0} s ({status})",
        t.elapsed().as_secs_f64()
    );
    if let Some(e) = parse_error {
        println!("test summary: unavailable");
        bail!("cannot parse cargo test's output: {e:#}");
    }
    if counts.binaries == 0 {
        println!("test summary: unavailable");
        bail!("cargo test printed no `test result:` line ({status})");
    }
    println!("{}", counts.line());
    if counts.failed > 0 {
        bail!("{} test(s) failed", counts.failed);
    }
    if !status.success() {
        bail!("cargo test failed ({status}) although no test reported a failure (a build error or a crashed test binary?)");
    }
    Ok(())
}

/// Options of the fresh-clone rehearsal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FreshOptions {
    /// Where to clone (must not exist or be empty); default a new directory under the temp dir.
    pub dir: Option<PathBuf>,
    /// Keep the directory afterwards (clone, target, cache with the torch venv: about 20 GB).
    pub keep: bool,
    /// Use the user's pip download cache instead of an empty one (torch is not downloaded again,
    /// so the measured time is shorter than on a really fresh machine).
    pub keep_pip_cache: bool,
}

/// `cargo xtask test --fresh`: a fresh `git clone` of HEAD, an empty `SFT_COMPOSE_CACHE`,
/// `bash .ci/run` there, the wall time, then clean-up.
pub fn run_fresh(opts: &FreshOptions) -> Result<()> {
    let root = workspace_root();
    let head = git_output(&root, &["rev-parse", "HEAD"])?;
    let dirty = git_output(&root, &["status", "--porcelain", "--untracked-files=no"])?;
    if !dirty.is_empty() {
        eprintln!(
            "[fresh] WARNING: uncommitted changes in {} are not part of the rehearsal (it clones HEAD {head})",
            root.display()
        );
    }
    let base = match &opts.dir {
        Some(d) => {
            if d.exists() && std::fs::read_dir(d)?.next().is_some() {
                bail!(
                    "--fresh-dir {} exists and is not empty: give a new or empty directory",
                    d.display()
                );
            }
            d.clone()
        }
        None => std::env::temp_dir().join(format!(
            "sft-compose-fresh-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        )),
    };
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let result = fresh_in(&root, &head, &base, opts);
    if opts.keep {
        eprintln!("[fresh] kept {} (--keep)", base.display());
    } else {
        eprintln!("[fresh] removing {}", base.display());
        if let Err(e) = std::fs::remove_dir_all(&base) {
            eprintln!("[fresh] WARNING: could not remove {}: {e}", base.display());
        }
    }
    result
}

fn fresh_in(root: &Path, head: &str, base: &Path, opts: &FreshOptions) -> Result<()> {
    let clone = base.join("sft-compose");
    let cache = base.join("cache");
    std::fs::create_dir_all(&cache)?;
    let t0 = Instant::now();
    run(
        Command::new("git")
            .args(["clone", "--quiet", "--no-hardlinks"])
            .arg(root)
            .arg(&clone),
        "git clone",
    )?;
    run(
        Command::new("git")
            .current_dir(&clone)
            .args(["checkout", "--quiet", "--detach", head]),
        "git checkout",
    )?;
    let mut cmd = Command::new("bash");
    cmd.current_dir(&clone).arg(".ci/run");
    // Nothing of this checkout's set-up may leak in: libtorch, assets, python, cargo's own
    // variables (`cargo xtask` runs us under `cargo run`), and its LD_LIBRARY_PATH additions.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        let cargo_var = k.starts_with("CARGO_") && k != "CARGO_HOME";
        if cargo_var
            || k == "CARGO"
            || k == "RUSTC"
            || k == "LIBTORCH"
            || k == "LIBTORCH_USE_PYTORCH"
            || k == "LIBTORCH_BYPASS_VERSION_CHECK"
            || k == "LD_LIBRARY_PATH"
            || k.starts_with("SFT_")
        {
            cmd.env_remove(&k);
        }
    }
    cmd.env("SFT_COMPOSE_CACHE", &cache);
    if !opts.keep_pip_cache {
        cmd.env("PIP_CACHE_DIR", base.join("pip-cache"));
    }
    // The shared datasets are not in the repository: point the clone at this checkout's.
    if let Some(data) = crate::data::default_data_dir() {
        cmd.env("SFT_DATA_DIR", &data);
        eprintln!("[fresh] SFT_DATA_DIR={}", data.display());
    }
    eprintln!(
        "[fresh] HEAD {head} cloned into {}; SFT_COMPOSE_CACHE={} (empty); pip cache: {}; \
         cargo's registry cache ({}) is shared",
        clone.display(),
        cache.display(),
        if opts.keep_pip_cache {
            "the user's (--keep-pip-cache)"
        } else {
            "empty"
        },
        std::env::var("CARGO_HOME").unwrap_or_else(|_| "~/.cargo".into())
    );
    let t = Instant::now();
    let status = cmd.status().context("running bash .ci/run")?;
    let secs = t.elapsed().as_secs();
    eprintln!(
        "[fresh] bash .ci/run: {status}; wall time {} min {} s (clone included: {:.0} s)",
        secs / 60,
        secs % 60,
        t0.elapsed().as_secs_f64()
    );
    println!(
        "fresh rehearsal wall time: {} min {} s ({status})",
        secs / 60,
        secs % 60
    );
    if !status.success() {
        bail!("the fresh-clone rehearsal failed ({status})");
    }
    Ok(())
}

fn git_output(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!(
            "git {} failed in {}: {}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cargo_test_result_lines() {
        let mut c = Counts::default();
        for line in [
            "running 4 tests",
            "test a ... ok",
            "test result: ok. 4 passed; 0 failed; 1 ignored; 0 measured; 26 filtered out; finished in 0.00s",
            "test result: FAILED. 2 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.20s",
            "   Doc-tests sft_compose",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
        ] {
            account(&mut c, line).unwrap();
        }
        assert_eq!(
            c,
            Counts {
                passed: 6,
                failed: 3,
                skipped: 1,
                binaries: 3
            }
        );
        assert_eq!(c.line(), "test summary: 6 passed, 3 failed, 1 skipped");
    }

    #[test]
    fn a_garbled_result_line_is_an_error() {
        let mut c = Counts::default();
        assert!(account(&mut c, "test result: ok. many passed; 0 failed; 0 ignored").is_err());
        assert!(account(&mut c, "test result: ok").is_err());
        assert!(account(&mut c, "test result: ok. 1 passed; 0 failed").is_err());
        assert_eq!(c, Counts::default());
    }
}
