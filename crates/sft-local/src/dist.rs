//! Data-parallel plans: every stage a plan trains is trained by all ranks of a launch
//! (`run_plan --nproc-per-node N`, torchrun, `srun`), while only rank 0 runs the runner.
//!
//! # The hand-off
//!
//! Every rank forms one Gloo *control group* on `MASTER_ADDR:MASTER_PORT` when it starts (CPU
//! tensors over TCP, whatever device trains). Rank 0 ([`Leader`]) then runs the runner exactly as
//! one process would (composition, stage store, evaluation, `status.json`, `results.json`); its
//! backend, right before training a stage, broadcasts the stage's job on the control group (a
//! [`StageJob`]: starting weights, tokenizer, data file, resolved `TrainConfig`, output directory,
//! carried optimizer state, `stop_after`, and a port for the stage's own group that rank 0 found
//! free), then trains the stage as rank 0 of a group of all ranks on that port
//! (`TrainJob::distributed`). The other ranks ([`follow`]) wait on the control group, train each
//! job they get as their own rank of that group (device `cuda:LOCAL_RANK` on CUDA) and wait again.
//! When the runner returns, rank 0 broadcasts `end` (with the error when the run failed) and the
//! followers exit with it: 0 after a run that is done, non-zero otherwise.
//!
//! A stage found finished in the stage store is not trained, so no job is sent for it: a rerun of
//! a finished plan sends only `end`. Nothing but the training jobs' own rank rules (rank 0 writes
//! metrics, checkpoints and `final/`) lets a follower write anything; they compose, evaluate and
//! record nothing, and need the same file system view of the stage store as rank 0 (one machine,
//! or a shared file system across nodes).
//!
//! # Failures are bounded
//!
//! * Each stage's group is formed and used with the launch's timeout (`--dist-timeout-s`), as in
//!   the `train` example: a rank that dies mid-stage fails the others' next collective at once
//!   (`PeerLost`), a hung one after the timeout. The group is dropped when the stage ends, and the
//!   next stage uses a new port, so consecutive groups never collide.
//! * Between stages (rank 0 composing, scoring held-out losses or evaluating, which can take
//!   longer than the timeout), a thread of rank 0 broadcasts an empty heartbeat on the control
//!   group every [`Leader::heartbeat`], so a follower's wait is bounded by the timeout only while
//!   rank 0 has stopped answering; a rank 0 that dies closes its sockets and the wait fails at
//!   once. A follower that dies between stages makes rank 0's next heartbeat fail; the next stage
//!   then fails before it trains, naming the control group.
//! * `end` is bounded too: rank 0 waits at most [`END_WAIT`] for the followers to take it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sft_dist::{Backend, Launch, ProcessGroup};
use sft_train::{Distributed, Resume, RunOptions, TrainConfig, TrainData, TrainJob, TrainOutcome};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// How long rank 0 waits for the followers to take `end` before it exits anyway (a follower
/// stuck elsewhere then ends on its own timeout, or is ended by the launcher).
pub const END_WAIT: Duration = Duration::from_secs(30);

/// One stage to train, as rank 0 sends it to the other ranks: everything of its `TrainJob` that
/// is not this rank's own (device, rank, progress bars, stop flag).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageJob {
    /// 0-based number of the job in this launch (stages trained so far).
    pub number: usize,
    /// Starting weights (the base model or the previous stage's `model/`).
    pub model: PathBuf,
    /// The tokenizer (the base model's).
    pub tokenizer: Option<PathBuf>,
    /// The stage's training data (chat JSONL).
    pub data: PathBuf,
    /// The stage's resolved trainer config.
    pub config: TrainConfig,
    /// The trainer's directory (only rank 0 writes in it).
    pub out_dir: PathBuf,
    /// The previous stage's trainer directory whose optimizer state is carried over.
    pub carry_optimizer_from: Option<PathBuf>,
    /// Interrupt after this many optimizer steps (as a kill would).
    pub stop_after: Option<u64>,
    /// The port of the stage's group on `MASTER_ADDR` (rank 0 hosts its store).
    pub port: u16,
}

