//! Generate text with a LLaMA-architecture model (HF directory or `.gguf`).
//!
//! ```text
//! cargo run --release --example generate -- --prompt "The capital of France is" --max-new-tokens 16
//! cargo run --release --example generate -- --model path/to/hf-dir --prompts prompts.jsonl --chat --json
//! ```
//! Without `--model` the embedded default (SmolLM2-135M-Instruct, GGUF) is used. `--prompts`
//! reads JSONL lines that are strings or objects with a `prompt` field. `--json` prints one JSON
//! object per prompt (prompt_ids, generated_ids, text, top5_ids, top5_logits of the last prompt
//! position, finish_reason); throughput goes to stderr and, with `--stats FILE`, to a JSON file.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use sft_chat::{ChatTemplate, ChatTokenizer};
use sft_examples::{init_logging, DeviceSpec};
use sft_llama::device::DType;
use sft_llama::{GenerationConfig, Sampling, TokenizerCodec};
use sft_record::Message;

#[derive(Parser)]
#[command(about = "Generate text with a LLaMA-architecture model")]
struct Args {
    /// HF directory (config.json + safetensors + tokenizer.json) or .gguf file.
    #[arg(long)]
    model: Option<PathBuf>,
    /// A prompt (repeatable).
    #[arg(long)]
    prompt: Vec<String>,
    /// JSONL file of prompts (strings, or objects with a `prompt` field).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Wrap each prompt as a user turn in a chat template and add the generation prompt.
    #[arg(long)]
    chat: bool,
    /// Chat template for --chat: `model` (the tokenizer's own), `chatml` or `vicuna_v1.1`.
    #[arg(long, default_value = "model")]
    template: String,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// 0 means greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Generate exactly --max-new-tokens tokens (for benchmarks).
    #[arg(long)]
    ignore_eos: bool,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// f32, bf16 or f16 (default: bf16 on CUDA, f32 on the CPU).
    #[arg(long)]
    dtype: Option<DType>,
    /// Print one JSON object per prompt.
    #[arg(long)]
    json: bool,
    /// Continuous batching: a finished sequence's slot takes the next prompt at once.
    #[arg(long)]
    continuous: bool,
    /// Write throughput statistics as JSON to this file.
    #[arg(long)]
    stats: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    init_logging();
    let args = Args::parse();
    let device = args.device.resolve()?;
    let dtype = args.dtype.unwrap_or(if device.is_cuda() {
        DType::Bf16
    } else {
        DType::F32
    });
    let path = match &args.model {
        Some(p) => p.clone(),
        None => sft_examples::default_model()?,
    };
    let mut prompts = args.prompt.clone();
    if let Some(file) = &args.prompts {
        prompts.extend(sft_examples::read_prompts_jsonl(file)?);
    }
    anyhow::ensure!(
        !prompts.is_empty(),
        "no prompts: pass --prompt TEXT or --prompts FILE.jsonl"
    );

    let tokenizer = ChatTokenizer::from_path(&path)
        .with_context(|| format!("loading the tokenizer of {}", path.display()))?;
    let loaded = sft_llama::load_model_for_inference(&path, device, dtype.kind())?;
    tracing::info!(model = %path.display(), ?device, %dtype, params = loaded.model.config().num_parameters(), "model loaded");

    let mut add_special_tokens = true;
    if args.chat {
        let template = ChatTemplate::resolve(&args.template, &tokenizer)?;
        add_special_tokens = template.adds_special_tokens();
        for p in &mut prompts {
            *p = template.render_prompt(&[Message::user(p.as_str())])?;
        }
    }
    let mut eos = loaded.model.config().eos_token_ids.clone();
    eos.extend(tokenizer.eos().map(|t| t.id));
    if args.ignore_eos {
        eos = vec![u32::MAX];
    }
    let sampling = if args.temperature > 0.0 {
        Sampling::Sample {
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: args.top_k,
        }
    } else {
        Sampling::Greedy
    };
    let cfg = GenerationConfig {
        sampling,
        seed: args.seed,
        eos_token_ids: eos,
        stop_strings: args.stop.clone(),
        batch_size: args.batch_size,
        continuous: args.continuous,
        top_logits: 5,
        progress: true,
        ..GenerationConfig::greedy(args.max_new_tokens)
    };
    let codec = TokenizerCodec {
        tokenizer: &tokenizer,
        add_special_tokens,
    };
    let out = sft_llama::generate(&loaded.model, &codec, &prompts, &cfg)?;

    for (prompt, g) in prompts.iter().zip(&out.generations) {
        if args.json {
            let line = serde_json::json!({
                "prompt": prompt, "prompt_ids": g.prompt_ids, "generated_ids": g.generated_ids, "text": g.text,
                "finish_reason": g.finish_reason, "top5_ids": g.top_ids, "top5_logits": g.top_logits,
            });
            println!("{line}");
        } else {
            println!("{prompt}{}\n---", g.text);
        }
    }
    let s = &out.stats;
    eprintln!(
        "{} prompts, {} prompt tokens, {} generated tokens in {:.2} s ({:.1} tok/s; prefill {:.2} s, decode {:.2} s)",
        s.prompts, s.prompt_tokens, s.generated_tokens, s.total_secs, s.tokens_per_sec, s.prefill_secs, s.decode_secs
    );
    if let Some(file) = &args.stats {
        let doc = serde_json::json!({
            "model": path.display().to_string(), "device": format!("{device:?}"), "dtype": dtype.to_string(),
            "batch_size": args.batch_size, "continuous": args.continuous, "max_new_tokens": args.max_new_tokens, "threads": tch::get_num_threads(), "stats": s,
        });
        std::fs::write(file, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(())
}
