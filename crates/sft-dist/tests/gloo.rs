//! Gloo process groups across real, separate processes over loopback.
//!
//! Each test re-executes this test binary (`current_exe() <test name> --exact --nocapture`) once
//! per rank with `SFT_DIST_CHILD=<scenario>` and torchrun-style RANK / WORLD_SIZE /
//! MASTER_ADDR=127.0.0.1 / MASTER_PORT (a port the OS just handed out). The child branch of
//! the same test runs one rank, prints `CHILD ...` lines and exits with a status code; the parent
//! asserts every child's status and lines, and kills every child that outlives its deadline.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sft_dist::{Backend, ErrorKind, GroupConfig, Launch, ProcessGroup};
use tch::{Device, Kind, Tensor};

const CHILD_ENV: &str = "SFT_DIST_CHILD";
/// Exit status of a child that reports an expected error (its kind on a `CHILD ERROR` line).
const EXIT_REPORTED_ERROR: i32 = 3;
/// Exit status of a child whose setup failed unexpectedly.
const EXIT_SETUP_FAILED: i32 = 2;

// ---------------------------------------------------------------------------------------------
// Parent side: spawning and watching ranks.

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

fn lock(m: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn text(m: &Mutex<String>) -> String {
    lock(m).clone()
}

struct RankProc {
    rank: usize,
    child: Child,
    lines: Receiver<String>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

struct Finished {
    rank: usize,
    status: ExitStatus,
    stdout: String,
    stderr: String,
    /// When the parent saw the process exit.
    at: Instant,
}

impl Finished {
    fn describe(&self) -> String {
        format!(
            "rank {} exited with {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.rank, self.status, self.stdout, self.stderr
        )
    }

    /// The value of `key=` on the child's `CHILD ERROR` line.
    fn error_field(&self, key: &str) -> Option<String> {
        let line = self
            .stdout
            .lines()
            .find_map(|l| l.find("CHILD ERROR ").map(|at| &l[at..]))?;
        let start = line.find(&format!(" {key}="))? + key.len() + 2;
        let rest = &line[start..];
        Some(if key == "msg" {
            rest.to_owned()
        } else {
            rest.split(' ').next()?.to_owned()
        })
    }
}

fn spawn_rank(test: &str, scenario: &str, rank: usize, world: usize, port: u16) -> RankProc {
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, scenario)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env_remove("SLURM_PROCID")
        // One libtorch thread per child: up to 4 ranks share 2 cores.
        .env("OMP_NUM_THREADS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child rank");
    let (tx, lines) = mpsc::channel();
    let stdout = Arc::new(Mutex::new(String::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let out_pipe = child.stdout.take().expect("stdout");
    let err_pipe = child.stderr.take().expect("stderr");
    let (out_acc, err_acc) = (stdout.clone(), stderr.clone());
    let readers = vec![
        std::thread::spawn(move || {
            for line in BufReader::new(out_pipe).lines().map_while(Result::ok) {
                lock(&out_acc).push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        }),
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(err_pipe).read_to_string(&mut text);
            lock(&err_acc).push_str(&text);
        }),
    ];
    RankProc {
        rank,
        child,
        lines,
        stdout,
        stderr,
        readers,
    }
}

fn spawn_world(test: &str, scenario: &str, world: usize, ranks: &[usize]) -> Vec<RankProc> {
    let port = free_port();
    ranks
        .iter()
        .map(|&r| spawn_rank(test, scenario, r, world, port))
        .collect()
}

impl RankProc {
    /// Wait for a stdout line starting with `prefix`.
    fn wait_line(&mut self, prefix: &str, deadline: Instant) -> String {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(prefix) => return line,
                Ok(_) => {}
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "rank {} printed no `{prefix}` line in time; stdout so far:\n{}\nstderr:\n{}",
                        self.rank,
                        text(&self.stdout),
                        text(&self.stderr)
                    );
                }
            }
        }
    }

    /// Wait for the process to exit, killing it (and failing) past `deadline`.
    fn wait(mut self, deadline: Instant) -> Finished {
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                panic!(
                    "rank {} did not exit in time (killed); stdout:\n{}\nstderr:\n{}",
                    self.rank,
                    text(&self.stdout),
                    text(&self.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let at = Instant::now();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let (stdout, stderr) = (text(&self.stdout), text(&self.stderr));
        Finished {
            rank: self.rank,
            status,
            stdout,
            stderr,
            at,
        }
    }
}

impl Drop for RankProc {
    fn drop(&mut self) {
        // A failing assertion must not leave ranks behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_all(procs: Vec<RankProc>, deadline: Instant) -> Vec<Finished> {
    procs.into_iter().map(|p| p.wait(deadline)).collect()
}

fn assert_all_ok(finished: &[Finished]) {
    for f in finished {
        assert!(f.status.success(), "{}", f.describe());
        assert!(
            f.stdout.contains(&format!("CHILD OK rank={}", f.rank)),
            "no OK line: {}",
            f.describe()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Child side: one rank of a scenario.

/// In a child process, run the scenario and exit; in the parent, return.
fn child_branch(run: fn(&str) -> i32) {
    if let Ok(scenario) = std::env::var(CHILD_ENV) {
        // libtest has printed "test NAME ... " without a newline; start the child's own lines.
        println!();
        let code = run(&scenario);
        std::process::exit(code);
    }
}

fn child_group(timeout: Duration) -> Result<ProcessGroup, i32> {
    let launch = match Launch::from_env() {
        Ok(Some(l)) => l,
        other => {
            println!("CHILD SETUP launch from env failed: {other:?}");
            return Err(EXIT_SETUP_FAILED);
        }
    };
    ProcessGroup::new(&launch.group_config(Backend::Gloo, timeout)).map_err(|e| {
        println!("CHILD SETUP group failed: {e}");
        EXIT_SETUP_FAILED
    })
}

/// Print the error line the parent parses, and the status to exit with.
fn report(e: &sft_dist::Error, since: Instant) -> i32 {
    println!(
        "CHILD ERROR kind={} elapsed_ms={} msg={}",
        e.kind(),
        since.elapsed().as_millis(),
        e.message().replace('\n', " | ")
    );
    EXIT_REPORTED_ERROR
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).expect("tensor values")
}

fn arange(n: i64, kind: Kind) -> Tensor {
    Tensor::arange(n, (kind, Device::Cpu))
}

fn collectives_child(_scenario: &str) -> i32 {
    let pg = match child_group(Duration::from_secs(20)) {
        Ok(pg) => pg,
        Err(code) => return code,
    };
    let (r, w) = (pg.rank() as f64, pg.world_size() as f64);
    let rank_sum = w * (w - 1.0) / 2.0; // Σ r
    let rank_sq_sum = (w - 1.0) * w * (2.0 * w - 1.0) / 6.0; // Σ r²

    // all_reduce_sum over one list: different shapes, a non-contiguous tensor, two dtypes.
    let a = (arange(6, Kind::Float) + 1.0).reshape([2, 3]) * (r + 1.0);
    let b = arange(5, Kind::Float) * 10.0 + r;
    let c = Tensor::full([1, 2, 2], r * r, (Kind::Float, Device::Cpu));
    let d = ((arange(6, Kind::Float).reshape([3, 2]) + r) * 2.0).transpose(0, 1); // non-contiguous
    let e = (arange(3, Kind::Int64) + 7) * (pg.rank() as i64 + 1);
    let mut list = vec![a, b, c, d, e];
    pg.all_reduce_sum(&mut list).expect("all_reduce_sum");
    let expect_a: Vec<f64> = (0..6)
        .map(|i| (i as f64 + 1.0) * (w * (w + 1.0) / 2.0))
        .collect();
    let expect_b: Vec<f64> = (0..5).map(|i| i as f64 * 10.0 * w + rank_sum).collect();
    let expect_c = vec![rank_sq_sum; 4];
    // d[j][i] = 2·(2i + j + r) summed: 2·(w·(2i + j) + Σ r), read out in d's (transposed) order.
    let expect_d: Vec<f64> = (0..2)
        .flat_map(|j| (0..3).map(move |i| 2.0 * (w * (2 * i + j) as f64 + rank_sum)))
        .collect();
    let expect_e: Vec<f64> = (0..3)
        .map(|i| (i as f64 + 7.0) * (w * (w + 1.0) / 2.0))
        .collect();
    assert_eq!(list[0].size(), [2, 3]);
    assert_eq!(list[2].size(), [1, 2, 2]);
    assert_eq!(list[3].size(), [2, 3]);
    assert_eq!(list[4].kind(), Kind::Int64);
    assert_eq!(values(&list[0]), expect_a, "all_reduce a");
    assert_eq!(values(&list[1]), expect_b, "all_reduce b");
    assert_eq!(values(&list[2]), expect_c, "all_reduce c");
    assert_eq!(values(&list[3]), expect_d, "all_reduce d (non-contiguous)");
    assert_eq!(values(&list[4]), expect_e, "all_reduce e (int64)");

    // A single contiguous tensor goes through without a copy; the result is the same.
    let mut single = vec![Tensor::full([7], r + 1.0, (Kind::Float, Device::Cpu))];
    let before = single[0].data_ptr();
    pg.all_reduce_sum(&mut single).expect("all_reduce single");
    assert_eq!(values(&single[0]), vec![w * (w + 1.0) / 2.0; 7]);
    assert_eq!(
        single[0].data_ptr(),
        before,
        "single tensor reduced in place"
    );

    // Parameters that require grad can be broadcast in place.
    for root in [0, 1, pg.world_size() - 1] {
        let p = (arange(4, Kind::Float) + 100.0 * r).set_requires_grad(true);
        let q = Tensor::full([2, 2], r, (Kind::Float, Device::Cpu));
        let mut list = vec![p, q];
        pg.broadcast(&mut list, root).expect("broadcast");
        let root_f = root as f64;
        assert_eq!(
            values(&list[0]),
            (0..4)
                .map(|i| i as f64 + 100.0 * root_f)
                .collect::<Vec<_>>()
        );
        assert_eq!(values(&list[1]), vec![root_f; 4], "broadcast from {root}");
        assert!(list[0].requires_grad());
    }

    // reduce_scatter_sum: input[j] = j + 100·q on rank q; rank r keeps slice r of the sum.
    let n = 6i64;
    let input = arange(w as i64 * n, Kind::Float) + 100.0 * r;
    let input_before = values(&input);
    let mut output = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
    pg.reduce_scatter_sum(&mut output, &input)
        .expect("reduce_scatter_sum");
    let expect: Vec<f64> = (0..n)
        .map(|k| w * (r * n as f64 + k as f64) + 100.0 * rank_sum)
        .collect();
    assert_eq!(values(&output), expect, "reduce_scatter_sum");
    assert_eq!(output.size(), [2, 3]);
    assert_eq!(
        values(&input),
        input_before,
        "reduce_scatter_sum left its input alone"
    );

    // Into a non-contiguous output as well.
    let mut output_t = Tensor::zeros([3, 2], (Kind::Float, Device::Cpu)).transpose(0, 1);
    pg.reduce_scatter_sum(&mut output_t, &input)
        .expect("reduce_scatter_sum non-contiguous");
    assert_eq!(
        values(&output_t),
        expect,
        "reduce_scatter_sum into a transposed output"
    );

    // all_gather: rank q's input is q·1000 + k.
    let input = arange(n, Kind::Float) + 1000.0 * r;
    let mut gathered = Tensor::zeros([w as i64 * n], (Kind::Float, Device::Cpu));
    pg.all_gather(&mut gathered, &input).expect("all_gather");
    let expect: Vec<f64> = (0..w as i64)
        .flat_map(|q| (0..n).map(move |k| q as f64 * 1000.0 + k as f64))
        .collect();
    assert_eq!(values(&gathered), expect, "all_gather");

    // all_reduce_sum_f64: exact in f64 (the second value needs more than f32's 24 bits).
    let mut sums = [r + 0.5, 1e15 + r, -r];
    pg.all_reduce_sum_f64(&mut sums)
        .expect("all_reduce_sum_f64");
    assert_eq!(sums, [rank_sum + 0.5 * w, 1e15 * w + rank_sum, -rank_sum]);

    // Bad arguments are refused before anything is sent, and do not break the group.
    let e = pg
        .broadcast(&mut [Tensor::zeros([1], (Kind::Float, Device::Cpu))], 99)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    let mut small = Tensor::zeros([5], (Kind::Float, Device::Cpu));
    let e = pg.reduce_scatter_sum(&mut small, &Tensor::zeros([7], (Kind::Float, Device::Cpu)));
    assert_eq!(e.unwrap_err().kind(), ErrorKind::Config);
    let e = pg.all_gather(&mut small, &Tensor::zeros([5], (Kind::Double, Device::Cpu)));
    assert_eq!(e.unwrap_err().kind(), ErrorKind::Config);
    pg.all_reduce_sum(&mut []).expect("empty list is a no-op");

    pg.barrier().expect("barrier");
    println!("CHILD OK rank={}", pg.rank());
    0
}

fn run_collectives(test: &str, world: usize) {
    let start = Instant::now();
    let ranks: Vec<usize> = (0..world).collect();
    let procs = spawn_world(test, "collectives", world, &ranks);
    let finished = wait_all(procs, start + Duration::from_secs(50));
    assert_all_ok(&finished);
    eprintln!(
        "{test}: {world} ranks in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn collectives_2_ranks() {
    child_branch(collectives_child);
    run_collectives("collectives_2_ranks", 2);
}

#[test]
fn collectives_4_ranks() {
    child_branch(collectives_child);
    run_collectives("collectives_4_ranks", 4);
}

// ---------------------------------------------------------------------------------------------
// A rank killed with SIGKILL while the others are in a collective.

/// Collective timeout of the failure scenarios: the bound on how long a survivor may wait.
const DEATH_TIMEOUT: Duration = Duration::from_secs(20);

fn peer_death_child(scenario: &str) -> i32 {
    let victim: usize = scenario
        .strip_prefix("death:")
        .and_then(|v| v.parse().ok())
        .expect("victim");
    let pg = match child_group(DEATH_TIMEOUT) {
        Ok(pg) => pg,
        Err(code) => return code,
    };
    pg.barrier().expect("barrier before the kill");
    println!("CHILD READY rank={}", pg.rank());
    if pg.rank() == victim {
        // Wait to be killed by the parent (SIGKILL: no destructor, no goodbye on the sockets
        // beyond what the kernel does for a dead process).
        std::thread::sleep(Duration::from_secs(120));
        println!("CHILD VICTIM SURVIVED");
        return 1;
    }
    let start = Instant::now();
    let mut t = vec![Tensor::ones([1 << 16], (Kind::Float, Device::Cpu))];
    match pg.all_reduce_sum(&mut t) {
        Ok(()) => {
            println!("CHILD UNEXPECTED all_reduce succeeded without the victim");
            1
        }
        Err(e) => {
            let code = report(&e, start);
            // The group stays failed: the next call returns the first error at once.
            let again = pg.barrier().expect_err("group unusable after a failure");
            assert_eq!(again.kind(), e.kind());
            assert!(
                again
                    .message()
                    .contains("unusable after an earlier failure"),
                "{again}"
            );
            code
        }
    }
}

fn run_peer_death(test: &str, world: usize, victim: usize) {
    let start = Instant::now();
    let ranks: Vec<usize> = (0..world).collect();
    let mut procs = spawn_world(test, &format!("death:{victim}"), world, &ranks);
    let ready_by = start + Duration::from_secs(30);
    for p in procs.iter_mut() {
        p.wait_line("CHILD READY", ready_by);
    }
    // Let the survivors enter the all_reduce, then kill the victim.
    std::thread::sleep(Duration::from_millis(500));
    let mut victim_proc = procs.remove(victim);
    victim_proc.child.kill().expect("SIGKILL the victim");
    let killed_at = Instant::now();
    let victim_done = victim_proc.wait(killed_at + Duration::from_secs(10));
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            victim_done.status.signal(),
            Some(9),
            "{}",
            victim_done.describe()
        );
    }
    // Bounded: well within the 90 s limit, and within the collective timeout plus slack.
    let finished = wait_all(procs, killed_at + DEATH_TIMEOUT + Duration::from_secs(15));
    for f in &finished {
        assert_eq!(
            f.status.code(),
            Some(EXIT_REPORTED_ERROR),
            "{}",
            f.describe()
        );
        let kind = f.error_field("kind").expect("CHILD ERROR line");
        let after_kill = f.at.duration_since(killed_at);
        eprintln!(
            "{test}: rank {} failed {:.2} s after the kill with kind {kind}: {}",
            f.rank,
            after_kill.as_secs_f64(),
            f.error_field("msg").unwrap_or_default()
        );
        assert!(after_kill < Duration::from_secs(90), "{}", f.describe());
        // The death itself is seen (sockets closed by the kernel), not only the timeout.
        assert_eq!(kind, ErrorKind::PeerLost.to_string(), "{}", f.describe());
        assert!(after_kill < DEATH_TIMEOUT, "{}", f.describe());
        let msg = f.error_field("msg").unwrap_or_default();
        assert!(
            msg.contains("Connection closed by peer"),
            "{}",
            f.describe()
        );
    }
}

#[test]
fn killed_rank_fails_the_others_quickly() {
    child_branch(peer_death_child);
    run_peer_death("killed_rank_fails_the_others_quickly", 3, 1);
}

#[test]
fn killed_store_host_fails_the_others_quickly() {
    child_branch(peer_death_child);
    run_peer_death("killed_store_host_fails_the_others_quickly", 2, 0);
}

// ---------------------------------------------------------------------------------------------
// A peer that is alive but never joins the collective: Timeout, within the timeout.

const HANG_TIMEOUT: Duration = Duration::from_secs(3);

fn hung_peer_child(_scenario: &str) -> i32 {
    let pg = match child_group(HANG_TIMEOUT) {
        Ok(pg) => pg,
        Err(code) => return code,
    };
    pg.barrier().expect("barrier");
    println!("CHILD READY rank={}", pg.rank());
    if pg.rank() == 1 {
        // Alive, connected, but never calls the collective; the parent kills it.
        std::thread::sleep(Duration::from_secs(60));
        return 1;
    }
    let start = Instant::now();
    let mut t = vec![Tensor::ones([4], (Kind::Float, Device::Cpu))];
    match pg.all_reduce_sum(&mut t) {
        Ok(()) => 1,
        Err(e) => report(&e, start),
    }
}

#[test]
fn hung_peer_times_out() {
    child_branch(hung_peer_child);
    let start = Instant::now();
    let mut procs = spawn_world("hung_peer_times_out", "hang", 2, &[0, 1]);
    for p in procs.iter_mut() {
        p.wait_line("CHILD READY", start + Duration::from_secs(30));
    }
    let hung = procs.pop().expect("rank 1");
    let waiting = procs.pop().expect("rank 0");
    let f = waiting.wait(Instant::now() + HANG_TIMEOUT + Duration::from_secs(15));
    drop(hung); // kills rank 1
    assert_eq!(
        f.status.code(),
        Some(EXIT_REPORTED_ERROR),
        "{}",
        f.describe()
    );
    let elapsed_ms: u64 = f
        .error_field("elapsed_ms")
        .expect("elapsed")
        .parse()
        .expect("ms");
    eprintln!(
        "hung_peer_times_out: kind {} after {elapsed_ms} ms: {}",
        f.error_field("kind").unwrap_or_default(),
        f.error_field("msg").unwrap_or_default()
    );
    assert_eq!(
        f.error_field("kind").as_deref(),
        Some("Timeout"),
        "{}",
        f.describe()
    );
    let elapsed = Duration::from_millis(elapsed_ms);
    assert!(
        elapsed >= HANG_TIMEOUT - Duration::from_millis(200),
        "too early: {elapsed:?}"
    );
    assert!(
        elapsed < HANG_TIMEOUT + Duration::from_secs(5),
        "too late: {elapsed:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// A rank that never shows up: the rendezvous times out.

const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(3);

fn lonely_child(_scenario: &str) -> i32 {
    let launch = Launch::from_env().expect("launch").expect("launch vars");
    let start = Instant::now();
    match ProcessGroup::new(&launch.group_config(Backend::Gloo, RENDEZVOUS_TIMEOUT)) {
        Ok(_) => {
            println!("CHILD UNEXPECTED group formed without its peer");
            1
        }
        Err(e) => report(&e, start),
    }
}

#[test]
fn missing_rank_fails_rendezvous_within_timeout() {
    child_branch(lonely_child);
    let start = Instant::now();
    let test = "missing_rank_fails_rendezvous_within_timeout";
    // Rank 0 alone (it hosts the store; rank 1 never connects), and rank 1 alone (no store to
    // connect to), side by side on two ports.
    let port0 = free_port();
    let mut procs = vec![spawn_rank(test, "lonely", 0, 2, port0)];
    procs.extend(spawn_world(test, "lonely", 2, &[1]));
    // Probe rank 0's store the way a non-zero rank's pre-check does (connect, close): it must
    // not count as a rank joining.
    let probe_by = Instant::now() + RENDEZVOUS_TIMEOUT;
    let mut probed = false;
    while !probed && Instant::now() < probe_by {
        probed = std::net::TcpStream::connect(("127.0.0.1", port0)).is_ok();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(probed, "rank 0's store never listened on port {port0}");
    let finished = wait_all(procs, start + RENDEZVOUS_TIMEOUT + Duration::from_secs(25));
    for f in &finished {
        assert_eq!(
            f.status.code(),
            Some(EXIT_REPORTED_ERROR),
            "{}",
            f.describe()
        );
        let kind = f.error_field("kind").expect("kind");
        let elapsed_ms: u64 = f
            .error_field("elapsed_ms")
            .expect("elapsed")
            .parse()
            .expect("ms");
        eprintln!(
            "{test}: rank {} alone: kind {kind} after {elapsed_ms} ms: {}",
            f.rank,
            f.error_field("msg").unwrap_or_default()
        );
        assert_eq!(kind, "Rendezvous", "{}", f.describe());
        let msg = f.error_field("msg").unwrap_or_default();
        if f.rank == 0 {
            assert!(msg.contains("1/2 clients joined"), "{}", f.describe());
        } else {
            assert!(
                msg.contains("no rendezvous store listening at 127.0.0.1:"),
                "{}",
                f.describe()
            );
        }
        let elapsed = Duration::from_millis(elapsed_ms);
        assert!(
            elapsed >= RENDEZVOUS_TIMEOUT - Duration::from_millis(200),
            "{}",
            f.describe()
        );
        // c10d's server checks for its clients once a second.
        assert!(
            elapsed < RENDEZVOUS_TIMEOUT + Duration::from_secs(2),
            "{}",
            f.describe()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// In-process checks (no peers needed).

#[test]
fn invalid_configs_are_refused_before_any_connection() {
    let base = GroupConfig {
        master_addr: "127.0.0.1".into(),
        master_port: free_port(),
        rank: 0,
        world_size: 1,
        backend: Backend::Gloo,
        timeout: Duration::from_secs(5),
    };
    for (config, what) in [
        (
            GroupConfig {
                rank: 2,
                world_size: 2,
                ..base.clone()
            },
            "rank",
        ),
        (
            GroupConfig {
                world_size: 0,
                ..base.clone()
            },
            "world",
        ),
        (
            GroupConfig {
                timeout: Duration::ZERO,
                ..base.clone()
            },
            "timeout",
        ),
        (
            GroupConfig {
                master_addr: " ".into(),
                ..base.clone()
            },
            "address",
        ),
        (
            GroupConfig {
                master_port: 0,
                ..base.clone()
            },
            "port",
        ),
    ] {
        let e = ProcessGroup::new(&config).expect_err(what);
        assert_eq!(e.kind(), ErrorKind::Config, "{what}: {e}");
    }
}

#[test]
fn world_of_one_and_device_checks() {
    let config = GroupConfig {
        master_addr: "127.0.0.1".into(),
        master_port: free_port(),
        rank: 0,
        world_size: 1,
        backend: Backend::Gloo,
        timeout: Duration::from_secs(10),
    };
    let pg = ProcessGroup::new(&config).expect("a world of one");
    assert_eq!(
        (pg.rank(), pg.world_size(), pg.backend()),
        (0, 1, Backend::Gloo)
    );
    let mut t = vec![Tensor::from_slice(&[1.5f32, -2.0])];
    pg.all_reduce_sum(&mut t).expect("all_reduce");
    assert_eq!(values(&t[0]), [1.5, -2.0]);
    let mut v = [3.25];
    pg.all_reduce_sum_f64(&mut v).expect("f64");
    assert_eq!(v, [3.25]);
    // An undefined tensor is refused in Rust, before the shim.
    let e = pg.all_reduce_sum(&mut [Tensor::new()]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    pg.barrier().expect("barrier");
}

#[test]
fn backend_for_device_and_nccl_availability() {
    assert_eq!(Backend::for_device(Device::Cpu), Backend::Gloo);
    assert_eq!(Backend::for_device(Device::Cuda(1)), Backend::Nccl);
    assert!(Backend::Gloo.is_compiled());
    let config = GroupConfig {
        master_addr: "127.0.0.1".into(),
        master_port: free_port(),
        rank: 0,
        world_size: 1,
        backend: Backend::Nccl,
        timeout: Duration::from_secs(10),
    };
    if !Backend::Nccl.is_compiled() {
        // Built without NCCL (no CUDA toolkit headers): a clear error, not a crash or a hang.
        let e = ProcessGroup::new(&config).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert!(e.message().contains("NCCL backend was not compiled"), "{e}");
    } else if !tch::Cuda::is_available() {
        // Compiled in, but no GPU here: creating the group fails cleanly.
        let e = ProcessGroup::new(&config).unwrap_err();
        eprintln!("NCCL without a GPU: {e}");
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert!(e.message().contains("no GPUs found"), "{e}");
    } else {
        // A GPU: a world of one on cuda:0.
        let pg = ProcessGroup::new(&config).expect("NCCL world of one");
        let mut t = vec![
            Tensor::from_slice(&[1.5f32, -2.0]).to_device(Device::Cuda(0)),
            Tensor::ones([3, 3], (Kind::Float, Device::Cuda(0))).transpose(0, 1),
        ];
        pg.all_reduce_sum(&mut t).expect("NCCL all_reduce");
        assert_eq!(values(&t[0].to_device(Device::Cpu)), [1.5, -2.0]);
        let mut v = [2.5, 1e15];
        pg.all_reduce_sum_f64(&mut v).expect("NCCL f64");
        assert_eq!(v, [2.5, 1e15]);
        let e = pg
            .all_reduce_sum(&mut [Tensor::ones([1], (Kind::Float, Device::Cpu))])
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        pg.barrier().expect("NCCL barrier");
    }
}