impl StageJob {
    /// This rank's `TrainJob` for the stage: the job's fields, `device`, this rank of the
    /// launch on the job's port.
    fn train_job(
        &self,
        launch: &Launch,
        timeout: Duration,
        device: Device,
        progress: bool,
        stop: Option<Arc<AtomicBool>>,
    ) -> TrainJob {
        TrainJob {
            model: self.model.clone(),
            tokenizer: self.tokenizer.clone(),
            data: TrainData::Path(self.data.clone()),
            config: self.config.clone(),
            out_dir: self.out_dir.clone(),
            device,
            run: RunOptions {
                resume: Resume::Auto,
                progress,
                stop,
                stop_after: self.stop_after,
                carry_optimizer_from: self.carry_optimizer_from.clone(),
                ..RunOptions::default()
            },
            distributed: Some(Distributed {
                launch: Launch {
                    master_port: self.port,
                    ..launch.clone()
                },
                timeout,
            }),
        }
    }
}

/// What rank 0 broadcasts on the control group (an empty message is a heartbeat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Message {
    /// Train this stage now.
    Job(Box<StageJob>),
    /// The runner is done; `error` when it failed.
    End { error: Option<String> },
}

fn dist_error(context: impl Into<String>) -> impl FnOnce(sft_dist::Error) -> Error {
    let context = context.into();
    move |source| Error::Dist { context, source }
}

/// Broadcasts `bytes` from rank 0: its length (one i64), then the bytes when there are any.
fn send(group: &ProcessGroup, bytes: &[u8]) -> sft_dist::Result<()> {
    let mut header = [Tensor::from_slice(&[bytes.len() as i64])];
    group.broadcast(&mut header, 0)?;
    if !bytes.is_empty() {
        let mut payload = [Tensor::from_slice(bytes)];
        group.broadcast(&mut payload, 0)?;
    }
    Ok(())
}

/// Receives what [`send`] broadcasts (empty: a heartbeat).
fn recv(group: &ProcessGroup) -> sft_dist::Result<Vec<u8>> {
    let mut header = [Tensor::zeros([1], (Kind::Int64, Device::Cpu))];
    group.broadcast(&mut header, 0)?;
    let len = header[0].int64_value(&[0]);
    if len <= 0 {
        return Ok(Vec::new());
    }
    let mut payload = [Tensor::zeros([len], (Kind::Uint8, Device::Cpu))];
    group.broadcast(&mut payload, 0)?;
    Ok(Vec::<u8>::try_from(&payload[0])?)
}

/// Forms the control group of `launch` on its `MASTER_PORT` (Gloo, the launch's timeout).
fn control_group(launch: &Launch, timeout: Duration) -> Result<ProcessGroup> {
    ProcessGroup::new(&launch.group_config(Backend::Gloo, timeout)).map_err(dist_error(format!(
        "forming the control group of {} ranks on {}:{}",
        launch.world_size, launch.master_addr, launch.master_port
    )))
}

