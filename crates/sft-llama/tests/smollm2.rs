//! SmolLM2-135M-Instruct from the real Q4_1 GGUF (`$SFT_ASSETS`, fetched by `cargo xtask setup`):
//! greedy continuations and last-position top-5 agree with transformers, which dequantizes the
//! same file (`fixtures/models/make_smollm2_reference.py` → `smollm2-reference.json`).

mod common;

use common::{models_dir, smollm2_gguf};
use sft_llama::{
    generate, generate_ids, load_model, GenerationConfig, ModelSource, TokenizerCodec,
};
use tch::{Device, Kind};

fn reference() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(models_dir().join("smollm2-reference.json")).unwrap(),
    )
    .unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn greedy_continuations_match_transformers_token_for_token() {
    let path = smollm2_gguf();
    // CI runs on 2 shared cores: one intra-op thread avoids OpenMP spin-waiting under load
    // (measured 210 s with the default vs 40 s with one thread on a loaded machine).
    tch::set_num_threads(1);
    let t = std::time::Instant::now();
    let loaded = load_model(&path, Device::Cpu, Kind::Float).unwrap();
    eprintln!(
        "loaded {} in {:.1} s",
        path.display(),
        t.elapsed().as_secs_f64()
    );
    assert_eq!(loaded.source, ModelSource::Gguf(path.clone()));
    let cfg = loaded.model.config();
    // The configuration alone, without the weights, is the one the model was built from.
    assert_eq!(&sft_llama::model_config(&path).unwrap(), cfg);
    assert_eq!(
        (
            cfg.hidden_size,
            cfg.num_hidden_layers,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.vocab_size
        ),
        (576, 30, 9, 3, 49152)
    );
    assert!(cfg.tie_word_embeddings);

    let r = reference();
    let max_new = r["max_new_tokens"].as_u64().unwrap() as usize;
    let cases = r["cases"].as_array().unwrap();
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["prompt_ids"])).collect();
    // No EOS stopping: transformers generated exactly `max_new` tokens (min_new_tokens).
    let gen = GenerationConfig {
        eos_token_ids: vec![u32::MAX],
        top_logits: 5,
        ..GenerationConfig::greedy(max_new)
    };
    let check = |what: &str, out: &sft_llama::GenerationOutput| {
        eprintln!("{what}: {:?}", out.stats);
        for (c, g) in cases.iter().zip(&out.generations) {
            let what = format!(
                "{what}, prompt {:?} (min margin {})",
                c["prompt"], c["min_margin"]
            );
            assert_eq!(g.generated_ids, ids(&c["generated_ids"]), "{what}");
            assert_eq!(g.top_ids, ids(&c["top5_ids"]), "{what}");
            for (a, b) in g
                .top_logits
                .iter()
                .zip(c["top5_logits"].as_array().unwrap())
            {
                let b = b.as_f64().unwrap() as f32;
                assert!((a - b).abs() < 2e-3, "{what}: top-5 logit {a} vs {b}");
            }
        }
    };
    // Token ids one prompt at a time.
    check(
        "ids, batch 1",
        &generate_ids(
            &loaded.model,
            &prompts,
            &GenerationConfig {
                batch_size: 1,
                ..gen.clone()
            },
            None,
        )
        .unwrap(),
    );
    // Text through sft-chat's GGUF tokenizer, all prompts in one left-padded batch: the same
    // prompt ids, the same continuations, the same decoded text as transformers.
    let tok = sft_chat::ChatTokenizer::from_gguf_path(&path).unwrap();
    let codec = TokenizerCodec {
        tokenizer: &tok,
        add_special_tokens: false,
    };
    let texts: Vec<&str> = cases
        .iter()
        .map(|c| c["rendered"].as_str().unwrap())
        .collect();
    let out = generate(
        &loaded.model,
        &codec,
        &texts,
        &GenerationConfig {
            batch_size: cases.len(),
            ..gen
        },
    )
    .unwrap();
    for (c, g) in cases.iter().zip(&out.generations) {
        assert_eq!(
            g.prompt_ids,
            ids(&c["prompt_ids"]),
            "tokenization of {:?}",
            c["rendered"]
        );
        assert_eq!(g.text, c["text"].as_str().unwrap());
    }
    check("text, batch 6", &out);
}
