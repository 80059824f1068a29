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

/// Records its pid and process group in `$DIR/up.$RANK` and each TERM/INT in `$DIR/$RANK`;
/// exits 0 after `$N` signals, or once its launcher is gone.
const RANK_SCRIPT: &str = r#"
n=0
note() { echo "$1" >> "$DIR/$RANK"; n=$((n+1)); if [ "$n" -ge "$N" ]; then exit 0; fi; }
trap 'note TERM' TERM
trap 'note INT' INT
echo "$$ $(cut -d' ' -f5 /proc/$$/stat)" > "$DIR/up.$RANK.tmp" && mv "$DIR/up.$RANK.tmp" "$DIR/up.$RANK"
while kill -0 "$PPID" 2>/dev/null; do sleep 0.05; done
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

/// The launcher process, killed if a test ends (or panics) while it runs; its ranks then get
/// their parent-death SIGTERM and leave once their launcher is gone.
struct Launcher(Child);

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the launcher child of `test` with ranks that exit after `signals_to_exit` signals,
/// and waits until both ranks run: its scratch directory and process.
fn launch(test: &str, signals_to_exit: usize) -> (PathBuf, Launcher) {
    let dir = scratch(test);
    let launcher = Launcher(start_launcher(test, &dir, signals_to_exit));
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
    signal(launcher.0.id(), libc::SIGTERM);
    wait_for(
        "the first SIGTERM at both ranks",
        Duration::from_secs(10),
        || (0..2).all(|r| lines(&dir, r).len() == 1),
    );
    // The launcher is still waiting for its ranks, which still run.
    assert!(
        launcher.0.try_wait().unwrap().is_none(),
        "the launcher exited early"
    );
    end_with_sigterm(launcher, &dir, &["TERM", "TERM"]);
}

#[test]
fn a_sigint_to_the_launcher_reaches_every_rank_once() {
    if let Ok(dir) = std::env::var(LAUNCHER_ENV) {
        launcher_main(&dir);
    }
    // The ranks stay up after one signal, so a doubled SIGINT would show as a second line.
    let (dir, launcher) = launch("a_sigint_to_the_launcher_reaches_every_rank_once", 2);
    // Each rank leads its own process group, so a terminal's Ctrl-C (sent to the launcher's
    // foreground group) reaches the ranks only through the launcher, once.
    for r in 0..2 {
        let up = std::fs::read_to_string(dir.join(format!("up.{r}"))).unwrap();
        let ids: Vec<&str> = up.split_whitespace().collect();
        assert_eq!(ids.len(), 2, "rank {r}: {up:?}");
        assert_eq!(
            ids[0], ids[1],
            "rank {r} is not in a process group of its own"
        );
    }
    signal(launcher.0.id(), libc::SIGINT);
    wait_for("the SIGINT at both ranks", Duration::from_secs(10), || {
        (0..2).all(|r| !lines(&dir, r).is_empty())
    });
    std::thread::sleep(Duration::from_millis(300));
    for r in 0..2 {
        assert_eq!(lines(&dir, r), ["INT"], "rank {r}");
    }
    end_with_sigterm(launcher, &dir, &["INT", "TERM"]);
}

/// Sends the launcher a SIGTERM, expects it to exit cleanly and each of the two ranks to have
/// logged `want`, and removes `dir`.
fn end_with_sigterm(mut launcher: Launcher, dir: &Path, want: &[&str]) {
    signal(launcher.0.id(), libc::SIGTERM);
    let status = wait_exit(&mut launcher.0, Duration::from_secs(10));
    assert!(status.success(), "launcher: {status}");
    for r in 0..2 {
        assert_eq!(lines(dir, r), want, "rank {r}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_sigkilled_launcher_stops_its_ranks() {
    if let Ok(dir) = std::env::var(LAUNCHER_ENV) {
        launcher_main(&dir);
    }
    let (dir, mut launcher) = launch("a_sigkilled_launcher_stops_its_ranks", 1);
    signal(launcher.0.id(), libc::SIGKILL);
    let _ = launcher.0.wait();
    wait_for(
        "SIGTERM at both orphaned ranks",
        Duration::from_secs(10),
        || (0..2).all(|r| lines(&dir, r) == ["TERM"]),
    );
    let _ = std::fs::remove_dir_all(&dir);
}