/// A TCP port free on this host now, for the next stage's group (rank 0 hosts its store).
fn free_port() -> Result<u16> {
    std::net::TcpListener::bind(("0.0.0.0", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(Error::io("bind a free port on", "0.0.0.0"))
}

/// What rank 0's main thread asks its control thread.
enum Command {
    /// Broadcast a job, answer, then send no heartbeat until [`Command::Resume`] (every rank is
    /// training the stage, and a broadcast would wait for them).
    Job(Vec<u8>, SyncSender<sft_dist::Result<()>>),
    /// The stage is over: heartbeats again.
    Resume,
    /// Broadcast `end`, then a barrier (every follower took it), answer, and stop.
    End(Vec<u8>, SyncSender<sft_dist::Result<()>>),
}

/// The control thread: owns the group (c10d calls come from one thread), sends what it is asked,
/// and a heartbeat every `beat` while no stage trains.
fn control_loop(group: ProcessGroup, commands: Receiver<Command>, beat: Duration) {
    let mut training = false;
    let mut lost = false;
    loop {
        let command = if training {
            commands.recv().ok()
        } else {
            match commands.recv_timeout(beat) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => {
                    if !lost {
                        if let Err(e) = send(&group, &[]) {
                            // The group now returns this error to every call: the next job fails.
                            tracing::error!("control group: a heartbeat failed: {e}");
                            lost = true;
                        }
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => None,
            }
        };
        match command {
            None => return,
            Some(Command::Job(bytes, reply)) => {
                let r = send(&group, &bytes);
                training = r.is_ok();
                let _ = reply.send(r);
            }
            Some(Command::Resume) => training = false,
            Some(Command::End(bytes, reply)) => {
                let r = send(&group, &bytes).and_then(|()| group.barrier());
                let _ = reply.send(r);
                return;
            }
        }
    }
}

/// Rank 0 of a data-parallel plan: the control group's owner, through which the backend hands
/// each stage it trains to the other ranks ([`crate::LocalOptions::leader`]).
pub struct Leader {
    launch: Launch,
    timeout: Duration,
    commands: Mutex<Sender<Command>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    jobs: AtomicUsize,
    ended: AtomicBool,
}

impl std::fmt::Debug for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leader")
            .field("launch", &self.launch)
            .field("timeout", &self.timeout)
            .field("jobs", &self.jobs.load(Ordering::Relaxed))
            .finish()
    }
}

impl Leader {
    /// Forms the control group as rank 0 of `launch` (blocks until every rank has joined, or
    /// fails within about `timeout`) and starts the heartbeat thread.
    pub fn start(launch: Launch, timeout: Duration) -> Result<Arc<Leader>> {
        if launch.rank != 0 {
            return Err(Error::Settings(format!(
                "rank {} cannot lead a data-parallel plan (rank 0 does)",
                launch.rank
            )));
        }
        let group = control_group(&launch, timeout)?;
        let (tx, rx) = mpsc::channel();
        let beat = Self::heartbeat(timeout);
        let thread = std::thread::Builder::new()
            .name("sft-dist-control".into())
            .spawn(move || control_loop(group, rx, beat))
            .map_err(Error::io(
                "spawn the control thread for",
                "the control group",
            ))?;
        tracing::info!(
            world_size = launch.world_size,
            port = launch.master_port,
            "data-parallel plan: leading {} ranks",
            launch.world_size
        );
        Ok(Arc::new(Leader {
            launch,
            timeout,
            commands: Mutex::new(tx),
            thread: Mutex::new(Some(thread)),
            jobs: AtomicUsize::new(0),
            ended: AtomicBool::new(false),
        }))
    }

    /// The heartbeat interval for a timeout: a quarter of it, between 1 s and 30 s.
    pub fn heartbeat(timeout: Duration) -> Duration {
        (timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// The launch's world size (every stage's ranks).
    pub fn world_size(&self) -> usize {
        self.launch.world_size
    }

    /// How many stages have been handed to the other ranks.
    pub fn jobs(&self) -> usize {
        self.jobs.load(Ordering::SeqCst)
    }

    fn command(&self, c: Command) -> Result<()> {
        self.commands
            .lock()
            .map_err(|_| Error::Settings("the control thread's channel is poisoned".into()))?
            .send(c)
            .map_err(|_| Error::Settings("the control thread has stopped".into()))
    }

    /// Trains `job` (a one-process job of the backend, data from a file) as rank 0 of all the
    /// launch's ranks: hands it to the followers, then runs it with `distributed` set.
    pub(crate) fn train(&self, job: &TrainJob) -> Result<TrainOutcome> {
        let TrainData::Path(data) = &job.data else {
            return Err(Error::Settings(
                "a data-parallel stage must read its data from a file".into(),
            ));
        };
        let number = self.jobs.fetch_add(1, Ordering::SeqCst);
        let stage = StageJob {
            number,
            model: job.model.clone(),
            tokenizer: job.tokenizer.clone(),
            data: data.clone(),
            config: job.config.clone(),
            out_dir: job.out_dir.clone(),
            carry_optimizer_from: job.run.carry_optimizer_from.clone(),
            stop_after: job.run.stop_after,
            port: free_port()?,
        };
        let bytes = serde_json::to_vec(&Message::Job(Box::new(stage.clone())))
            .map_err(|e| Error::Settings(format!("encoding the stage job: {e}")))?;
        let (reply, answer) = mpsc::sync_channel(1);
        self.command(Command::Job(bytes, reply))?;
        answer
            .recv()
            .map_err(|_| Error::Settings("the control thread has stopped".into()))?
            .map_err(dist_error(format!(
                "handing stage job {number} to the other ranks (control group)"
            )))?;
        tracing::info!(
            job = number,
            port = stage.port,
            ranks = self.launch.world_size,
            "training the stage data-parallel"
        );
        let ranked = TrainJob {
            distributed: Some(Distributed {
                launch: Launch {
                    master_port: stage.port,
                    ..self.launch.clone()
                },
                timeout: self.timeout,
            }),
            ..job.clone()
        };
        let outcome = sft_train::train(&ranked).map_err(Error::train("training"));
        self.command(Command::Resume)?;
        outcome
    }

    /// Tells the followers the runner is done (`error`: it failed, with this message) and waits
    /// (at most [`END_WAIT`]) until they have taken it. Only the first call sends.
    pub fn finish(&self, error: Option<&str>) -> Result<()> {
        if self.ended.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&Message::End {
            error: error.map(str::to_string),
        })
        .map_err(|e| Error::Settings(format!("encoding end: {e}")))?;
        let (reply, answer) = mpsc::sync_channel(1);
        self.command(Command::End(bytes, reply))?;
        let r = match answer.recv_timeout(END_WAIT) {
            Ok(r) => r.map_err(dist_error("telling the other ranks the plan ended")),
            Err(_) => Err(Error::Settings(format!(
                "the other ranks did not take `end` within {} s",
                END_WAIT.as_secs()
            ))),
        };
        if r.is_ok() {
            if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
                let _ = t.join();
            }
        }
        r
    }
}

/// What a follower did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Followed {
    /// Stages it trained.
    pub stages: usize,
}

