//! Forward-pass parity with transformers on tiny random checkpoints
//! (`fixtures/models/make_tiny_llama.py`), and the consistency of the cached, packed and padded
//! code paths with the plain forward.

mod common;

use common::{reference, rel_err, tiny};
use sft_llama::{HiddenStates, KvCache, LogitsFor};
use tch::{Device, Kind, Tensor};

const VARIANTS: [&str; 3] = ["tiny-llama-gqa", "tiny-llama-llama3", "tiny-llama-linear"];

#[test]
fn logits_and_hidden_states_match_transformers_in_f32() {
    for name in VARIANTS {
        let (_vs, model, dir) = tiny(name, Kind::Float);
        let r = reference(&dir);
        let out = model
            .forward_hidden(
                &r["input_ids"],
                Some(&r["position_ids"]),
                None,
                &HiddenStates::All,
            )
            .unwrap();
        let e = rel_err(&out.logits, &r["logits"]);
        assert!(e <= 1e-4, "{name}: logits relative error {e:e}");
        let n = model.config().num_hidden_layers + 1;
        assert_eq!(out.hidden_states.len(), n, "{name}: hidden state count");
        for (k, h) in out.hidden_states.iter().enumerate() {
            let e = rel_err(h, &r[&format!("hidden_states_{k}")]);
            assert!(e <= 1e-4, "{name}: hidden_states[{k}] relative error {e:e}");
        }
        // The plain forward is the same computation.
        let logits = model
            .forward(&r["input_ids"], Some(&r["position_ids"]), None)
            .unwrap();
        assert_eq!(rel_err(&logits, &out.logits), 0.0, "{name}");
    }
}

#[test]
fn hidden_state_requests_select_from_the_full_set() {
    let (_vs, model, dir) = tiny("tiny-llama-gqa", Kind::Float);
    let r = reference(&dir);
    let (ids, pos) = (&r["input_ids"], Some(&r["position_ids"]));
    let all = model
        .forward_hidden(ids, pos, None, &HiddenStates::All)
        .unwrap();
    let n = model.config().num_hidden_layers;
    assert!(n >= 2, "the fixture needs two blocks for this test");
    // Indices in transformers' numbering, in the order asked: the final-norm output (n), the
    // embeddings (0), block 0's output (1).
    let some = model
        .forward_hidden(ids, pos, None, &HiddenStates::Layers(vec![n, 0, 1]))
        .unwrap();
    assert_eq!(some.hidden_states.len(), 3);
    for (got, want) in some.hidden_states.iter().zip([n, 0, 1]) {
        assert!(got.equal(&all.hidden_states[want]), "hidden state {want}");
    }
    assert!(some.logits.equal(&all.logits));
    let none = model
        .forward_hidden(ids, pos, None, &HiddenStates::None)
        .unwrap();
    assert!(none.hidden_states.is_empty());
    assert!(none.logits.equal(&all.logits));
    let e = model
        .forward_hidden(ids, pos, None, &HiddenStates::Layers(vec![n + 1]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("hidden state {} requested", n + 1)),
        "{e}"
    );
}

#[test]
fn rope_scaling_changes_the_result() {
    // Guards the test above: with the scaling ignored, the llama3 fixture must not match.
    let (_vs, model, dir) = tiny("tiny-llama-llama3", Kind::Float);
    let mut cfg = model.config().clone();
    cfg.rope_scaling = None;
    let vs2 = tch::nn::VarStore::new(Device::Cpu);
    let plain = sft_llama::Llama::new(&vs2.root(), &cfg).unwrap();
    sft_llama::load_safetensors(&vs2, &dir).unwrap();
    let r = reference(&dir);
    let logits = plain
        .forward(&r["input_ids"], Some(&r["position_ids"]), None)
        .unwrap();
    assert!(rel_err(&logits, &r["logits"]) > 1e-3);
}

#[test]
fn kv_cache_steps_equal_the_full_forward() {
    for name in VARIANTS {
        let (_vs, model, dir) = tiny(name, Kind::Float);
        let ids = reference(&dir)["input_ids"].shallow_clone();
        let full = model.forward(&ids, None, None).unwrap();
        let mut cache = KvCache::new(&model, 2, 16).unwrap();
        // A 5-token prefill, a 3-token chunk, then single tokens.
        let mut got = vec![model
            .forward_step(&ids.narrow(1, 0, 5), None, None, &mut cache, LogitsFor::All)
            .unwrap()];
        got.push(
            model
                .forward_step(&ids.narrow(1, 5, 3), None, None, &mut cache, LogitsFor::All)
                .unwrap(),
        );
        for t in 8..12 {
            let last = model
                .forward_step(
                    &ids.narrow(1, t, 1),
                    None,
                    None,
                    &mut cache,
                    LogitsFor::Last,
                )
                .unwrap();
            got.push(last.unsqueeze(1));
        }
        assert_eq!(cache.len(), 12);
        let stepped = Tensor::cat(&got, 1);
        let e = rel_err(&stepped, &full);
        assert!(
            e <= 1e-5,
            "{name}: cached decoding differs from the full forward by {e:e}"
        );
    }
}

