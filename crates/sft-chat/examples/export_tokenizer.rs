//! Write a model's tokenizer (from a `.gguf`, HF directory or `tokenizer.json`) as an HF
//! tokenizer directory (`tokenizer.json` + `tokenizer_config.json`).
//!
//! ```sh
//! cargo run --release -p sft-chat --example export_tokenizer -- "$SFT_ASSETS/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" out/smollm2-tokenizer
//! ```

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [src, out] = args.as_slice() else {
        return Err("usage: export_tokenizer MODEL(.gguf|dir|tokenizer.json) OUT_DIR".into());
    };
    let tok = sft_chat::ChatTokenizer::from_path(src)?;
    tok.save_hf_dir(out)?;
    println!(
        "wrote {out}/tokenizer.json and {out}/tokenizer_config.json ({} tokens)",
        tok.vocab_size()
    );
    Ok(())
}
