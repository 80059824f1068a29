//! Glue shared by the example binaries: logging set-up, the `--device` convention, asset paths.
//!
//! Logic that more than one example needs lives here; logic a library user would need belongs in
//! a library crate instead.

use std::path::PathBuf;

pub use sft_llama::device::{DeviceSpec, EnvReport};

/// Start `tracing` logging to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The directory where `cargo xtask setup` unpacked the real assets (`SFT_ASSETS`).
pub fn assets_dir() -> anyhow::Result<PathBuf> {
    match std::env::var_os("SFT_ASSETS") {
        Some(d) => Ok(PathBuf::from(d)),
        None => anyhow::bail!(
            "SFT_ASSETS is not set: run `cargo xtask setup` and `eval \"$(cargo xtask env)\"` first"
        ),
    }
}

/// The embedded default model: SmolLM2-135M-Instruct, GGUF Q4_1, fetched at set-up.
pub fn default_model() -> anyhow::Result<PathBuf> {
    let p = assets_dir()?.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    anyhow::ensure!(
        p.exists(),
        "{} is missing: run `cargo xtask setup`",
        p.display()
    );
    Ok(p)
}

/// Prompts from a JSONL file: each non-blank line is a JSON string or an object with a `prompt`
/// (or `text`) field. Errors name the file and line.
pub fn read_prompts_jsonl(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: invalid JSON", at()))?;
        let prompt = match &v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Object(o) => match o.get("prompt").or_else(|| o.get("text")) {
                Some(serde_json::Value::String(s)) => s.clone(),
                _ => anyhow::bail!("{}: object has no string `prompt` field", at()),
            },
            _ => anyhow::bail!("{}: expected a string or an object with `prompt`", at()),
        };
        out.push(prompt);
    }
    Ok(out)
}

/// The workspace root (the examples package's parent directory).
pub fn workspace_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `git rev-parse HEAD` of the workspace and whether the tree has uncommitted changes, for
/// provenance; `None` outside a git checkout.
pub fn git_revision() -> Option<(String, bool)> {
    let dir = workspace_dir();
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(&dir)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let rev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dirty = std::process::Command::new("git")
        .arg("-C")
        .arg(&dir)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    Some((rev, dirty))
}

/// Provenance common to every run: git revision, command line, host.
pub fn run_provenance() -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut p = std::collections::BTreeMap::new();
    if let Some((rev, dirty)) = git_revision() {
        p.insert("git_revision".into(), serde_json::json!(rev));
        p.insert("git_dirty".into(), serde_json::json!(dirty));
    }
    p.insert(
        "command".into(),
        serde_json::json!(std::env::args().collect::<Vec<_>>()),
    );
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        p.insert("hostname".into(), serde_json::json!(h.trim()));
    }
    p
}

/// A flag set on the first Ctrl-C / SIGTERM: the trainer then checkpoints and returns, and the run
/// is marked failed ("interrupted; rerun to resume"). A second signal exits at once.
pub fn stop_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone());
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
    flag
}

/// Where completions come from, as the `rft sample` and `tag` commands take it: the local model
/// (`--model PATH`, default the embedded SmolLM2) or an OpenAI-compatible server
/// (`--base-url URL --model NAME`).
#[derive(clap::Args, Debug, Clone)]
pub struct CompleterArgs {
    /// Local: a model path (HF directory or GGUF; default the embedded SmolLM2). With
    /// --base-url: the model name the server serves.
    #[arg(long)]
    pub model: Option<String>,
    /// An OpenAI-compatible server's base URL up to `/v1` (vLLM, llama.cpp, a hosted API).
    #[arg(long)]
    pub base_url: Option<String>,
    /// The environment variable holding the server's API key (the key is never printed or
    /// written).
    #[arg(long, default_value = "OPENAI_API_KEY")]
    pub api_key_env: String,
    /// Concurrent requests to the server.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Retries per request after the first attempt (429, 408, 5xx, transport errors).
    #[arg(long, default_value_t = 8)]
    pub max_retries: u32,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 600.0)]
    pub timeout_s: f64,
    /// The server's reply cache (default: inside the output).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Local: the device.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Local: f32, bf16 or f16 (default bf16 on CUDA, f32 on the CPU).
    #[arg(long)]
    pub dtype: Option<sft_llama::device::DType>,
    /// Local: prompts generated together.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Local: the chat template for chat prompts (`model`, `vicuna_v1.1`, `chatml`, or a file).
    #[arg(long, default_value = "model")]
    pub template: String,
}