#[test]
fn packed_sequences_with_block_mask_equal_separate_forwards() {
    let (_vs, model, dir) = tiny("tiny-llama-gqa", Kind::Float);
    let ids = reference(&dir)["input_ids"].shallow_clone();
    let a = ids.get(0).narrow(0, 0, 7);
    let b = ids.get(1).narrow(0, 0, 5);
    let packed = Tensor::cat(&[&a, &b], 0).unsqueeze(0);
    let pos = Tensor::cat(
        &[
            Tensor::arange(7, (Kind::Int64, Device::Cpu)),
            Tensor::arange(5, (Kind::Int64, Device::Cpu)),
        ],
        0,
    )
    .unsqueeze(0);
    let seg = Tensor::cat(
        &[
            Tensor::zeros([7], (Kind::Int64, Device::Cpu)),
            Tensor::ones([5], (Kind::Int64, Device::Cpu)),
        ],
        0,
    );
    let same = seg.unsqueeze(1).eq_tensor(&seg.unsqueeze(0));
    let causal = Tensor::ones([12, 12], (Kind::Bool, Device::Cpu)).tril(0);
    let mask = same.logical_and(&causal).view([1, 1, 12, 12]);
    let out = model.forward(&packed, Some(&pos), Some(&mask)).unwrap();
    let la = model.forward(&a.unsqueeze(0), None, None).unwrap();
    let lb = model.forward(&b.unsqueeze(0), None, None).unwrap();
    assert!(rel_err(&out.narrow(1, 0, 7), &la) <= 1e-5);
    assert!(rel_err(&out.narrow(1, 7, 5), &lb) <= 1e-5);
    // Without the mask the second sample would see the first.
    let leaky = model.forward(&packed, Some(&pos), None).unwrap();
    assert!(rel_err(&leaky.narrow(1, 7, 5), &lb) > 1e-3);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let (_vs, model, _dir) = tiny("tiny-llama-gqa", Kind::Float);
    let ids = Tensor::zeros([1, 4], (Kind::Int64, Device::Cpu));
    let e = model
        .forward(&ids.to_kind(Kind::Float), None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("int64"), "{e}");
    let e = model
        .forward(&ids.view([4]), None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[B, T]"), "{e}");
    let bad_mask = Tensor::ones([1, 1, 4, 5], (Kind::Bool, Device::Cpu));
    let e = model
        .forward(&ids, None, Some(&bad_mask))
        .unwrap_err()
        .to_string();
    assert!(e.contains("attn_mask must be bool [1, 1, 4, 4]"), "{e}");
    let mut cache = KvCache::new(&model, 1, 3).unwrap();
    let e = model
        .forward_step(&ids, None, None, &mut cache, LogitsFor::Last)
        .unwrap_err()
        .to_string();
    assert!(e.contains("KV cache holds 3 positions"), "{e}");
    // A cache made for a model with another number of blocks.
    let mut cfg = model.config().clone();
    cfg.num_hidden_layers += 1;
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let deeper = sft_llama::Llama::new(&vs.root(), &cfg).unwrap();
    let mut cache = KvCache::new(&deeper, 1, 8).unwrap();
    let e = model
        .forward_step(&ids, None, None, &mut cache, LogitsFor::Last)
        .unwrap_err()
        .to_string();
    assert!(e.contains("KV cache has"), "{e}");
}

#[test]
fn bf16_and_f16_forward_stay_close_to_f32() {
    let (_vs, model32, dir) = tiny("tiny-llama-gqa", Kind::Float);
    let r = reference(&dir);
    let ref_logits = model32
        .forward(&r["input_ids"], Some(&r["position_ids"]), None)
        .unwrap();
    for kind in [Kind::BFloat16, Kind::Half] {
        let (_vs, model, _) = tiny("tiny-llama-gqa", kind);
        assert_eq!(model.kind(), kind);
        let logits = model
            .forward(&r["input_ids"], Some(&r["position_ids"]), None)
            .unwrap();
        assert_eq!(logits.kind(), kind);
        let e = rel_err(&logits, &ref_logits);
        assert!(e < 5e-2, "{kind:?}: relative error {e:e}");
    }
}

#[test]
fn gradients_reach_every_parameter() {
    let (vs, model, dir) = tiny("tiny-llama-gqa", Kind::Float);
    let ids = reference(&dir)["input_ids"].shallow_clone();
    let logits = model.forward(&ids, None, None).unwrap();
    let loss = logits.log_softmax(-1, Kind::Float).mean(Kind::Float).neg();
    loss.backward();
    for (name, v) in vs.variables() {
        let g = v.grad();
        assert!(
            g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
            "no gradient for {name}"
        );
    }
}

#[test]
fn hidden_states_alone_stop_at_the_deepest_request_with_the_same_values() {
    let (_vs, model, dir) = tiny("tiny-llama-gqa", Kind::Float);
    let r = reference(&dir);
    let (ids, pos) = (&r["input_ids"], Some(&r["position_ids"]));
    let all = model
        .forward_hidden(ids, pos, None, &HiddenStates::All)
        .unwrap();
    let n = model.config().num_hidden_layers;
    // Stopping early (0 and 1 need one block, no final norm, no head) and going to the end
    // (n is the final-norm output) give the full pass's bits.
    for request in [vec![1, 0], vec![0], vec![n, 1]] {
        let got = model
            .hidden_states(ids, pos, None, &HiddenStates::Layers(request.clone()))
            .unwrap();
        assert_eq!(got.len(), request.len());
        for (g, &want) in got.iter().zip(&request) {
            assert!(g.equal(&all.hidden_states[want]), "hidden state {want}");
        }
    }
    let every = model
        .hidden_states(ids, pos, None, &HiddenStates::All)
        .unwrap();
    assert_eq!(every.len(), n + 1);
    for (g, w) in every.iter().zip(&all.hidden_states) {
        assert!(g.equal(w));
    }
    assert!(model
        .hidden_states(ids, pos, None, &HiddenStates::None)
        .unwrap()
        .is_empty());
    let e = model
        .hidden_states(ids, pos, None, &HiddenStates::Layers(vec![n + 1]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("requested"), "{e}");
}
