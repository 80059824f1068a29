//! The one GPU check (issue 14): in one short run on a GPU machine, verify that CUDA is used,
//! that CPU and CUDA f32 logits agree, that a bf16 training step (fused AdamW, activation
//! checkpointing, chunked loss) runs, and that NCCL all-reduce works across 2 GPUs; measure the
//! training step time, tokens/s and MFU for SmolLM2 and a ~1B LLaMA config at sequence 2048,
//! and the same step in PyTorch (`bench/gpu_check_peer.py`) in the same run. Writes one JSON.
//!
//! Built here and run there (`cargo xtask gpu-check` builds the bundle; `docs/gpu.md`):
//!
//! ```text
//! ./gpu_check --model SmolLM2-135M-Instruct.Q4_1.gguf --out gpu_check.json [--python python3]
//! ```
//!
//! On a machine without a GPU (`--device cpu --quick`) the same code runs small and the GPU-only
//! checks are recorded as skipped with the reason, never as passed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

#[derive(Parser)]
#[command(about = "One short GPU check: CUDA, parity, bf16 training step, NCCL, step time and MFU")]
struct Args {
    /// The model to check and time (GGUF or HF directory; its tokenizer is used throughout).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Where the JSON report goes.
    #[arg(long, default_value = "gpu_check.json")]
    out: PathBuf,
    /// cuda (default), cuda:N or cpu.
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Sequence length of the timed training steps (default 2048; 128 with --quick).
    #[arg(long)]
    seq: Option<usize>,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 4)]
    steps: u64,
    /// Small and quick (CPU smoke run): 2 steps, no ~1B model, sequence 128 unless given.
    #[arg(long)]
    quick: bool,
    /// Peak dense bf16 FLOP/s of one device in TFLOP/s for the MFU (default: from the GPU name).
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// Python with torch (and transformers, if present) for the peer measurement.
    #[arg(long)]
    python: Option<PathBuf>,
    /// `--model` is an HF directory with `config.json` and the tokenizer but no weights (what
    /// `cargo xtask gpu-check` bundles, to stay small): train and time it with random weights.
    #[arg(long)]
    random_weights: bool,
    /// Write `--model`'s `config.json` and tokenizer files into this directory and exit (the
    /// bundle's model, made here).
    #[arg(long, value_name = "DIR")]
    export: Option<PathBuf>,
    /// Internal: one rank of the NCCL check.
    #[arg(long, hide = true)]
    nccl_rank: bool,
}

