//! `run_local_ranks` passes SIGINT and SIGTERM on to its ranks exactly once each, waits for
//! them, and a SIGKILLed launcher stops its ranks (their parent-death signal).
//!
//! Each test re-executes this test binary with `SFT_DIST_LAUNCHER=<dir>`: that child is the
//! launcher, running two ranks of a shell script that records every signal it gets in
//! `<dir>/<RANK>` and exits after `SFT_TEST_SIGNALS_TO_EXIT` of them. The test signals the
//! launcher's pid only, as a terminal, `kill` or a scheduler would.
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LAUNCHER_ENV: &str = "SFT_DIST_LAUNCHER";

/// Records each TERM/INT in `$DIR/$RANK`, exits 0 after `$N` signals.
const RANK_SCRIPT: &str = r#"
n=0
note() { echo "$1" >> "$DIR/$RANK"; n=$((n+1)); if [ "$n" -ge "$N" ]; then exit 0; fi; }
trap 'note TERM' TERM
trap 'note INT' INT
echo up > "$DIR/up.$RANK"
while :; do sleep 0.05; done
"#;

/// In the launcher child: run the ranks and exit with the launch's outcome.
fn launcher_main(dir: &str) -> ! {
    let args = ["-c".into(), RANK_SCRIPT.into()];
    std::env::set_var("DIR", dir);
    let code = match sft_dist::run_local_ranks(2, Path::new("sh"), &args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("launch failed: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn start_launcher(test: &str, dir: &Path, signals_to_exit: usize) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(LAUNCHER_ENV, dir)
        .env("N", signals_to_exit.to_string())
        .stdin(Stdio::null())
        .spawn()
        .expect("start the launcher")
}

fn wait_for(what: &str, deadline: Duration, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child of this test that has not been waited for.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

fn lines(dir: &Path, rank: usize) -> Vec<String> {
    std::fs::read_to_string(dir.join(rank.to_string()))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn ranks_up(dir: &Path) -> bool {
    (0..2).all(|r| dir.join(format!("up.{r}")).exists())
}

fn wait_exit(child: &mut Child, deadline: Duration) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if t.elapsed() > deadline {
            let _ = child.kill();
            panic!("the launcher did not exit within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sft-dist-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts the launcher child of `test` with ranks that exit after `signals_to_exit` signals,
/// and waits until both ranks run: its scratch directory and process.
fn launch(test: &str, signals_to_exit: usize) -> (PathBuf, Child) {
    let dir = scratch(test);
    let launcher = start_launcher(test, &dir, signals_to_exit);
    wait_for("both ranks to start", Duration::from_secs(30), || {
        ranks_up(&dir)
    });
    (dir, launcher)
}

#[test]
fn each_sigterm_to_the_launcher_reaches_every_rank_once() {
    if let Ok(dir) = std::env::var(LAUNCHER_ENV) {
        launcher_main(&dir);
    }
    let (dir, mut launcher) = launch("each_sigterm_to_the_launcher_reaches_every_rank_once", 2);
    signal(launcher.id(), libc::SIGTERM);
    wait_for(
        "the first SIGTERM at both ranks",
        Duration::from_secs(10),
        || (0..2).all(|r| lines(&dir, r).len() == 1),
    );
    // The launcher is still waiting for its ranks, which still run.
    assert!(
        launcher.try_wait().unwrap().is_none(),
        "the launcher exited early"
    );
    signal(launcher.id(), libc::SIGTERM);
    let status = wait_exit(&mut launcher, Duration::from_secs(10));
    assert!(status.success(), "launcher: {status}");
    for r in 0..2 {
        assert_eq!(lines(&dir, r), ["TERM", "TERM"], "rank {r}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_sigint_to_the_launcher_reaches_every_rank_once() {
    if let Ok(dir) = std::env::var(LAUNCHER_ENV) {
        launcher_main(&dir);
    }
    let (dir, mut launcher) = launch("a_sigint_to_the_launcher_reaches_every_rank_once", 1);
    signal(launcher.id(), libc::SIGINT);
    let status = wait_exit(&mut launcher, Duration::from_secs(10));
    assert!(status.success(), "launcher: {status}");
    // Give a doubled signal time to show before checking that there was one.
    std::thread::sleep(Duration::from_millis(200));
    for r in 0..2 {
        assert_eq!(lines(&dir, r), ["INT"], "rank {r}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_sigkilled_launcher_stops_its_ranks() {
    if let Ok(dir) = std::env::var(LAUNCHER_ENV) {
        launcher_main(&dir);
    }
    let (dir, mut launcher) = launch("a_sigkilled_launcher_stops_its_ranks", 1);
    signal(launcher.id(), libc::SIGKILL);
    let _ = launcher.wait();
    wait_for(
        "SIGTERM at both orphaned ranks",
        Duration::from_secs(10),
        || (0..2).all(|r| lines(&dir, r) == ["TERM"]),
    );
    let _ = std::fs::remove_dir_all(&dir);
}
