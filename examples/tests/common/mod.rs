//! Helpers shared by the examples' multi-process tests (`ddp_cli.rs`, `run_plan_ddp.rs`).
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// What a failed build of an example most likely lacks.
pub const HINT: &str = "; it links libtorch: run `cargo xtask setup` and `eval \"$(cargo xtask env)\"` (sets LIBTORCH)";

/// The named tensors of `dir/model.safetensors`.
pub fn weights(dir: &Path) -> Vec<(String, tch::Tensor)> {
    sft_train::checkpoint::read_safetensors(&dir.join("model.safetensors")).unwrap()
}

/// Largest relative difference over all tensors of two model directories (relative to each
/// tensor's largest value); the tensor names must agree.
pub fn max_rel_diff(a: &Path, b: &Path) -> f64 {
    let (wa, wb) = (weights(a), weights(b));
    assert_eq!(
        wa.iter().map(|x| &x.0).collect::<Vec<_>>(),
        wb.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    wa.iter()
        .zip(&wb)
        .map(|((_, x), (_, y))| {
            let d = (x - y).abs().max().double_value(&[]);
            d / y.abs().max().double_value(&[]).max(1e-12)
        })
        .fold(0.0, f64::max)
}

/// Pids of the direct children of `pid` (a launcher's ranks), sorted.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid …; comm may contain spaces, so split after the last ')'.
        let rest = &stat[stat.rfind(')').unwrap() + 1..];
        let ppid: u32 = rest.split_whitespace().nth(1).unwrap().parse().unwrap();
        if ppid == pid {
            out.push(p);
        }
    }
    out.sort_unstable();
    out
}

/// Waits until `started()` (at most 120 s, failing if the launch ends first), SIGKILLs rank 1
/// of the launcher's two ranks, and returns the launcher's output, how long it took to end after
/// the kill, and its stderr; asserts that it failed within 90 s naming the killed rank.
pub fn kill_rank_1(mut launcher: Child, started: impl Fn() -> bool) -> (Output, Duration, String) {
    let t0 = Instant::now();
    while !started() {
        assert!(launcher.try_wait().unwrap().is_none(), "launch ended early");
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no steps within 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ranks = children(launcher.id());
    assert_eq!(ranks.len(), 2, "ranks {ranks:?}");
    let killed = Command::new("kill")
        .args(["-KILL", &ranks[1].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let t_kill = Instant::now();
    let o = launcher.wait_with_output().unwrap();
    let took = t_kill.elapsed();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "the launch must fail:\n{stderr}");
    assert!(took < Duration::from_secs(90), "took {took:?}");
    assert!(
        stderr.contains("rank 1 of 2 was killed by signal 9"),
        "{stderr}"
    );
    (o, took, stderr)
}
