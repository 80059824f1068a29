//! Per-sample cgroup v2 groups inside a delegated subtree.
//!
//! The subtree is the process's own cgroup (the `0::/path` line of `/proc/self/cgroup`, under the
//! v2 mount) when this user may write to it: a systemd `--user --scope` with `Delegate=yes`, a
//! container's cgroup namespace root, or a group an administrator `chown`ed to the user.
//!
//! cgroup v2's "no internal processes" rule: a non-root group that enables controllers for its
//! children (`cgroup.subtree_control`) may not hold processes itself. So, unless the controllers are
//! already enabled, [`CgroupV2::discover`] first creates a leaf `sft-eval-<pid>-supervisor`, moves
//! every process of the own group into it (this process included), and only then writes
//! `+pids +memory` to the own group's `cgroup.subtree_control`. Sample groups
//! `sft-eval-<pid>-<n>` are created beside the leaf, get `pids.max`, `memory.max` and
//! `memory.swap.max`, are joined by the sample's first process, and are killed as a whole through
//! `cgroup.kill` (Linux 5.14+; SIGKILL of every member on older kernels) before being removed.
//!
//! ```text
//! <own group>/                      cgroup.subtree_control += "+pids +memory"
//!   sft-eval-<pid>-supervisor/      this process (and whatever else was in <own group>)
//!   sft-eval-<pid>-<n>/             one sample: pids.max, memory.max, memory.swap.max, cgroup.kill
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{EvalError, Result};

static NEXT_GROUP: AtomicU64 = AtomicU64::new(0);

const CONTROLLERS: [&str; 2] = ["pids", "memory"];

/// The delegated group that sample groups are created in.
#[derive(Debug, Clone)]
pub(crate) struct CgroupV2 {
    base: PathBuf,
}

/// The cgroup v2 mount under `root`: `root` itself on a v2-only host, `root/unified` on a hybrid one.
pub(crate) fn v2_mount(root: &Path) -> Option<PathBuf> {
    [root.to_path_buf(), root.join("unified")]
        .into_iter()
        .find(|p| p.join("cgroup.controllers").is_file())
}

/// The `0::/path` line of a `/proc/<pid>/cgroup` file, without the leading `/`.
pub(crate) fn own_v2_path(self_cgroup: &Path) -> Result<String> {
    let own = fs::read_to_string(self_cgroup).map_err(|e| EvalError::io(self_cgroup, e))?;
    own.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().trim_start_matches('/').to_string())
        .ok_or_else(|| {
            unavailable(format!(
                "{} has no cgroup v2 (`0::/path`) line",
                self_cgroup.display()
            ))
        })
}

fn unavailable(reason: String) -> EvalError {
    EvalError::ModeUnavailable {
        mode: "cgroup_v2",
        reason,
        source: None,
    }
}

fn unavailable_io(reason: String, e: std::io::Error) -> EvalError {
    EvalError::ModeUnavailable {
        mode: "cgroup_v2",
        reason,
        source: Some(e),
    }
}

