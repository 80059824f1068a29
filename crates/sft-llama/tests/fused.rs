//! `Llama::fuse_projections`: stacked q/k/v and gate/up weights for decoding give the same
//! logits and tokens as the separate weights, keep every parameter's name, value and bytes,
//! follow in-place updates, step aside when the VarStore is converted, and leave training passes
//! (and their gradients) as they were; in both weight layouts (`WeightLayout`).

mod common;

use common::{reference, rel_err, tiny};
use sft_llama::{generate_ids, GenerationConfig, KvCache, LogitsFor, WeightLayout};
use tch::{Kind, Tensor};

const VARIANTS: [&str; 3] = ["tiny-llama-gqa", "tiny-llama-linear", "tiny-llama-llama3"];
const LAYOUTS: [WeightLayout; 2] = [WeightLayout::RowMajor, WeightLayout::ColumnMajor];

/// Prefill 5 positions, then single-token steps: every step's logits.
fn stepped_logits(model: &sft_llama::Llama, ids: &Tensor) -> Tensor {
    let t = ids.size()[1];
    let mut cache = KvCache::new(model, ids.size()[0], t).unwrap();
    let mut got = vec![model
        .forward_step(&ids.narrow(1, 0, 5), None, None, &mut cache, LogitsFor::All)
        .unwrap()];
    for i in 5..t {
        let step = model
            .forward_step(
                &ids.narrow(1, i, 1),
                None,
                None,
                &mut cache,
                LogitsFor::Last,
            )
            .unwrap();
        got.push(step.unsqueeze(1));
    }
    Tensor::cat(&got, 1)
}

fn snapshot(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn stacked_projections_decode_like_the_separate_ones() {
    for (name, layout) in VARIANTS
        .iter()
        .flat_map(|&n| LAYOUTS.iter().map(move |&l| (n, l)))
    {
        let (_vs, plain, dir) = tiny(name, Kind::Float);
        let (vs, mut fused, _) = tiny(name, Kind::Float);
        let before = snapshot(&vs);
        fused.fuse_projections_as(layout).unwrap();
        // Same names, shapes and values; the q/k/v (gate/up) parameters now share storage.
        let after = snapshot(&vs);
        assert_eq!(before.len(), after.len());
        for ((na, a), (nb, b)) in before.iter().zip(&after) {
            assert_eq!(na, nb);
            assert!(a.equal(b), "{name}: {na} changed");
        }
        let vars = vs.variables();
        let q = &vars["model.layers.0.self_attn.q_proj.weight"];
        let k = &vars["model.layers.0.self_attn.k_proj.weight"];
        let gate = &vars["model.layers.0.mlp.gate_proj.weight"];
        let up = &vars["model.layers.0.mlp.up_proj.weight"];
        let elem = 4; // f32
        let o = &vars["model.layers.0.self_attn.o_proj.weight"];
        let head = vars
            .get("lm_head.weight")
            .unwrap_or(&vars["model.embed_tokens.weight"]);
        // Where k_proj (up_proj) starts in the stack: after q_proj's rows, or after its columns
        // of the `[in, out]` storage; the single matrices are transposed views in column-major.
        let (k_at, up_at) = match layout {
            WeightLayout::RowMajor => (q.numel(), gate.numel()),
            WeightLayout::ColumnMajor => (q.size()[0] as usize, gate.size()[0] as usize),
        };
        let single_strides = |t: &Tensor| match layout {
            WeightLayout::RowMajor => vec![t.size()[1], 1],
            WeightLayout::ColumnMajor => vec![1, t.size()[0]],
        };
        assert_eq!(
            k.data_ptr() as usize - q.data_ptr() as usize,
            k_at * elem,
            "{name} {layout:?}: k_proj is not where the stack puts it"
        );
        assert_eq!(
            up.data_ptr() as usize - gate.data_ptr() as usize,
            up_at * elem
        );
        for t in [o, head] {
            assert_eq!(t.stride(), single_strides(t), "{name} {layout:?}");
        }

        let ids = reference(&dir)["input_ids"].shallow_clone();
        let e = rel_err(&stepped_logits(&fused, &ids), &stepped_logits(&plain, &ids));
        assert!(
            e <= 1e-6,
            "{name} {layout:?}: stacked decoding differs by {e:e}"
        );
        // Hidden states (also without gradients) too.
        let req = sft_llama::HiddenStates::All;
        let a = fused.hidden_states(&ids, None, None, &req).unwrap();
        let b = plain.hidden_states(&ids, None, None, &req).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!(
                rel_err(x, y) <= 1e-6,
                "{name} {layout:?}: hidden states differ"
            );
        }
        // Greedy tokens, batched.
        let prompts: Vec<Vec<u32>> =
            vec![vec![5, 17, 3, 40, 41], vec![11, 2], vec![60, 61, 62, 63]];
        let cfg = GenerationConfig {
            batch_size: 3,
            eos_token_ids: vec![u32::MAX],
            ..GenerationConfig::greedy(12)
        };
        let ga = generate_ids(&fused, &prompts, &cfg, None).unwrap();
        let gb = generate_ids(&plain, &prompts, &cfg, None).unwrap();
        for (x, y) in ga.generations.iter().zip(&gb.generations) {
            assert_eq!(x.generated_ids, y.generated_ids, "{name} {layout:?}");
        }
    }
}

/// Multiplies one v_proj and one up_proj by 1.5 in place, through the VarStore.
fn scale_in_place(vs: &tch::nn::VarStore) {
    let vars = vs.variables();
    tch::no_grad(|| {
        for n in [
            "model.layers.1.self_attn.v_proj.weight",
            "model.layers.0.mlp.up_proj.weight",
        ] {
            let mut t = vars[n].shallow_clone();
            let _ = t.g_mul_scalar_(1.5);
        }
    });
}