impl CompleterArgs {
    /// The completer these options describe; `default_cache` is the server cache unless
    /// `--cache` is given.
    pub fn build(
        &self,
        default_cache: PathBuf,
    ) -> anyhow::Result<Box<dyn sft_complete::Completer>> {
        use anyhow::Context;
        if let Some(url) = &self.base_url {
            let model = self
                .model
                .clone()
                .context("--base-url needs --model NAME (the model the server serves)")?;
            let config = sft_complete::EndpointConfig {
                base_url: url.clone(),
                model,
                api_key_env: self.api_key_env.clone(),
                timeout_s: self.timeout_s,
                max_retries: self.max_retries,
                parallel: self.parallel,
                cache_path: Some(self.cache.clone().unwrap_or(default_cache)),
                ..sft_complete::EndpointConfig::default()
            };
            let client = sft_complete::OpenAiClient::new(config)?;
            return Ok(Box::new(sft_complete::OpenAiCompleter::new(client)));
        }
        let path = match &self.model {
            Some(p) => PathBuf::from(p),
            None => default_model()?,
        };
        let device = self.device.resolve()?;
        let dtype = self.dtype.unwrap_or(if device.is_cuda() {
            sft_llama::device::DType::Bf16
        } else {
            sft_llama::device::DType::F32
        });
        tracing::info!(model = %path.display(), ?device, %dtype, "loading the local model");
        let local = sft_local::LocalCompleter::load(
            &path,
            device,
            dtype.kind(),
            Some(&self.template),
            self.batch_size,
        )
        .with_context(|| format!("loading {}", path.display()))?;
        Ok(Box::new(local))
    }

    /// Client statistics to report, for a server completer.
    pub fn describe(&self) -> String {
        match &self.base_url {
            Some(url) => format!("{} at {url}", self.model.as_deref().unwrap_or("?")),
            None => format!(
                "local {}",
                self.model
                    .as_deref()
                    .unwrap_or("SmolLM2-135M-Instruct (embedded default)")
            ),
        }
    }
}

/// The launch this process is one rank of, from torchrun's or srun's variables
/// ([`sft_dist::Launch::from_env`]); `None` for one process (a launch of one process is one).
pub fn launch_from_env() -> anyhow::Result<Option<sft_dist::Launch>> {
    Ok(sft_dist::Launch::from_env()?.filter(|l| l.world_size > 1))
}

/// `--nproc-per-node N` of `train` and `run_plan`: outside a launch and with `N > 1`, runs this
/// same command as N local ranks (they see the launcher's variables and join) and returns
/// `Ok(true)` once all ended well; otherwise `Ok(false)`: this process is a rank or alone.
pub fn launch_local_ranks(nproc_per_node: usize) -> anyhow::Result<bool> {
    if nproc_per_node <= 1 || launch_from_env()?.is_some() {
        return Ok(false);
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    sft_dist::run_local_ranks(nproc_per_node, &std::env::current_exe()?, &args)?;
    Ok(true)
}

/// The device of a rank: a CUDA device becomes `cuda:LOCAL_RANK` (one GPU per rank).
pub fn rank_device(device: tch::Device, launch: Option<&sft_dist::Launch>) -> tch::Device {
    match (device, launch) {
        (tch::Device::Cuda(_), Some(l)) => tch::Device::Cuda(l.local_rank),
        (d, _) => d,
    }
}