/// A rank other than 0 of a data-parallel plan: forms the control group with rank 0, trains
/// every stage job rank 0 hands over as this rank (on `device`: `cuda:LOCAL_RANK` on CUDA), and
/// returns at `end`: `Ok` when rank 0's run is done, an error when it failed, when a stage fails
/// here, or when rank 0 is lost (its sockets closed, or no message or heartbeat within
/// `timeout`).
pub fn follow(
    launch: &Launch,
    timeout: Duration,
    device: Device,
    stop: Option<Arc<AtomicBool>>,
) -> Result<Followed> {
    if launch.rank == 0 {
        return Err(Error::Settings(
            "rank 0 leads a data-parallel plan; it does not follow".into(),
        ));
    }
    let group = control_group(launch, timeout)?;
    let mut stages = 0;
    loop {
        let bytes = recv(&group).map_err(dist_error("waiting for rank 0 (control group)"))?;
        if bytes.is_empty() {
            continue;
        }
        let message: Message = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Settings(format!("rank 0 sent a message this build cannot read: {e}"))
        })?;
        match message {
            Message::Job(job) => {
                tracing::info!(
                    rank = launch.rank,
                    job = job.number,
                    port = job.port,
                    data = %job.data.display(),
                    "training a stage for rank 0"
                );
                let train = job.train_job(launch, timeout, device, false, stop.clone());
                let outcome = sft_train::train(&train).map_err(Error::train("training"))?;
                if outcome.interrupted {
                    // Rank 0 stopped at the same step; its run fails and says so in `end`.
                    tracing::warn!(step = outcome.steps, "the stage was interrupted");
                }
                stages += 1;
            }
            Message::End { error } => {
                group
                    .barrier()
                    .map_err(dist_error("acknowledging end (control group)"))?;
                return match error {
                    None => Ok(Followed { stages }),
                    Some(e) => Err(Error::Leader(e)),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_heartbeats_stay_in_bounds() {
        let job = StageJob {
            number: 3,
            model: "stages/abc/model".into(),
            tokenizer: Some("base.gguf".into()),
            data: "stages/def/data/train.jsonl".into(),
            config: TrainConfig {
                lr: 1.2345678901234567e-4,
                ..TrainConfig::default()
            },
            out_dir: "stages/def/train".into(),
            carry_optimizer_from: None,
            stop_after: Some(2),
            port: 41000,
        };
        for m in [
            Message::Job(Box::new(job)),
            Message::End { error: None },
            Message::End {
                error: Some("stage 1 failed".into()),
            },
        ] {
            let bytes = serde_json::to_vec(&m).unwrap();
            assert_eq!(serde_json::from_slice::<Message>(&bytes).unwrap(), m);
        }
        assert_eq!(
            Leader::heartbeat(Duration::from_secs(1800)),
            Duration::from_secs(30)
        );
        assert_eq!(
            Leader::heartbeat(Duration::from_secs(20)),
            Duration::from_secs(5)
        );
        assert_eq!(
            Leader::heartbeat(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
    }
}
