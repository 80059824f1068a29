//! GGUF ↔ Hugging Face tensor names for LLaMA, and undoing llama.cpp's Q/K row permutation.
//!
//! llama.cpp's `convert_hf_to_gguf.py` permutes the rows of `q_proj` and `k_proj` so that RoPE can
//! rotate adjacent pairs (GPT-J style) instead of HF's two halves (GPT-NeoX style). A model written
//! against HF's `rotate_half` must apply [`unpermute_qk`] to `attn_q` (with `n_head`) and `attn_k`
//! (with `n_head_kv`) after dequantizing. It mirrors transformers'
//! `LlamaTensorProcessor._reverse_permute_weights` (`modeling_gguf_pytorch_utils.py`).

use crate::{GgufError, Result};

const BLOCK_SUFFIXES: &[(&str, &str)] = &[
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
    ("attn_norm.weight", "input_layernorm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
];

const GLOBAL: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// The HF LLaMA parameter name for a GGUF tensor name, e.g. `blk.3.ffn_up.weight` →
/// `model.layers.3.mlp.up_proj.weight`. `None` for names outside the LLaMA layout (such as
/// `rope_freqs.weight`).
pub fn gguf_to_hf_name(gguf: &str) -> Option<String> {
    if let Some(&(_, hf)) = GLOBAL.iter().find(|(g, _)| *g == gguf) {
        return Some(hf.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let &(_, hf) = BLOCK_SUFFIXES.iter().find(|(g, _)| *g == suffix)?;
    Some(format!("model.layers.{layer}.{hf}"))
}

/// The inverse of [`gguf_to_hf_name`].
pub fn hf_to_gguf_name(hf: &str) -> Option<String> {
    if let Some(&(g, _)) = GLOBAL.iter().find(|(_, h)| *h == hf) {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let &(g, _) = BLOCK_SUFFIXES.iter().find(|(_, h)| *h == suffix)?;
    Some(format!("blk.{layer}.{g}"))
}

/// Whether a GGUF tensor name is a Q or K projection that [`unpermute_qk`] must be applied to;
/// returns `Some(true)` for Q (use `n_head`), `Some(false)` for K (use `n_head_kv`).
pub fn qk_kind(gguf: &str) -> Option<bool> {
    if gguf.ends_with(".attn_q.weight") || gguf.ends_with(".attn_q.bias") {
        Some(true)
    } else if gguf.ends_with(".attn_k.weight") || gguf.ends_with(".attn_k.bias") {
        Some(false)
    } else {
        None
    }
}

/// Undo llama.cpp's Q/K permutation on a row-major `[rows, cols]` matrix (PyTorch order; use
/// `cols = 1` for a bias): within each of the `n_head` heads of `rows / n_head` rows, row
/// `2·i + t` moves to `t·(rows / n_head / 2) + i`.
///
/// `n_head` is the attention head count for Q and the key/value head count for K.
pub fn unpermute_qk<T: Copy>(
    data: &[T],
    n_head: usize,
    rows: usize,
    cols: usize,
) -> Result<Vec<T>> {
    let bad = || GgufError::BadPermuteShape {
        rows,
        cols,
        n_head,
        len: data.len(),
    };
    if n_head == 0 || rows % (2 * n_head) != 0 || rows.checked_mul(cols) != Some(data.len()) {
        return Err(bad());
    }
    let per_head = rows / n_head;
    let half = per_head / 2;
    let mut out = Vec::with_capacity(data.len());
    for h in 0..n_head {
        for t in 0..2 {
            for i in 0..half {
                let src = h * per_head + 2 * i + t;
                out.extend_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}

/// The permutation llama.cpp applies (inverse of [`unpermute_qk`]); used to write GGUF files and in tests.
pub fn permute_qk<T: Copy>(data: &[T], n_head: usize, rows: usize, cols: usize) -> Result<Vec<T>> {
    let bad = || GgufError::BadPermuteShape {
        rows,
        cols,
        n_head,
        len: data.len(),
    };
    if n_head == 0 || rows % (2 * n_head) != 0 || rows.checked_mul(cols) != Some(data.len()) {
        return Err(bad());
    }
    let per_head = rows / n_head;
    let half = per_head / 2;
    let mut out = Vec::with_capacity(data.len());
    for h in 0..n_head {
        for i in 0..half {
            for t in 0..2 {
                let src = h * per_head + t * half + i;
                out.extend_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for g in [
            "token_embd.weight",
            "output.weight",
            "output_norm.weight",
            "blk.0.attn_q.weight",
            "blk.29.ffn_down.weight",
            "blk.7.ffn_norm.weight",
        ] {
            let hf = gguf_to_hf_name(g).unwrap();
            assert_eq!(hf_to_gguf_name(&hf).as_deref(), Some(g));
        }
        assert_eq!(
            gguf_to_hf_name("blk.3.attn_k.weight").as_deref(),
            Some("model.layers.3.self_attn.k_proj.weight")
        );
        assert_eq!(
            gguf_to_hf_name("blk.3.attn_norm.weight").as_deref(),
            Some("model.layers.3.input_layernorm.weight")
        );
        assert_eq!(
            gguf_to_hf_name("output.weight").as_deref(),
            Some("lm_head.weight")
        );
        assert_eq!(gguf_to_hf_name("rope_freqs.weight"), None);
        assert_eq!(gguf_to_hf_name("blk.x.attn_q.weight"), None);
    }

    #[test]
    fn unpermute_matches_reshape_swapaxes() {
        // 2 heads × 4 rows (dim = 2), 3 columns: transformers reshapes to (n_head, dim, 2, cols)
        // and swaps axes 1 and 2, so within a head rows [0,1,2,3] come out as [0,2,1,3].
        let rows = 8;
        let cols = 3;
        let data: Vec<u32> = (0..(rows * cols) as u32).collect();
        let out = unpermute_qk(&data, 2, rows, cols).unwrap();
        let row_order: Vec<u32> = out.chunks(cols).map(|r| r[0] / cols as u32).collect();
        assert_eq!(row_order, vec![0, 2, 1, 3, 4, 6, 5, 7]);
        assert_eq!(permute_qk(&out, 2, rows, cols).unwrap(), data);
        assert!(unpermute_qk(&data, 3, rows, cols).is_err());
    }
}