impl CgroupV2 {
    /// Finds the v2 hierarchy under `root` and this process's group in it (from `self_cgroup`,
    /// normally `/proc/self/cgroup`), checks that `pids` and `memory` are available there, and
    /// makes the group a parent that sample groups can be created in (see the module docs).
    pub(crate) fn discover(root: &Path, self_cgroup: &Path) -> Result<CgroupV2> {
        let mount = v2_mount(root).ok_or_else(|| {
            unavailable(format!(
                "no cgroup v2 hierarchy at {} or {}/unified",
                root.display(),
                root.display()
            ))
        })?;
        let base = mount.join(own_v2_path(self_cgroup)?);
        let available = read(&base.join("cgroup.controllers"))?;
        let missing: Vec<&str> = CONTROLLERS
            .iter()
            .copied()
            .filter(|c| !available.split_whitespace().any(|a| a == *c))
            .collect();
        if !missing.is_empty() {
            return Err(unavailable(format!(
                "controllers {missing:?} are not available in {} (cgroup.controllers: {:?}); \
                 they are bound to a v1 hierarchy or not delegated",
                base.display(),
                available.trim()
            )));
        }
        let enabled = read(&base.join("cgroup.subtree_control"))?;
        let all_enabled = CONTROLLERS
            .iter()
            .all(|c| enabled.split_whitespace().any(|e| e == *c));
        if !all_enabled {
            // No internal processes: vacate the group into a leaf before enabling controllers.
            let leaf = base.join(format!("sft-eval-{}-supervisor", std::process::id()));
            match fs::create_dir(&leaf) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(unavailable_io(
                        format!(
                            "cannot create {} (is the group delegated to this user?)",
                            leaf.display()
                        ),
                        e,
                    ))
                }
            }
            let procs = read(&base.join("cgroup.procs"))?;
            for pid in procs.split_whitespace() {
                if let Err(e) = write_existing(&leaf.join("cgroup.procs"), pid) {
                    // A process that exited meanwhile is fine; anything else is not.
                    if e.raw_os_error() != Some(nix::libc::ESRCH) {
                        return Err(unavailable_io(
                            format!(
                                "cannot move process {pid} from {} into {}",
                                base.display(),
                                leaf.display()
                            ),
                            e,
                        ));
                    }
                }
            }
            let want = CONTROLLERS
                .iter()
                .map(|c| format!("+{c}"))
                .collect::<Vec<_>>()
                .join(" ");
            write_existing(&base.join("cgroup.subtree_control"), &want).map_err(|e| {
                unavailable_io(
                    format!(
                        "cannot enable {want:?} in {}/cgroup.subtree_control",
                        base.display()
                    ),
                    e,
                )
            })?;
        }
        Ok(CgroupV2 { base })
    }

    /// The group sample groups are created in.
    #[cfg(test)]
    pub(crate) fn base(&self) -> &Path {
        &self.base
    }

    /// Removes sample groups (and empty supervisor leaves) left by runs whose process is gone.
    pub(crate) fn remove_stale(&self) -> usize {
        let mut removed = 0;
        let Ok(entries) = fs::read_dir(&self.base) else {
            return 0;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((owner, rest)) = name
                .strip_prefix("sft-eval-")
                .and_then(|r| r.split_once('-'))
            else {
                continue;
            };
            let Ok(owner) = owner.parse::<u32>() else {
                continue;
            };
            if owner == std::process::id() || Path::new(&format!("/proc/{owner}")).exists() {
                continue;
            }
            if rest == "supervisor" {
                // Only when empty: processes the dead run moved there may still be running.
                if fs::remove_dir(e.path()).is_ok() {
                    removed += 1;
                }
                continue;
            }
            let stale = SampleGroup {
                path: Some(e.path()),
            };
            match stale.destroy(Duration::from_secs(2)) {
                Ok(_) => removed += 1,
                Err(err) => {
                    tracing::warn!("cannot remove stale cgroup {}: {err}", e.path().display())
                }
            }
        }
        removed
    }

    /// Creates a fresh sample group with the given limits (swap is capped at 0 where the kernel
    /// accounts swap, so `memory.max` is the whole budget).
    pub(crate) fn create(&self, max_pids: u64, memory_bytes: u64) -> Result<SampleGroup> {
        let name = format!(
            "sft-eval-{}-{}",
            std::process::id(),
            NEXT_GROUP.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.base.join(name);
        fs::create_dir(&path).map_err(|e| cg_err(&path, "create", e))?;
        let group = SampleGroup {
            path: Some(path.clone()),
        };
        write(&path.join("pids.max"), &max_pids.to_string())?;
        write(&path.join("memory.max"), &memory_bytes.to_string())?;
        let swap = path.join("memory.swap.max");
        if let Err(e) = fs::write(&swap, "0") {
            // The file is absent when the kernel does not account swap (then there is none to cap).
            if swap.exists() {
                return Err(cg_err(&swap, "write", e));
            }
            tracing::debug!("{} absent: no swap accounting", swap.display());
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

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .map_err(|e| unavailable_io(format!("cannot read {}", path.display()), e))
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(|e| cg_err(path, "write", e))
}

/// One `write(2)` without truncating, the way cgroupfs files are written (`create` is a no-op on
/// cgroupfs, where every interface file exists, and lets a fake tree in a temp dir work).
fn write_existing(path: &Path, value: &str) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    f.write_all(value.as_bytes())
}

/// One sample's group; [`SampleGroup::destroy`] kills every member and removes it.
#[derive(Debug)]
pub(crate) struct SampleGroup {
    path: Option<PathBuf>,
}

impl SampleGroup {
    /// The `cgroup.procs` file a process writes its pid into to join.
    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        self.path.iter().map(|p| p.join("cgroup.procs")).collect()
    }

    /// Whether the memory controller OOM-killed something in the group.
    pub(crate) fn oom_killed(&self) -> bool {
        let Some(path) = &self.path else {
            return false;
        };
        fs::read_to_string(path.join("memory.events"))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                })
            })
            .is_some_and(|n| n > 0)
    }

    fn members(&self) -> Vec<i32> {
        let Some(path) = &self.path else {
            return Vec::new();
        };
        fs::read_to_string(path.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Kills the whole group (`cgroup.kill`, or SIGKILL per member where the kernel has no
    /// `cgroup.kill`), waits until it is empty (bounded by `patience`) and removes it. Returns
    /// how many processes were still in the group.
    pub(crate) fn destroy(mut self, patience: Duration) -> Result<usize> {
        self.kill_all(patience)
    }

    fn kill_all(&mut self, patience: Duration) -> Result<usize> {
        let Some(path) = self.path.clone() else {
            return Ok(0);
        };
        let deadline = Instant::now() + patience;
        let initial = self.members().len();
        let kill_file = path.join("cgroup.kill");
        let has_kill = kill_file.exists();
        if has_kill {
            write_existing(&kill_file, "1").map_err(|e| cg_err(&kill_file, "write", e))?;
        }
        loop {
            let members = self.members();
            if members.is_empty() {
                break;
            }
            if !has_kill {
                for pid in &members {
                    let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
                }
            }
            if Instant::now() > deadline {
                return Err(EvalError::Sandbox(format!(
                    "processes {members:?} in {} survived the kill for {patience:?}",
                    path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        self.path = None;
        loop {
            match fs::remove_dir(&path) {
                Ok(()) => return Ok(initial),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(initial),
                Err(e) if Instant::now() > deadline => return Err(cg_err(&path, "remove", e)),
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }
}

impl Drop for SampleGroup {
    fn drop(&mut self) {
        if self.path.is_some() {
            if let Err(e) = self.kill_all(Duration::from_secs(2)) {
                tracing::error!("sandbox cgroup cleanup failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake cgroupfs: a v2 mount with `pids` and `memory` available, and this process in
    /// `/user.slice/test.scope`, as `/proc/self/cgroup` would say.
    fn fake_tree(subtree_control: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let root = tempfile::tempdir().expect("tempdir");
        let mount = root.path().to_path_buf();
        fs::write(
            mount.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        let own = mount.join("user.slice/test.scope");
        fs::create_dir_all(&own).unwrap();
        fs::write(own.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        fs::write(own.join("cgroup.subtree_control"), subtree_control).unwrap();
        fs::write(
            own.join("cgroup.procs"),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        let self_cgroup = root.path().join("proc-self-cgroup");
        fs::write(&self_cgroup, "0::/user.slice/test.scope\n").unwrap();
        (root, own, self_cgroup)
    }

    #[test]
    fn discover_vacates_the_own_group_then_enables_controllers() {
        let (root, own, self_cgroup) = fake_tree("");
        let cg = CgroupV2::discover(root.path(), &self_cgroup).expect("discover");
        assert_eq!(cg.base(), own);
        let leaf = own.join(format!("sft-eval-{}-supervisor", std::process::id()));
        assert_eq!(
            fs::read_to_string(leaf.join("cgroup.procs")).unwrap(),
            std::process::id().to_string(),
            "this process must be moved into the leaf first"
        );
        assert_eq!(
            fs::read_to_string(own.join("cgroup.subtree_control")).unwrap(),
            "+pids +memory"
        );
    }

    #[test]
    fn discover_leaves_enabled_controllers_and_processes_alone() {
        let (root, own, self_cgroup) = fake_tree("memory pids\n");
        CgroupV2::discover(root.path(), &self_cgroup).expect("discover");
        assert_eq!(
            fs::read_to_string(own.join("cgroup.subtree_control")).unwrap(),
            "memory pids\n"
        );
        assert!(!own
            .join(format!("sft-eval-{}-supervisor", std::process::id()))
            .exists());
    }

    #[test]
    fn hybrid_layout_uses_the_unified_mount() {
        let root = tempfile::tempdir().expect("tempdir");
        let unified = root.path().join("unified");
        fs::create_dir_all(unified.join("x")).unwrap();
        fs::write(unified.join("cgroup.controllers"), "").unwrap();
        assert_eq!(v2_mount(root.path()), Some(unified));
        let self_cgroup = root.path().join("self");
        fs::write(&self_cgroup, "4:memory:/a\n0::/x\n").unwrap();
        assert_eq!(own_v2_path(&self_cgroup).unwrap(), "x");
    }

    #[test]
    fn missing_controllers_or_v2_line_are_unavailable() {
        let (root, own, self_cgroup) = fake_tree("");
        fs::write(own.join("cgroup.controllers"), "cpu io\n").unwrap();
        match CgroupV2::discover(root.path(), &self_cgroup) {
            Err(EvalError::ModeUnavailable { reason, .. }) => {
                assert!(reason.contains("pids"), "{reason}")
            }
            other => panic!("expected ModeUnavailable, got {other:?}"),
        }
        fs::write(&self_cgroup, "4:memory:/a\n").unwrap();
        assert!(matches!(
            CgroupV2::discover(root.path(), &self_cgroup),
            Err(EvalError::ModeUnavailable { .. })
        ));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            CgroupV2::discover(empty.path(), &self_cgroup),
            Err(EvalError::ModeUnavailable { .. })
        ));
    }

    #[test]
    fn sample_group_limits_and_kill() {
        let (root, own, self_cgroup) = fake_tree("");
        let cg = CgroupV2::discover(root.path(), &self_cgroup).expect("discover");
        let group = cg.create(64, 256 << 20).expect("create");
        let dir = group.path.clone().expect("path");
        assert_eq!(dir.parent(), Some(own.as_path()));
        assert!(dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&format!("sft-eval-{}-", std::process::id())));
        let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("pids.max"), "64");
        assert_eq!(read("memory.max"), (256u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(group.procs_files(), vec![dir.join("cgroup.procs")]);
        assert!(!group.oom_killed());
        fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert!(group.oom_killed());
        // The kernel provides cgroup.kill in every group (Linux 5.14+); the fake needs it made.
        fs::write(dir.join("cgroup.kill"), "").unwrap();
        // A fake directory holds regular files, so removing it fails after the kill was sent.
        let err = group.destroy(Duration::from_millis(20)).unwrap_err();
        assert!(
            matches!(
                err,
                EvalError::Cgroup {
                    action: "remove",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(read("cgroup.kill"), "1");
    }

    #[test]
    fn stale_groups_of_dead_owners_are_removed() {
        let (root, own, self_cgroup) = fake_tree("");
        let cg = CgroupV2::discover(root.path(), &self_cgroup).expect("discover");
        // A pid above the kernel's maximum (2^22) can never be alive.
        fs::create_dir(own.join("sft-eval-99999999-3")).unwrap();
        fs::create_dir(own.join("sft-eval-99999999-supervisor")).unwrap();
        fs::create_dir(own.join("unrelated")).unwrap();
        assert_eq!(cg.remove_stale(), 2);
        assert!(!own.join("sft-eval-99999999-3").exists());
        assert!(!own.join("sft-eval-99999999-supervisor").exists());
        assert!(own.join("unrelated").exists());
    }
}
