//! Shared test helpers: locating the real benchmark data.

#![allow(dead_code)]

use std::path::PathBuf;

/// The shared data directory ([`sft_testkit::shared_data`]: missing data fails the test).
pub fn shared_data() -> PathBuf {
    sft_testkit::shared_data()
}

/// The checked-in fixtures folder.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/eval")
}

/// The unprivileged account the tests run samples as.
pub const TEST_USER: &str = "sfteval-test";

/// Creates [`TEST_USER`] when missing (needs root; panics with the reason otherwise) and returns
/// its uid.
pub fn ensure_test_user() -> u32 {
    use std::process::Command;
    let uid = || -> Option<u32> {
        let out = Command::new("id").args(["-u", TEST_USER]).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .flatten()
    };
    if let Some(u) = uid() {
        return u;
    }
    assert_eq!(
        effective_uid(),
        0,
        "the unprivileged-user tests must run as root (to create the user {TEST_USER})"
    );
    let out = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            TEST_USER,
        ])
        .output()
        .expect("run useradd (package passwd)");
    // Another test binary may have created it meanwhile.
    uid().unwrap_or_else(|| {
        panic!(
            "useradd {TEST_USER} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// This process's effective uid.
pub fn effective_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").expect("/proc/self").uid()
}

/// A temp dir everyone may read and write (for files the unprivileged user needs).
pub fn open_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("sft-eval-test-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    dir
}

/// A copy of the `eval` example in `dir` (mode 755), so that any user can run it; the example is
/// built first when it is missing or stale.
pub fn eval_binary_in(dir: &std::path::Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let built = sft_testkit::example_binary("sft-eval", "eval", "");
    let copy = dir.join("eval");
    std::fs::copy(&built, &copy).expect("copy the eval binary");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    copy
}

/// `setpriv` arguments that run a command as [`TEST_USER`] with no supplementary groups.
pub fn as_test_user() -> std::process::Command {
    ensure_test_user();
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args([
        &format!("--reuid={TEST_USER}"),
        &format!("--regid={TEST_USER}"),
        "--clear-groups",
        "--",
    ]);
    cmd
}

/// Live (not zombie) processes whose real uid is `uid`. Zombies are skipped: they run nothing,
/// and bubblewrap's PID-namespace init becomes one under a container init that never reaps
/// (as on the development machine, with or without cgroups).
pub fn tasks_of_uid(uid: u32) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let real = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok());
        let zombie = status
            .lines()
            .find_map(|l| l.strip_prefix("State:"))
            .is_some_and(|st| st.trim_start().starts_with('Z'));
        if real == Some(uid) && !zombie {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            out.push(format!(
                "{}: {}",
                e.file_name().to_string_lossy(),
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            ));
        }
    }
    out
}