#[test]
fn in_place_updates_reach_the_stacked_weights_and_conversion_ends_the_sharing() {
    for layout in LAYOUTS {
        in_place_updates_and_conversion(layout);
    }
}

fn in_place_updates_and_conversion(layout: WeightLayout) {
    let (vs_plain, plain, dir) = tiny("tiny-llama-gqa", Kind::Float);
    let (mut vs, mut fused, _) = tiny("tiny-llama-gqa", Kind::Float);
    fused.fuse_projections_as(layout).unwrap();
    let ids = reference(&dir)["input_ids"].shallow_clone();
    // Change v_proj and up_proj in place in both (as an optimizer step or a load does).
    scale_in_place(&vs);
    scale_in_place(&vs_plain);
    let e = rel_err(&stepped_logits(&fused, &ids), &stepped_logits(&plain, &ids));
    assert!(
        e <= 1e-6,
        "an in-place update did not reach the stacked weights: {e:e}"
    );
    let changed = rel_err(&stepped_logits(&fused, &ids), &{
        let (_v, orig, _) = tiny("tiny-llama-gqa", Kind::Float);
        stepped_logits(&orig, &ids)
    });
    assert!(changed > 1e-3, "the update changed nothing ({changed:e})");

    // Converting the store gives every parameter its own storage: decoding must then use the
    // separate (converted) weights, not the stale f32 stack.
    vs.set_kind(Kind::Double);
    let (mut vs_plain64, plain64, _) = tiny("tiny-llama-gqa", Kind::Float);
    scale_in_place(&vs_plain64);
    vs_plain64.set_kind(Kind::Double);
    let a = stepped_logits(&fused, &ids);
    assert_eq!(a.kind(), Kind::Double);
    assert!(rel_err(&a, &stepped_logits(&plain64, &ids)) <= 1e-12);
    // Stacking again works on the converted store.
    fused.fuse_projections_as(layout).unwrap();
    assert!(
        rel_err(
            &stepped_logits(&fused, &ids),
            &stepped_logits(&plain64, &ids)
        ) <= 1e-12
    );
}

#[test]
fn training_passes_of_a_fused_model_keep_their_gradients() {
    for layout in LAYOUTS {
        gradients_kept(layout);
    }
}

fn gradients_kept(layout: WeightLayout) {
    let (vs_plain, plain, dir) = tiny("tiny-llama-gqa", Kind::Float);
    let (vs, mut fused, _) = tiny("tiny-llama-gqa", Kind::Float);
    fused.fuse_projections_as(layout).unwrap();
    let ids = reference(&dir)["input_ids"].shallow_clone();
    for (model, _) in [(&plain, &vs_plain), (&fused, &vs)] {
        let loss = model
            .forward(&ids, None, None)
            .unwrap()
            .log_softmax(-1, Kind::Float)
            .mean(Kind::Float)
            .neg();
        loss.backward();
    }
    let (a, b) = (vs.variables(), vs_plain.variables());
    for (name, v) in &a {
        let (g, h) = (v.grad(), b[name].grad());
        assert!(
            g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
            "no gradient for {name}"
        );
        assert!(
            rel_err(&g, &h) <= 1e-6,
            "{layout:?} {name}: gradient differs"
        );
    }
}

/// The variables themselves (not copies), sorted by name.
fn snapshot_vars(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn a_fused_model_saves_the_same_bytes() {
    for layout in LAYOUTS {
        let (vs_plain, _plain, _) = tiny("tiny-llama-gqa", Kind::Float);
        let (vs, mut fused, _) = tiny("tiny-llama-gqa", Kind::Float);
        fused.fuse_projections_as(layout).unwrap();
        let a = sft_llama::safetensors_bytes(&snapshot_vars(&vs), None).unwrap();
        let b = sft_llama::safetensors_bytes(&snapshot_vars(&vs_plain), None).unwrap();
        assert!(a == b, "{layout:?}: saved bytes differ after stacking");
    }
}

#[test]
fn the_cpu_decodes_with_column_major_weights() {
    use tch::Device::{Cpu, Cuda};
    for kind in [Kind::Float, Kind::BFloat16] {
        assert_eq!(
            WeightLayout::for_device(Cpu, kind),
            WeightLayout::ColumnMajor
        );
    }
    // libtorch's CPU f16 matmul is far slower from column-major storage.
    assert_eq!(
        WeightLayout::for_device(Cpu, Kind::Half),
        WeightLayout::RowMajor
    );
    for kind in [Kind::Float, Kind::BFloat16, Kind::Half] {
        assert_eq!(
            WeightLayout::for_device(Cuda(0), kind),
            WeightLayout::RowMajor
        );
    }
    let (vs, mut fused, _) = tiny("tiny-llama-gqa", Kind::Float);
    fused.fuse_projections().unwrap();
    let down = &vs.variables()["model.layers.0.mlp.down_proj.weight"];
    assert_eq!(down.stride(), vec![1, down.size()[0]]);
    // An f16 model keeps the row-major layout.
    let (vs16, mut m16, _) = tiny("tiny-llama-gqa", Kind::Half);
    m16.fuse_projections().unwrap();
    let down16 = &vs16.variables()["model.layers.0.mlp.down_proj.weight"];
    assert_eq!(down16.kind(), Kind::Half);
    assert_eq!(down16.stride(), vec![down16.size()[1], 1]);
}