fn main() -> anyhow::Result<()> {
    sft_examples::init_logging();
    let a = Args::parse();
    if a.nccl_rank {
        return nccl_rank();
    }
    let model = match &a.model {
        Some(m) => m.clone(),
        None => sft_examples::default_model()?,
    };
    if let Some(dir) = &a.export {
        std::fs::create_dir_all(dir)?;
        sft_llama::model_config(&model)?.write_hf(dir, None)?;
        sft_chat::ChatTokenizer::from_path(&model)?.save_hf_dir(dir)?;
        println!("wrote {}", dir.display());
        return Ok(());
    }
    let env = sft_examples::EnvReport::probe();
    let device = a.device.parse::<sft_examples::DeviceSpec>()?.resolve()?;
    let work = tempfile::tempdir()?;
    let model = if a.random_weights {
        let dir = work.path().join("model");
        std::fs::create_dir_all(&dir)?;
        for f in std::fs::read_dir(&model)? {
            let f = f?;
            std::fs::copy(f.path(), dir.join(f.file_name()))?;
        }
        write_random_weights(&dir)?;
        dir
    } else {
        model
    };
    let (seq, steps) = if a.quick {
        (a.seq.unwrap_or(128), 2)
    } else {
        (a.seq.unwrap_or(2048), a.steps)
    };
    let mut report = json!({
        "device": format!("{device:?}"),
        "cuda_available": env.cuda_available,
        "gpus": env.gpus,
        "libtorch": env.libtorch_version,
        "cuda_used": device.is_cuda() && env.cuda_available,
        "model": model.display().to_string(),
        "seq": seq,
    });
    if device.is_cuda() && !env.cuda_available {
        bail!(
            "CUDA was asked for but is not available: {:?}",
            env.cuda_library
        );
    }
    let peak = a
        .peak_tflops
        .or_else(|| env.gpus.first().and_then(|g| peak_bf16_tflops(&g.name)));
    report["peak_tflops"] = json!(peak);

    report["parity"] = if device.is_cuda() {
        parity(&model, device)?
    } else {
        skipped("the CPU-vs-CUDA comparison needs a CUDA device")
    };

    let data = work.path().join("long.jsonl");
    write_long_records(&data, 8)?;
    let small = train_step(
        &model,
        None,
        &data,
        device,
        seq,
        steps,
        work.path(),
        "small",
        peak,
    )?;
    report["train_small"] = small;
    report["train_1b"] = if a.quick {
        skipped("--quick")
    } else {
        let dir = work.path().join("llama-1b");
        write_random_1b(&dir, &model)?;
        train_step(
            &dir,
            Some(&model),
            &data,
            device,
            seq,
            steps,
            work.path(),
            "1b",
            peak,
        )?
    };
    report["peer"] = match &a.python {
        Some(py) => {
            let small_cfg = work.path().join("small-config");
            std::fs::create_dir_all(&small_cfg)?;
            sft_llama::model_config(&model)?.write_hf(&small_cfg, None)?;
            let mut peers = json!({"small": peer(py, &small_cfg, seq, steps, device)?});
            if !a.quick {
                peers["1b"] = peer(py, &work.path().join("llama-1b"), seq, steps, device)?;
            }
            peers
        }
        None => skipped("no --python given"),
    };
    report["nccl"] = if device.is_cuda() && tch::Cuda::device_count() >= 2 {
        let exe = std::env::current_exe()?;
        let t0 = Instant::now();
        match sft_dist::run_local_ranks(2, &exe, &["--nccl-rank".into()]) {
            Ok(()) => json!({"ok": true, "ranks": 2, "wall_s": t0.elapsed().as_secs_f64()}),
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        }
    } else {
        skipped("the NCCL check needs 2 CUDA devices")
    };
    let text = serde_json::to_string_pretty(&report)?;
    std::fs::write(&a.out, &text).with_context(|| format!("writing {}", a.out.display()))?;
    println!("{text}");
    Ok(())
}

fn skipped(why: &str) -> Value {
    json!({"skipped": why})
}

/// Dense bf16 tensor-core peak of the GPUs this project meets (vendor datasheets, no sparsity).
fn peak_bf16_tflops(name: &str) -> Option<f64> {
    let n = name.to_ascii_lowercase();
    if n.contains("h100") || n.contains("h200") || n.contains("gh200") {
        Some(989.4)
    } else if n.contains("a100") {
        Some(312.0)
    } else if n.contains("l40s") {
        Some(362.05)
    } else {
        None
    }
}

/// f32 logits of the same ids on the CPU and on `device`.
fn parity(model: &Path, device: Device) -> anyhow::Result<Value> {
    let cpu = sft_llama::load_model(model, Device::Cpu, Kind::Float)?;
    let gpu = sft_llama::load_model(model, device, Kind::Float)?;
    let v = cpu.model.config().vocab_size as i64;
    let ids = (Tensor::arange(2 * 64, (Kind::Int64, Device::Cpu)) * 7919 + 13)
        .remainder(v)
        .view([2, 64]);
    let (a, b) = tch::no_grad(|| -> anyhow::Result<(Tensor, Tensor)> {
        Ok((
            cpu.model.forward(&ids, None, None)?,
            gpu.model
                .forward(&ids.to_device(device), None, None)?
                .to_device(Device::Cpu),
        ))
    })?;
    let diff = (&a - &b).abs().max().double_value(&[]);
    let scale = a.abs().max().double_value(&[]);
    let argmax_agree = a
        .argmax(-1, false)
        .eq_tensor(&b.argmax(-1, false))
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[]);
    Ok(json!({
        "max_abs_diff": diff,
        "max_rel_diff": diff / scale.max(1e-30),
        "argmax_agreement": argmax_agree,
        "ok": diff / scale.max(1e-30) <= 1e-3,
    }))
}

