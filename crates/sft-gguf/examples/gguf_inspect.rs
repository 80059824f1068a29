//! Print a GGUF file's metadata and tensor directory; with `--dequantize`, time decoding every
//! tensor to f32 (one thread).
//!
//! ```sh
//! cargo run --release -p sft-gguf --example gguf_inspect -- "$SFT_ASSETS/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" --dequantize
//! ```

use std::collections::BTreeMap;
use std::time::Instant;

use sft_gguf::{gguf_to_hf_name, GgufFile, LlamaHparams, Value};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .ok_or("usage: gguf_inspect FILE.gguf [--dequantize]")?;
    let t0 = Instant::now();
    let file = GgufFile::open(path)?;
    println!(
        "{path}: GGUF v{}, {} metadata keys, {} tensors, alignment {}, opened in {:.3}s",
        file.version(),
        file.metadata().len(),
        file.tensors().len(),
        file.alignment(),
        t0.elapsed().as_secs_f64()
    );
    for (key, value) in file.metadata() {
        match value {
            Value::Array(items) if items.len() > 8 => println!("  {key} = {value}"),
            Value::String(s) if s.len() > 120 => println!(
                "  {key} = {:?}… ({} bytes)",
                &s[..s.char_indices().nth(100).map_or(s.len(), |(i, _)| i)],
                s.len()
            ),
            _ => println!("  {key} = {value}"),
        }
    }
    if let Ok(hp) = LlamaHparams::from_gguf(&file) {
        println!("HF config: {}", hp.to_hf_config());
    }
    let mut by_type: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for t in file.tensors() {
        let e = by_type.entry(t.ggml_type.to_string()).or_default();
        e.0 += 1;
        e.1 += t.n_elements();
        println!(
            "  {:<28} {:<6} {:>14} -> {}",
            t.name,
            t.ggml_type,
            format!("{:?}", t.shape()),
            gguf_to_hf_name(&t.name).unwrap_or_else(|| "?".into())
        );
    }
    println!("types: {by_type:?}");
    if args.iter().any(|a| a == "--dequantize") {
        let start = Instant::now();
        let mut n = 0u64;
        for t in file.tensors() {
            let values = file.dequantize_f32(&t.name)?;
            n += values.len() as u64;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{}",
            serde_json::json!({"dequantized_elements": n, "seconds": secs, "elements_per_s": n as f64 / secs, "f32_gb_per_s": n as f64 * 4.0 / secs / 1e9})
        );
    }
    Ok(())
}
