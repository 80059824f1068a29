//! `--nproc-per-node N` on one machine: start N copies of a command as ranks 0..N, with the
//! torchrun variables set, and end them all when one fails.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, Command};
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
pub fn run_local_ranks(nproc: usize, program: &Path, args: &[OsString]) -> Result<()> {
    if nproc == 0 {
        return Err(Error::new(ErrorKind::Config, "nproc-per-node must be >= 1"));
    }
    let port = free_port()?;
    let mut children: Vec<Option<Child>> = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let child = Command::new(program)
            .args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .spawn();
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
