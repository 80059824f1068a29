//! Generation on a tiny fixture model: batching and padding do not change results, EOS and
//! stop strings end sequences, sampling is seeded and batch-independent.

mod common;

use common::tiny;
use sft_llama::{
    generate, generate_ids, FinishReason, GenerationConfig, KvCache, LogitsFor, Sampling, TextCodec,
};
use tch::{Kind, Tensor};

/// One character per token: id `i` is `ALPHABET[i % 32]`, so decoding is trivial to predict.
struct CharCodec;
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz .,;!?";

impl TextCodec for CharCodec {
    fn encode(&self, text: &str) -> Result<Vec<u32>, sft_chat::ChatError> {
        text.bytes()
            .map(|b| {
                ALPHABET
                    .iter()
                    .position(|&a| a == b)
                    .map(|p| p as u32)
                    .ok_or_else(|| sft_chat::ChatError::Tokenizer(format!("no token for {b}")))
            })
            .collect()
    }
    fn decode(&self, ids: &[u32]) -> Result<String, sft_chat::ChatError> {
        Ok(ids
            .iter()
            .map(|&i| ALPHABET[i as usize % 32] as char)
            .collect())
    }
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![5, 17, 3, 40, 41, 9, 70],
        vec![11, 2],
        vec![60, 61, 62, 63],
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
        vec![88],
    ]
}

/// Greedy decoding by hand with the full forward (no cache, no padding): the ground truth.
fn greedy_by_hand(model: &sft_llama::Llama, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut ids: Vec<i64> = prompt.iter().map(|&x| x as i64).collect();
    let mut out = Vec::new();
    for _ in 0..n {
        let t = Tensor::from_slice(&ids).unsqueeze(0);
        let logits = model.forward(&t, None, None).unwrap();
        let next = logits.get(0).get(-1).argmax(-1, false).int64_value(&[]);
        out.push(next as u32);
        ids.push(next);
    }
    out
}

fn no_eos(n: usize) -> GenerationConfig {
    GenerationConfig {
        eos_token_ids: vec![u32::MAX],
        ..GenerationConfig::greedy(n)
    }
}

#[test]
fn batched_padded_greedy_equals_unbatched_full_forward() {
    let (_vs, model, _) = tiny("tiny-llama-gqa", Kind::Float);
    let ps = prompts();
    for batch_size in [1, 2, 5] {
        let cfg = GenerationConfig {
            batch_size,
            top_logits: 5,
            ..no_eos(10)
        };
        let out = generate_ids(&model, &ps, &cfg, None).unwrap();
        assert_eq!(out.stats.generated_tokens, 50);
        for (p, g) in ps.iter().zip(&out.generations) {
            assert_eq!(&g.prompt_ids, p);
            assert_eq!(
                g.generated_ids,
                greedy_by_hand(&model, p, 10),
                "batch {batch_size}, prompt {p:?}"
            );
            assert_eq!(g.finish_reason, FinishReason::Length);
            assert_eq!(g.top_ids.len(), 5);
            assert_eq!(g.top_ids[0], g.generated_ids[0]);
            assert!(g.top_logits.windows(2).all(|w| w[0] >= w[1]));
        }
    }
}

#[test]
fn top_logits_are_the_last_prompt_positions() {
    let (_vs, model, _) = tiny("tiny-llama-llama3", Kind::Float);
    let p = prompts()[0].clone();
    let cfg = GenerationConfig {
        top_logits: 3,
        ..no_eos(1)
    };
    let g = &generate_ids(&model, std::slice::from_ref(&p), &cfg, None)
        .unwrap()
        .generations[0];
    let ids = Tensor::from_slice(&p.iter().map(|&x| x as i64).collect::<Vec<_>>()).unsqueeze(0);
    let last = model.forward(&ids, None, None).unwrap().get(0).get(-1);
    let (vals, idx) = last.topk(3, -1, true, true);
    assert_eq!(
        g.top_ids,
        Vec::<i64>::try_from(&idx)
            .unwrap()
            .iter()
            .map(|&x| x as u32)
            .collect::<Vec<_>>()
    );
    let vals = Vec::<f32>::try_from(&vals).unwrap();
    for (a, b) in g.top_logits.iter().zip(vals) {
        assert!((a - b).abs() < 1e-5);
    }
}

#[test]
fn eos_ends_a_sequence_and_is_kept() {
    let (_vs, model, _) = tiny("tiny-llama-gqa", Kind::Float);
    let p = prompts()[0].clone();
    let free = greedy_by_hand(&model, &p, 8);
    // Make the third generated token the end-of-sequence token.
    let eos = free[2];
    let first = free.iter().position(|&t| t == eos).unwrap();
    let cfg = GenerationConfig {
        eos_token_ids: vec![eos],
        ..GenerationConfig::greedy(8)
    };
    let out = generate_ids(&model, &[p, prompts()[1].clone()], &cfg, None).unwrap();
    let g = &out.generations[0];
    assert_eq!(g.generated_ids, free[..=first].to_vec());
    assert_eq!(g.finish_reason, FinishReason::Eos);
}

