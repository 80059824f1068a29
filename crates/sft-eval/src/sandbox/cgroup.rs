//! Per-sample cgroup v1 groups: a `pids` group caps the process count (this holds for root, unlike
//! `RLIMIT_NPROC`), a `memory` group caps the whole process tree, and killing every member of the
//! `pids` group at the end removes anything that escaped the PID namespace teardown.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{EvalError, Result};

static NEXT_GROUP: AtomicU64 = AtomicU64::new(0);

/// Where the `pids` and `memory` hierarchies live and which groups ours are created under.
#[derive(Debug, Clone)]
pub(crate) struct CgroupV1 {
    pids_parent: PathBuf,
    memory_parent: PathBuf,
}

impl CgroupV1 {
    /// Finds the v1 `pids` and `memory` hierarchies under `root` and the groups this process is in
    /// (children are created there, so the sandbox stays inside our own accounting).
    pub(crate) fn discover(root: &Path, self_cgroup: &Path) -> Result<CgroupV1> {
        let own = fs::read_to_string(self_cgroup).map_err(|e| EvalError::ModeUnavailable {
            mode: "cgroup_v1",
            reason: format!("cannot read {}", self_cgroup.display()),
            source: Some(e),
        })?;
        let unavailable = |reason: String| EvalError::ModeUnavailable {
            mode: "cgroup_v1",
            reason,
            source: None,
        };
        let own_path = |controller: &str| -> Option<String> {
            own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
                ctrls
                    .split(',')
                    .any(|c| c == controller)
                    .then(|| path.trim_start_matches('/').to_string())
            })
        };
        let mut parents = Vec::new();
        for controller in ["pids", "memory"] {
            let mount = root.join(controller);
            let rel = own_path(controller).ok_or_else(|| {
                unavailable(format!(
                    "no cgroup v1 '{controller}' controller in {}",
                    self_cgroup.display()
                ))
            })?;
            let parent = mount.join(rel);
            if !parent.is_dir() {
                return Err(unavailable(format!(
                    "cgroup {} does not exist (is the v1 '{controller}' hierarchy mounted at {}?)",
                    parent.display(),
                    mount.display()
                )));
            }
            parents.push(parent);
        }
        let memory_parent = parents.pop().unwrap_or_default();
        let pids_parent = parents.pop().unwrap_or_default();
        Ok(CgroupV1 {
            pids_parent,
            memory_parent,
        })
    }

    /// Removes groups left by earlier runs that died without cleaning up (their creator's pid is
    /// gone): kills any member and removes the group. Returns how many groups were removed.
    pub(crate) fn remove_stale(&self) -> usize {
        let mut removed = 0;
        for parent in [&self.pids_parent, &self.memory_parent] {
            let Ok(entries) = fs::read_dir(parent) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(owner) = name
                    .strip_prefix("sft-eval-")
                    .and_then(|r| r.split('-').next())
                else {
                    continue;
                };
                let Ok(owner) = owner.parse::<u32>() else {
                    continue;
                };
                if owner == std::process::id() || Path::new(&format!("/proc/{owner}")).exists() {
                    continue;
                }
                let stale = SampleGroup {
                    pids: Some(e.path()),
                    memory: None,
                };
                match stale.destroy(Duration::from_secs(2)) {
                    Ok(_) => removed += 1,
                    Err(err) => {
                        tracing::warn!("cannot remove stale cgroup {}: {err}", e.path().display())
                    }
                }
            }
        }
        removed
    }

    /// Creates a fresh pair of groups with the given limits.
    pub(crate) fn create(&self, max_pids: u64, memory_bytes: u64) -> Result<SampleGroup> {
        let name = format!(
            "sft-eval-{}-{}",
            std::process::id(),
            NEXT_GROUP.fetch_add(1, Ordering::Relaxed)
        );
        let pids = self.pids_parent.join(&name);
        let memory = self.memory_parent.join(&name);
        fs::create_dir(&pids).map_err(|e| cg_err(&pids, "create", e))?;
        // From here on, dropping `group` removes whatever was created.
        let mut group = SampleGroup {
            pids: Some(pids.clone()),
            memory: None,
        };
        write(&pids.join("pids.max"), &max_pids.to_string())?;
        fs::create_dir(&memory).map_err(|e| cg_err(&memory, "create", e))?;
        group.memory = Some(memory.clone());
        write(
            &memory.join("memory.limit_in_bytes"),
            &memory_bytes.to_string(),
        )?;
        let memsw = memory.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            write(&memsw, &memory_bytes.to_string())?;
        }
        Ok(group)
    }
}

fn cg_err(path: &Path, action: &'static str, source: std::io::Error) -> EvalError {
    EvalError::Cgroup {
        path: path.to_path_buf(),
        action,
        source,
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(|e| cg_err(path, "write", e))
}

/// One sample's groups; [`SampleGroup::destroy`] kills every member and removes them.
#[derive(Debug)]
pub(crate) struct SampleGroup {
    pids: Option<PathBuf>,
    memory: Option<PathBuf>,
}

impl SampleGroup {
    /// The `cgroup.procs` files a process must write its pid into to join.
    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        [&self.pids, &self.memory]
            .into_iter()
            .flatten()
            .map(|p| p.join("cgroup.procs"))
            .collect()
    }

    /// Whether the memory controller killed something for exceeding the limit.
    pub(crate) fn oom_killed(&self) -> bool {
        let Some(mem) = &self.memory else {
            return false;
        };
        fs::read_to_string(mem.join("memory.oom_control"))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                })
            })
            .is_some_and(|n| n > 0)
    }

    /// Process ids still in the group.
    pub(crate) fn members(&self) -> Vec<i32> {
        let Some(pids) = &self.pids else {
            return Vec::new();
        };
        fs::read_to_string(pids.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILLs every member until the group is empty (bounded by `patience`), then removes the
    /// groups. Returns how many processes had to be killed here.
    pub(crate) fn destroy(mut self, patience: Duration) -> Result<usize> {
        self.kill_all(patience)
    }

    fn kill_all(&mut self, patience: Duration) -> Result<usize> {
        let deadline = Instant::now() + patience;
        let mut killed = 0;
        loop {
            let members = self.members();
            if members.is_empty() {
                break;
            }
            for pid in &members {
                if kill(Pid::from_raw(*pid), Signal::SIGKILL).is_ok() {
                    killed += 1;
                }
            }
            if Instant::now() > deadline {
                return Err(EvalError::Sandbox(format!(
                    "processes {members:?} survived SIGKILL for {patience:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        for dir in [self.pids.take(), self.memory.take()].into_iter().flatten() {
            remove_dir_retrying(&dir, deadline)?;
        }
        Ok(killed)
    }
}

fn remove_dir_retrying(dir: &Path, deadline: Instant) -> Result<()> {
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(cg_err(dir, "remove", e)),
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

impl Drop for SampleGroup {
    fn drop(&mut self) {
        if self.pids.is_some() || self.memory.is_some() {
            if let Err(e) = self.kill_all(Duration::from_secs(2)) {
                tracing::error!("sandbox cgroup cleanup failed: {e}");
            }
        }
    }
}
