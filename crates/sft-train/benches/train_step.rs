//! Rust side of the CPU training-step benchmark (see docs/benchmarks/train.md).
//!
//! `cargo bench -p sft-train --bench train_step -- MODEL BATCH SEQ STEPS [DEVICE] [DTYPE]` prints
//! one JSON line: the same step as `benches/train_step.py` (forward, token-mean cross entropy,
//! backward, clip at 1.0, AdamW) on the same batch, timed after one warm-up step. MODEL is a
//! `.gguf`/HF dir (real weights) or a `config.json` (random init, e.g. `llama-1b.config.json`).
//! DEVICE `cpu` (default) or `cuda`; DTYPE `f32` (default) or `bf16` (bf16 compute with f32
//! master weights, CUDA). On CUDA the JSON adds MFU = (6N + 12·L·d·s)·tokens/s / 989.4e12
//! (H100 SXM dense bf16 peak).

use std::time::Instant;

use sft_train::batch::{collate, MicroBatch};
use sft_train::optim::{AdamW, AdamWParams};
use sft_train::{Example, IGNORE};
use tch::{Device, Kind};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs a `harness = false` bench
    // without it. This is a benchmark, not a test: do nothing then (it reports no test).
    if !std::env::args().any(|a| a == "--bench") {
        println!("train_step: a benchmark, not a test (run it with `cargo bench -p sft-train --bench train_step -- MODEL BATCH SEQ STEPS`)");
        return Ok(());
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.len() < 4 {
        eprintln!("usage: train_step GGUF BATCH SEQ STEPS");
        return Ok(());
    }
    let (b, t, steps): (usize, usize, usize) =
        (args[1].parse()?, args[2].parse()?, args[3].parse()?);
    let device = match args.get(4).map(String::as_str) {
        Some("cuda") => sft_llama::device::DeviceSpec::Cuda(0).resolve()?,
        _ => Device::Cpu,
    };
    let bf16 = args.get(5).map(String::as_str) == Some("bf16");
    let path = std::path::Path::new(&args[0]);
    let mut m = if path.extension().is_some_and(|e| e == "json") {
        let cfg = sft_llama::LlamaConfig::from_hf_file(path)?;
        let vs = tch::nn::VarStore::new(device);
        let model = sft_llama::Llama::new(&vs.root(), &cfg)?;
        sft_llama::LoadedModel {
            vs,
            model,
            source: sft_llama::ModelSource::HfDir(path.to_path_buf()),
        }
    } else {
        sft_train::llama::load_model(path, device)?
    };
    let v = m.model.config().vocab_size;
    let examples: Vec<Example> = (0..b)
        .map(|r| {
            let ids: Vec<i64> = (0..t)
                .map(|c| ((r * 7919 + c * 104729 + 13) % v) as i64)
                .collect();
            let labels = ids
                .iter()
                .enumerate()
                .map(|(c, &i)| if c < t / 4 { IGNORE } else { i })
                .collect();
            Example {
                record_id: format!("bench:{r}"),
                source: "bench".into(),
                input_ids: ids,
                labels,
            }
        })
        .collect();
    let mb = MicroBatch {
        rows: (0..b).map(|i| vec![i]).collect(),
    };
    let hp = AdamWParams {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut opt = AdamW::new(&m.vs, hp, bf16)?;
    // As the trainer: libtorch's fused AdamW. `BENCH_FUSED_ADAMW=0` times the tensor-op AdamW.
    let fused = std::env::var("BENCH_FUSED_ADAMW").ok().as_deref() != Some("0");
    opt.set_fused(fused);
    if bf16 {
        m.vs.set_kind(Kind::BFloat16);
    }
    let (mut times, mut losses) = (Vec::new(), Vec::new());
    for s in 0..=steps {
        let t0 = Instant::now();
        let c = collate(&examples, &mb, false, device)?;
        // The trainer's own pass (sft_train::forward_backward), so the bench times what runs.
        let tl = sft_train::forward_backward(
            &m.model,
            &c,
            1.0 / c.target_tokens as f64,
            sft_train::Memory::default(),
            false,
        )?;
        opt.absorb_grads()?;
        let loss = tl
            .f_sum(Kind::Float)?
            .f_div_scalar(c.target_tokens as f64)?;
        let norm = opt.grad_norm(None)?;
        opt.clip(1.0, norm)?;
        opt.step(2e-5, None)?;
        opt.zero_grad();
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
        let dt = t0.elapsed().as_secs_f64();
        if s > 0 {
            times.push(dt);
        }
        losses.push(loss.f_double_value(&[])?);
    }
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = sorted[sorted.len() / 2];
    let c = m.model.config();
    let n_params: f64 = m.vs.variables().values().map(|t| t.numel() as f64).sum();
    let flops_per_token = 6.0 * n_params + 12.0 * (c.num_hidden_layers * c.hidden_size * t) as f64;
    let tps = (b * t) as f64 / median;
    let mfu = if device == Device::Cpu {
        None
    } else {
        Some(flops_per_token * tps / 989.4e12)
    };
    println!(
        "{}",
        serde_json::json!({
            "impl": "rust-sft-train", "device": format!("{device:?}"), "fused_adamw": fused, "dtype": if bf16 { "bf16" } else { "f32" },
            "threads": tch::get_num_threads(), "batch": b, "seq": t, "steps": steps, "params": n_params,
            "step_s": times, "median_step_s": median, "tokens_per_s": tps, "mfu": mfu, "losses": losses,
        })
    );
    Ok(())
}