#[test]
fn stop_strings_cut_the_text() {
    let (_vs, model, _) = tiny("tiny-llama-gqa", Kind::Float);
    let codec = CharCodec;
    let prompt = "hello world";
    let free = generate(&model, &codec, &[prompt], &no_eos(12)).unwrap();
    let text = free.generations[0].text.clone();
    assert_eq!(text.len(), 12);
    // Stop at the two characters generated at positions 4 and 5.
    let stop = text[4..6].to_string();
    let at = text.find(&stop).unwrap();
    let cfg = GenerationConfig {
        stop_strings: vec![stop.clone()],
        ..no_eos(12)
    };
    let out = generate(&model, &codec, &[prompt], &cfg).unwrap();
    let g = &out.generations[0];
    assert_eq!(g.finish_reason, FinishReason::Stop);
    assert_eq!(g.text, text[..at]);
    assert_eq!(
        g.generated_ids.len(),
        at + 2,
        "generation stops at the token completing {stop:?}"
    );
    // Stop strings need a codec.
    assert!(generate_ids(&model, &[vec![1]], &cfg, None).is_err());
}

#[test]
fn sampling_is_seeded_and_independent_of_batching() {
    let (_vs, model, _) = tiny("tiny-llama-linear", Kind::Float);
    let ps = prompts();
    let cfg = |seed, batch_size| GenerationConfig {
        batch_size,
        ..GenerationConfig {
            eos_token_ids: vec![u32::MAX],
            ..GenerationConfig::sampled(16, 1.0, 0.9, seed)
        }
    };
    let a = generate_ids(&model, &ps, &cfg(7, 1), None).unwrap();
    let b = generate_ids(&model, &ps, &cfg(7, 5), None).unwrap();
    let c = generate_ids(&model, &ps, &cfg(8, 5), None).unwrap();
    let ids = |o: &sft_llama::GenerationOutput| {
        o.generations
            .iter()
            .map(|g| g.generated_ids.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&a), ids(&b), "same seed, different batch size");
    assert_ne!(ids(&a), ids(&c), "different seeds");
    // Sampling is not greedy decoding at temperature 1...
    let greedy = generate_ids(&model, &ps, &no_eos(16), None).unwrap();
    assert_ne!(ids(&a), ids(&greedy));
    // ...but a vanishing nucleus or top_k = 1 is.
    let tiny_p = GenerationConfig {
        sampling: Sampling::Sample {
            temperature: 1.0,
            top_p: 1e-6,
            top_k: None,
        },
        ..cfg(3, 5)
    };
    let top1 = GenerationConfig {
        sampling: Sampling::Sample {
            temperature: 5.0,
            top_p: 1.0,
            top_k: Some(1),
        },
        ..cfg(3, 5)
    };
    assert_eq!(
        ids(&generate_ids(&model, &ps, &tiny_p, None).unwrap()),
        ids(&greedy)
    );
    assert_eq!(
        ids(&generate_ids(&model, &ps, &top1, None).unwrap()),
        ids(&greedy)
    );
}

#[test]
fn sampling_follows_the_distribution() {
    // With a single decode step, token frequencies over many seeds approach softmax(logits / T).
    let (_vs, model, _) = tiny("tiny-llama-gqa", Kind::Float);
    let p = vec![3u32, 14, 15];
    let t = 2.0;
    let logits = model
        .forward(
            &Tensor::from_slice(&[3i64, 14, 15]).unsqueeze(0),
            None,
            None,
        )
        .unwrap()
        .get(0)
        .get(-1);
    let probs = Vec::<f32>::try_from(&(logits / t).softmax(-1, Kind::Float)).unwrap();
    let n = 400;
    let ps: Vec<Vec<u32>> = (0..n).map(|_| p.clone()).collect();
    let cfg = GenerationConfig {
        batch_size: 100,
        ..GenerationConfig::sampled(1, t, 1.0, 11)
    };
    let out = generate_ids(&model, &ps, &cfg, None).unwrap();
    let mut counts = vec![0usize; probs.len()];
    for g in &out.generations {
        counts[g.generated_ids[0] as usize] += 1;
    }
    let distinct = counts.iter().filter(|&&c| c > 0).count();
    assert!(distinct > 10, "sampling collapsed onto {distinct} tokens");
    let best = probs
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0;
    let freq = counts[best] as f32 / n as f32;
    assert!(
        (freq - probs[best]).abs() < 0.06,
        "most likely token drawn {freq}, probability {}",
        probs[best]
    );
}