fn write_long_records(path: &Path, n: usize) -> anyhow::Result<()> {
    use std::io::Write;
    let words = [
        "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with",
    ];
    let mut f = std::fs::File::create(path)?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        words[(x % words.len() as u64) as usize]
    };
    for i in 0..n {
        let q: Vec<&str> = (0..20).map(|_| next()).collect();
        let r: Vec<&str> = (0..3000).map(|_| next()).collect();
        let rec = json!({"id": format!("long-{i}"), "source": "general", "messages": [
            {"role": "user", "content": q.join(" ")},
            {"role": "assistant", "content": r.join(" ")}]});
        writeln!(f, "{rec}")?;
    }
    Ok(())
}

/// A TinyLlama-1.1B-shaped model with random weights (the tokenizer's vocabulary), as an HF dir.
fn write_random_1b(dir: &Path, tokenizer_model: &Path) -> anyhow::Result<()> {
    let vocab = sft_llama::model_config(tokenizer_model)?.vocab_size;
    let cfg = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
        "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
        "num_key_value_heads": 4, "vocab_size": vocab, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false,
        "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2
    });
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg)?)?;
    write_random_weights(dir)
}

/// `model.safetensors` with transformers' random init for the `config.json` in `dir`.
fn write_random_weights(dir: &Path) -> anyhow::Result<()> {
    let lc = sft_llama::model_config(dir)?;
    tch::manual_seed(0);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let _model = sft_llama::Llama::new(&vs.root(), &lc)?;
    sft_llama::save_safetensors(&vs, &lc, dir)?;
    Ok(())
}

/// Trains `model` for 1 + `steps` steps (bf16 on CUDA, f32 on the CPU) and reports the timed
/// steps' median step time, tokens/s and MFU (6·N + 12·L·H·T FLOPs per token, recomputation not
/// counted).
#[allow(clippy::too_many_arguments)]
fn train_step(
    model: &Path,
    tokenizer: Option<&Path>,
    data: &Path,
    device: Device,
    seq: usize,
    steps: u64,
    work: &Path,
    name: &str,
    peak_tflops: Option<f64>,
) -> anyhow::Result<Value> {
    let cfg = sft_train::TrainConfig {
        template: "vicuna_v1.1".into(),
        dtype: if device.is_cuda() {
            sft_train::Dtype::Bf16
        } else {
            sft_train::Dtype::F32
        },
        micro_batch_size: 1,
        grad_accum: 1,
        max_len: seq,
        max_steps: Some(steps + 1),
        epochs: 1,
        lr: 1e-5,
        warmup_ratio: 0.0,
        activation_checkpointing: true,
        loss_chunk: 512,
        ..sft_train::TrainConfig::default()
    };
    let out = work.join(format!("out-{name}"));
    let mut job = sft_train::TrainJob::new(
        model,
        sft_train::TrainData::Path(data.to_path_buf()),
        cfg.clone(),
        &out,
        device,
    );
    job.tokenizer = tokenizer.map(Path::to_path_buf);
    let estimate = sft_train::memory_estimate(&job).map(|e| e.peak);
    let t0 = Instant::now();
    let outcome = sft_train::train(&job)?;
    let wall = t0.elapsed().as_secs_f64();
    let metrics: Vec<sft_train::StepMetrics> = std::fs::read_to_string(out.join("metrics.jsonl"))?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let mut times: Vec<f64> = metrics
        .iter()
        .skip(1)
        .map(|m| m.tokens as f64 / m.tokens_per_s.max(1e-9))
        .collect();
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    let tokens = metrics.last().map_or(0, |m| m.tokens);
    let shape = sft_config::memory::ModelShape::from_model_path(model)?;
    let flops_per_token = 6.0 * shape.parameters() as f64
        + 12.0 * (shape.num_hidden_layers * shape.hidden_size) as f64 * seq as f64;
    let achieved = flops_per_token * tokens as f64 / median;
    let peak_mem = if device.is_cuda() {
        Value::Null // libtorch's CUDA allocator statistics are not reachable through tch.
    } else {
        json!(peak_rss_bytes())
    };
    Ok(json!({
        "parameters": shape.parameters(),
        "dtype": format!("{:?}", cfg.dtype),
        "steps_timed": times.len(),
        "step_s_median": median,
        "tokens_per_step": tokens,
        "tokens_per_s": tokens as f64 / median,
        "achieved_tflops": achieved / 1e12,
        "mfu": peak_tflops.map(|p| achieved / (p * 1e12)),
        "last_loss": outcome.last_loss,
        "wall_s": wall,
        "memory_estimate_bytes": estimate,
        "peak_rss_bytes": peak_mem,
    }))
}

fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = s.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    kb.trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()
        .map(|k| k * 1024)
}

/// The same training step in PyTorch (`bench/gpu_check_peer.py`) for the HF config in
/// `config_dir` (random weights: the timing does not depend on them), its JSON.
fn peer(
    python: &Path,
    config_dir: &Path,
    seq: usize,
    steps: u64,
    device: Device,
) -> anyhow::Result<Value> {
    let script = std::env::current_exe()?
        .parent()
        .map(|d| d.join("gpu_check_peer.py"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| sft_examples::workspace_dir().join("bench/gpu_check_peer.py"));
    let o = std::process::Command::new(python)
        .arg(&script)
        .args([
            "--config",
            &config_dir.display().to_string(),
            "--seq",
            &seq.to_string(),
        ])
        .args(["--steps", &steps.to_string()])
        .args(["--device", if device.is_cuda() { "cuda" } else { "cpu" }])
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !o.status.success() {
        return Ok(
            json!({"ok": false, "stderr": last_chars(&String::from_utf8_lossy(&o.stderr), 2000)}),
        );
    }
    Ok(serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| json!({"ok": false, "error": format!("peer printed no JSON: {e}")})))
}

/// The last `n` characters of `text`.
fn last_chars(text: &str, n: usize) -> String {
    let skip = text.chars().count().saturating_sub(n);
    text.chars().skip(skip).collect()
}

/// One rank of the NCCL check: all-reduce 256 MiB of `rank + 1` on `cuda:LOCAL_RANK`.
fn nccl_rank() -> anyhow::Result<()> {
    let launch = sft_dist::Launch::from_env()?.context("--nccl-rank outside a launch")?;
    let device = Device::Cuda(launch.local_rank);
    let group = sft_dist::ProcessGroup::new(
        &launch.group_config(sft_dist::Backend::Nccl, std::time::Duration::from_secs(120)),
    )?;
    let n = 64 << 20;
    let mut t = vec![Tensor::full(
        [n],
        (launch.rank + 1) as f64,
        (Kind::Float, device),
    )];
    group.all_reduce_sum(&mut t)?;
    let t0 = Instant::now();
    group.all_reduce_sum(&mut t)?;
    tch::Cuda::synchronize(launch.local_rank as i64);
    let secs = t0.elapsed().as_secs_f64();
    let world = launch.world_size as f64;
    let want = (world * (world + 1.0) / 2.0) * world;
    let got = t[0].mean(Kind::Float).double_value(&[]);
    if (got - want).abs() > 1e-3 {
        bail!(
            "rank {}: all-reduce gave {got}, expected {want}",
            launch.rank
        );
    }
    eprintln!(
        "rank {}: NCCL all-reduce of 256 MiB ok in {:.4} s ({:.1} GB/s algorithm bandwidth)",
        launch.rank,
        secs,
        (n * 4) as f64 / secs / 1e9
    );
    Ok(())
}
