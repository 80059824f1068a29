//! A model server the caller starts for one job and always stops: the user's own command (e.g.
//! `vllm serve {model} --port {port}`), run with `sh -c` in its own process group, ready when
//! `GET /v1/models` answers 200, and stopped (SIGTERM to the group, SIGKILL after a grace
//! period) when the [`ServerProcess`] is dropped, on success, error or panic alike.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::openai::{EndpointConfig, OpenAiClient, OpenAiCompleter};

/// A running server.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    base_url: String,
    model: String,
    log: PathBuf,
    command: String,
}

/// `text` quoted for `sh`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// A free TCP port on 127.0.0.1 (the kernel's pick; released before the server binds it).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("127.0.0.1:0", e))?;
    let port = l
        .local_addr()
        .map_err(|e| Error::io("127.0.0.1:0", e))?
        .port();
    Ok(port)
}

fn log_tail(path: &Path) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(2000)));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    s
}

impl ServerProcess {
    /// Starts `command` with `{model}` replaced by the quoted `model` path and `{port}` by a free
    /// port, its output appended to `log`, and waits until `/v1/models` answers (the served
    /// model's name is the first `data[].id`). A command that exits, or is not ready within
    /// `ready_timeout`, is an error carrying the end of its log; the process group is stopped.
    pub fn start(
        command: &str,
        model: &Path,
        ready_timeout: Duration,
        log: &Path,
    ) -> Result<ServerProcess> {
        if !command.contains("{port}") {
            return Err(Error::Config(format!(
                "the server command {command:?} has no {{port}} placeholder"
            )));
        }
        let port = free_port()?;
        let line = command
            .replace("{model}", &shell_quote(&model.display().to_string()))
            .replace("{port}", &port.to_string());
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Error::io(log, e))?;
        let err = out.try_clone().map_err(|e| Error::io(log, e))?;
        tracing::info!(command = %line, log = %log.display(), "starting the model server");
        let child = Command::new("sh")
            .arg("-c")
            .arg(&line)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| Error::io("sh", e))?;
        let mut server = ServerProcess {
            child,
            base_url: format!("http://127.0.0.1:{port}/v1"),
            model: String::new(),
            log: log.to_path_buf(),
            command: line,
        };
        server.model = server.wait_ready(ready_timeout)?;
        tracing::info!(url = %server.base_url, model = %server.model, "model server ready");
        Ok(server)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .http_status_as_error(false)
            .build()
            .into();
        let url = format!("{}/models", self.base_url);
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Error::Request {
                    status: None,
                    message: format!(
                        "the server command `{}` exited ({status}) before it was ready; the end of {}:\n{}",
                        self.command,
                        self.log.display(),
                        log_tail(&self.log)
                    ),
                });
            }
            if let Ok(mut resp) = agent.get(&url).call() {
                if resp.status().as_u16() == 200 {
                    let text = resp.body_mut().read_to_string().unwrap_or_default();
                    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                        Error::Reply(format!("{url} answered 200 with no JSON ({e})"))
                    })?;
                    return v
                        .pointer("/data/0/id")
                        .and_then(|m| m.as_str())
                        .map(str::to_string)
                        .ok_or_else(|| Error::Reply(format!("{url} lists no model: {text}")));
                }
            }
            if start.elapsed() >= timeout {
                return Err(Error::Request {
                    status: None,
                    message: format!(
                        "the server command `{}` was not ready after {:.0} s ({url} did not answer); the end of {}:\n{}",
                        self.command,
                        timeout.as_secs_f64(),
                        self.log.display(),
                        log_tail(&self.log)
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The base URL, ending in `/v1`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The served model's name.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The server's process id (the leader of its process group).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A completer for this server: `parallel` requests at once, the key (if any) from
    /// `api_key_env`, no reply cache (the caller caches what it keeps).
    pub fn completer(&self, parallel: usize, api_key_env: &str) -> Result<OpenAiCompleter> {
        let config = EndpointConfig {
            base_url: self.base_url.clone(),
            model: self.model.clone(),
            api_key_env: api_key_env.to_string(),
            timeout_s: 3600.0,
            max_retries: 3,
            parallel,
            cache_path: None,
            ..EndpointConfig::default()
        };
        Ok(OpenAiCompleter::new(OpenAiClient::new(config)?))
    }

    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                // The leader is gone; stop anything it left in the group too.
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                tracing::info!(pid = self.child.id(), "model server stopped");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!(
            pid = self.child.id(),
            "model server ignored SIGTERM for 15 s; killing it"
        );
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