#[test]
fn invalid_requests_are_errors() {
    let (_vs, model, _) = tiny("tiny-llama-gqa", Kind::Float);
    let e = generate_ids(&model, &[vec![]], &no_eos(2), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("prompt 0 is empty"), "{e}");
    let e = generate_ids(&model, &[vec![1], vec![96]], &no_eos(2), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("prompt 1 has token id 96"), "{e}");
    let bad = GenerationConfig::sampled(2, 0.0, 0.9, 0);
    assert!(generate_ids(&model, &[vec![1]], &bad, None)
        .unwrap_err()
        .to_string()
        .contains("temperature"));
    let mut cache = KvCache::new(&model, 1, 4).unwrap();
    let ids = Tensor::from_slice(&[1i64, 2]).unsqueeze(0);
    let _ = model
        .forward_step(&ids, None, None, &mut cache, LogitsFor::Last)
        .unwrap();
    let e = model
        .forward_step(&ids.repeat([2, 1]), None, None, &mut cache, LogitsFor::Last)
        .unwrap_err()
        .to_string();
    assert!(e.contains("batch 1"), "{e}");
}

/// More prompts than slots, of different lengths, ended at different steps by an EOS token: with
/// continuous batching every slot takes the next prompt as soon as its sequence ends, and every
/// continuation is still the unbatched full-forward one. Batch size 1 runs more steps than the
/// cache holds, so the front of the cache is dropped on the way; once no prompt is left, the
/// batch shrinks to its running rows (4 → 2, 6 → 2, then 2 → 1 among these sizes).
#[test]
fn continuous_batching_equals_unbatched_full_forward() {
    let (_vs, model, _) = tiny("tiny-llama-gqa", Kind::Float);
    let mut ps = prompts();
    ps.extend([
        vec![3, 3, 3],
        vec![70, 71, 72, 73, 74, 75],
        vec![9],
        vec![20, 40, 60, 80],
    ]);
    let n = 12;
    let free: Vec<Vec<u32>> = ps.iter().map(|p| greedy_by_hand(&model, p, n)).collect();
    // The EOS: the token that ends the most continuations early.
    let mut counts = std::collections::HashMap::new();
    for f in &free {
        let mut seen = std::collections::HashSet::new();
        for &t in &f[..6] {
            if seen.insert(t) {
                *counts.entry(t).or_insert(0) += 1;
            }
        }
    }
    let eos = *counts
        .iter()
        .max_by_key(|(t, c)| (**c, std::cmp::Reverse(**t)))
        .unwrap()
        .0;
    let expected: Vec<Vec<u32>> = free
        .iter()
        .map(|f| match f.iter().position(|&t| t == eos) {
            Some(i) => f[..=i].to_vec(),
            None => f.clone(),
        })
        .collect();
    assert!(
        expected.iter().filter(|e| e.len() < n).count() >= 3,
        "sequences end at different steps: {expected:?}"
    );
    for batch_size in [1, 2, 3, 4, 5, 6, 8] {
        let cfg = GenerationConfig {
            batch_size,
            continuous: true,
            eos_token_ids: vec![eos],
            top_logits: 3,
            ..GenerationConfig::greedy(n)
        };
        let out = generate_ids(&model, &ps, &cfg, None).unwrap();
        assert_eq!(out.generations.len(), ps.len());
        for ((p, g), want) in ps.iter().zip(&out.generations).zip(&expected) {
            assert_eq!(&g.prompt_ids, p);
            assert_eq!(&g.generated_ids, want, "batch {batch_size}, prompt {p:?}");
            let reason = if want.len() < n || want.last() == Some(&eos) {
                FinishReason::Eos
            } else {
                FinishReason::Length
            };
            assert_eq!(g.finish_reason, reason);
            assert_eq!(g.top_ids.len(), 3);
            assert_eq!(g.top_ids[0], g.generated_ids[0]);
        }
        assert_eq!(
            out.stats.generated_tokens,
            expected.iter().map(Vec::len).sum::<usize>()
        );
        assert_eq!(
            out.stats.prompt_tokens,
            ps.iter().map(Vec::len).sum::<usize>()
        );
    }
    // Sampling: each prompt's own stream, so continuous and fixed batches sample alike.
    let sampled = |continuous, batch_size| {
        let cfg = GenerationConfig {
            batch_size,
            continuous,
            eos_token_ids: vec![eos],
            ..GenerationConfig::sampled(n, 1.0, 0.9, 5)
        };
        generate_ids(&model, &ps, &cfg, None)
            .unwrap()
            .generations
            .into_iter()
            .map(|g| g.generated_ids)
            .collect::<Vec<_>>()
    };
    assert_eq!(sampled(true, 3), sampled(false, 1));
}
