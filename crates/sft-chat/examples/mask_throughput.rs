//! Render + tokenize + mask throughput on a ShareGPT-format file, one thread, per template.
//!
//! ```sh
//! cargo run --release -p sft-chat --example mask_throughput -- \
//!     ../shared/data/sharegpt/sharegpt_v3_sample_1011.json "$SFT_ASSETS/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
//! ```
//!
//! Prints one JSON object per template: conversations encoded, skipped (by error kind), tokens,
//! target tokens, seconds, tokens/s, and the same for plain `encode` of the rendered text.

use std::collections::BTreeMap;
use std::time::Instant;

use sft_chat::{drop_leading_assistant_turns, ChatError, ChatTemplate, ChatTokenizer};
use sft_record::{Message, Role};

/// This process's user+system CPU seconds (Linux `/proc/self/stat`), to report per-core
/// throughput on a shared machine; `None` elsewhere.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(data), Some(tok_path)) = (args.get(1), args.get(2)) else {
        return Err("usage: mask_throughput SHAREGPT.json TOKENIZER(.gguf|dir)".into());
    };
    let raw: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(data)?)?;
    let mut convs = Vec::new();
    for rec in raw.as_array().ok_or("expected a JSON array")? {
        let mut conv = Vec::new();
        for m in rec["conversations"]
            .as_array()
            .ok_or("record without conversations")?
        {
            let from = m["from"].as_str().unwrap_or_default();
            let role = Role::from_sharegpt(from).ok_or_else(|| format!("unknown role {from:?}"))?;
            conv.push(Message::new(role, m["value"].as_str().unwrap_or_default()));
        }
        convs.push(drop_leading_assistant_turns(&conv));
    }
    let t0 = Instant::now();
    let tok = ChatTokenizer::from_path(tok_path)?;
    eprintln!("tokenizer loaded in {:.2}s", t0.elapsed().as_secs_f64());
    for name in ["vicuna_v1.1", "chatml", "model"] {
        let template = ChatTemplate::resolve(name, &tok)?;
        let (mut ok, mut tokens, mut targets, mut bytes) = (0usize, 0usize, 0usize, 0usize);
        let mut skipped: BTreeMap<&str, usize> = BTreeMap::new();
        let mut texts = Vec::new();
        let start = Instant::now();
        let cpu_start = cpu_seconds();
        for conv in &convs {
            match template.encode_with_mask(&tok, conv) {
                Ok(enc) => {
                    ok += 1;
                    tokens += enc.ids.len();
                    targets += enc.n_target_tokens();
                    bytes += enc.text.len();
                    texts.push(enc.text);
                }
                Err(e) => {
                    let kind = match e {
                        ChatError::Conversation { .. } => "conversation",
                        ChatError::SpanNotFound { .. } => "span_not_found",
                        ChatError::AmbiguousBoundary { .. } => "ambiguous_boundary",
                        _ => "other",
                    };
                    *skipped.entry(kind).or_default() += 1;
                }
            }
        }
        let secs = start.elapsed().as_secs_f64();
        let cpu = cpu_start.zip(cpu_seconds()).map(|(a, b)| b - a);
        let plain = Instant::now();
        let mut plain_tokens = 0;
        for text in &texts {
            plain_tokens += tok.encode(text, template.adds_special_tokens())?.len();
        }
        let plain_secs = plain.elapsed().as_secs_f64();
        println!(
            "{}",
            serde_json::json!({
                "template": name, "conversations": convs.len(), "encoded": ok, "skipped": skipped,
                "tokens": tokens, "target_tokens": targets, "bytes": bytes, "seconds": secs,
                "tokens_per_s": tokens as f64 / secs,
                "cpu_seconds": cpu, "tokens_per_cpu_s": cpu.map(|c| tokens as f64 / c), "mb_per_s": bytes as f64 / secs / 1e6,
                "plain_encode_seconds": plain_secs, "plain_encode_tokens_per_s": plain_tokens as f64 / plain_secs,
            })
        );
    }
    Ok(())
}
