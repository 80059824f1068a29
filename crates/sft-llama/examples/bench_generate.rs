//! Generation throughput of sft-llama on token-id prompts, printed as JSON (one line per batch size).
//!
//! ```text
//! cargo run --release -p sft-llama --example bench_generate -- MODEL.gguf PROMPTS.json [device] [dtype] [max_new] [batch sizes...]
//! ```
//! `BENCH_THREADS=N` sets libtorch's intra-op threads (default: libtorch's own choice).
//! `PROMPTS.json` is `fixtures/models/smollm2-reference.json` (its `cases[].prompt_ids`); prompts are
//! cycled to fill each batch. Greedy, no EOS stopping, so every prompt gets exactly `max_new` tokens.
//! `crates/sft-llama/bench/run.sh` runs this and transformers' `generate` on the same prompts.

use sft_llama::device::{DType, DeviceSpec};
use sft_llama::{
    generate_ids, load_model, load_model_for_inference, GenerationConfig, WeightLayout,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage =
        "usage: bench_generate MODEL PROMPTS.json [device] [dtype] [max_new] [batch sizes...]";
    let model_path = args.get(1).ok_or(usage)?;
    let prompts_path = args.get(2).ok_or(usage)?;
    let device = args
        .get(3)
        .map_or("cpu", String::as_str)
        .parse::<DeviceSpec>()?
        .resolve()?;
    let dtype: DType = args.get(4).map_or("f32", String::as_str).parse()?;
    let max_new: usize = args.get(5).map_or(Ok(64), |s| s.parse())?;
    let batches: Vec<usize> = if args.len() > 6 {
        args[6..]
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()?
    } else {
        vec![1, 16]
    };

    if let Some(n) = std::env::var("BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        tch::set_num_threads(n);
    }
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(prompts_path)?)?;
    let base: Vec<Vec<u32>> = doc["cases"]
        .as_array()
        .ok_or("no cases")?
        .iter()
        .map(|c| {
            c["prompt_ids"].as_array().map(|a| {
                a.iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as u32)
                    .collect()
            })
        })
        .collect::<Option<_>>()
        .ok_or("bad prompt_ids")?;
    let t = std::time::Instant::now();
    // BENCH_WEIGHT_LAYOUT=row|col overrides the device's layout (docs/benchmarks.md, "Weight
    // layout").
    let loaded = match std::env::var("BENCH_WEIGHT_LAYOUT").ok().as_deref() {
        None => load_model_for_inference(model_path, device, dtype.kind())?,
        Some(l) => {
            let layout = match l {
                "row" => WeightLayout::RowMajor,
                "col" => WeightLayout::ColumnMajor,
                other => return Err(format!("BENCH_WEIGHT_LAYOUT={other}: row or col").into()),
            };
            let mut loaded = load_model(model_path, device, dtype.kind())?;
            loaded.model.fuse_projections_as(layout)?;
            loaded
        }
    };
    let load_secs = t.elapsed().as_secs_f64();
    // Warm-up: one short generation so that first-call allocations are not timed.
    generate_ids(
        &loaded.model,
        &base[..1],
        &GenerationConfig {
            eos_token_ids: vec![u32::MAX],
            ..GenerationConfig::greedy(4)
        },
        None,
    )?;
    for &bs in &batches {
        // Batch 1 runs `bs.max(4)` prompts one after another; larger batches run one full batch.
        let n = bs.max(4);
        let prompts: Vec<Vec<u32>> = (0..n).map(|i| base[i % base.len()].clone()).collect();
        let cfg = GenerationConfig {
            batch_size: bs,
            eos_token_ids: vec![u32::MAX],
            ..GenerationConfig::greedy(max_new)
        };
        let out = generate_ids(&loaded.model, &prompts, &cfg, None)?;
        let line = serde_json::json!({
            "impl": "sft-llama", "device": format!("{device:?}"), "dtype": dtype.to_string(), "threads": tch::get_num_threads(),
            "batch_size": bs, "prompts": n, "max_new_tokens": max_new, "load_secs": load_secs, "stats": out.stats,
        });
        println!("{line}");
    }
    Ok(())
}
