//! `--nproc-per-node N` on one machine: start N copies of a command as ranks 0..N, with the
//! torchrun variables set, end them all when one fails, and pass SIGINT/SIGTERM on to them.
//!
//! The `unsafe` here is POSIX process control: a signal handler that counts, `kill(2)`, and a
//! `pre_exec` hook that sets the parent-death signal.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};

/// How long the other ranks get to fail on their own (their collectives see the lost peer at
/// once) after one rank exits with an error, before they are killed.
pub const GRACE: Duration = Duration::from_secs(30);

/// Runs `program args…` as `nproc` local ranks and waits for all of them.
///
/// Each child gets `RANK` = `LOCAL_RANK` = its index, `WORLD_SIZE` = `LOCAL_WORLD_SIZE` =
/// `nproc`, `MASTER_ADDR=127.0.0.1` and a free `MASTER_PORT`, which
/// [`crate::Launch::from_env`] reads. When a rank exits non-zero (or is killed), the others
/// get [`GRACE`] to exit and are then killed, so a dead or hung rank ends the whole launch
/// within a bounded time; the error names the first rank that failed and how.
///
/// Signals: the ranks run in a process group of their own, so a Ctrl-C at the terminal reaches
/// the launcher only, and every SIGINT or SIGTERM the launcher gets (from the terminal, `kill`
/// or a scheduler) is passed on to each running rank exactly once: the trainer's first signal
/// checkpoints and stops at the same step on every rank, a second one exits at once. The
/// launcher keeps waiting for the ranks meanwhile. Each rank also gets SIGTERM if the launcher
/// itself dies (`PR_SET_PDEATHSIG`), so a SIGKILLed launcher leaves no rank training alone.
pub fn run_local_ranks(nproc: usize, program: &Path, args: &[OsString]) -> Result<()> {
    if nproc == 0 {
        return Err(Error::new(ErrorKind::Config, "nproc-per-node must be >= 1"));
    }
    let port = free_port()?;
    let mut signals = Forward::install()?;
    let launcher = std::process::id();
    let mut children: Vec<Option<Child>> = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .process_group(0);
        // SAFETY: between fork and exec the closure calls only async-signal-safe functions
        // (prctl, getppid, kill) and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The launcher may have died before the prctl: then stop at once.
                if libc::getppid() as u32 != launcher {
                    libc::kill(libc::getpid(), libc::SIGTERM);
                }
                Ok(())
            });
        }
        let child = cmd.spawn();
        match child {
            Ok(c) => children.push(Some(c)),
            Err(e) => {
                kill_all(&mut children);
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("cannot start rank {rank} ({}): {e}", program.display()),
                ));
            }
        }
    }
    tracing::info!(nproc, port, program = %program.display(), "started local ranks");
    let mut failed: Option<(usize, String)> = None;
    let mut failed_at: Option<Instant> = None;
    loop {
        signals.pass_on(&children);
        let mut running = 0;
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            match child.try_wait() {
                Ok(Some(status)) => {
                    *slot = None;
                    if !status.success() && failed.is_none() {
                        failed = Some((rank, describe(status)));
                        failed_at = Some(Instant::now());
                    }
                }
                Ok(None) => running += 1,
                Err(e) => {
                    *slot = None;
                    failed.get_or_insert((rank, format!("cannot be waited for: {e}")));
                    failed_at.get_or_insert_with(Instant::now);
                }
            }
        }
        if running == 0 {
            break;
        }
        if failed_at.is_some_and(|t| t.elapsed() >= GRACE) {
            tracing::warn!(
                running,
                "killing the ranks still running after a rank failed"
            );
            kill_all(&mut children);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match failed {
        None => Ok(()),
        Some((rank, how)) => Err(Error::new(
            ErrorKind::PeerLost,
            format!("rank {rank} of {nproc} {how}; the launch failed"),
        )),
    }
}

/// SIGINT and SIGTERM counted while a launch runs, and how many of each were passed on.
struct Forward {
    /// (signal, received, passed on, handler id)
    seen: Vec<(i32, Arc<AtomicUsize>, usize, signal_hook::SigId)>,
}

impl Forward {
    fn install() -> Result<Self> {
        let mut seen = Vec::new();
        for sig in [libc::SIGINT, libc::SIGTERM] {
            let count = Arc::new(AtomicUsize::new(0));
            let c = Arc::clone(&count);
            // SAFETY: the handler only increments an atomic, which is async-signal-safe.
            let id = unsafe {
                signal_hook::low_level::register(sig, move || {
                    c.fetch_add(1, Ordering::SeqCst);
                })
            }
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("cannot install a handler for signal {sig}: {e}"),
                )
            })?;
            seen.push((sig, count, 0, id));
        }
        Ok(Self { seen })
    }

    /// Sends each running child every signal received since the last call.
    fn pass_on(&mut self, children: &[Option<Child>]) {
        for (sig, count, passed, _) in &mut self.seen {
            let now = count.load(Ordering::SeqCst);
            while *passed < now {
                *passed += 1;
                tracing::warn!(signal = *sig, "passing the signal on to the ranks");
                for child in children.iter().flatten() {
                    // SAFETY: kill(2) on the pid of a child not yet waited for.
                    unsafe {
                        libc::kill(child.id() as i32, *sig);
                    }
                }
            }
        }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        for (_, _, _, id) in &self.seen {
            signal_hook::low_level::unregister(*id);
        }
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => format!("ended with {status}"),
    }
}

fn kill_all(children: &mut [Option<Child>]) {
    for child in children.iter_mut().flatten() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A TCP port free on the loopback interface now (the OS picks it).
fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::new(ErrorKind::Rendezvous, format!("no free port: {e}")))
}
