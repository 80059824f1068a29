//! The LLaMA decoder: embedding, `num_hidden_layers` × (RMSNorm → GQA attention with RoPE →
//! residual → RMSNorm → SwiGLU MLP → residual), final RMSNorm, LM head.
//!
//! Numerics follow transformers' `modeling_llama.py`: RMSNorm is computed in f32 and cast back
//! before the weight multiply; RoPE angles are computed in f32 from `position_ids` and cast to
//! the activation dtype; attention goes through libtorch's `scaled_dot_product_attention` (flash
//! or cuDNN kernels on CUDA when the mask allows).

use tch::nn::{self, Init};
use tch::{Device, Kind, Tensor};

use crate::config::{LlamaConfig, RopeScaling};
use crate::error::{Error, Result};

/// Which positions [`Llama::forward_step`] computes logits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// Only the last input position (`[B, V]`); what decoding needs, and cheaper.
    Last,
    /// Every input position (`[B, T, V]`).
    All,
}

/// Keys and values of past positions for incremental decoding: per layer
/// `[B, num_key_value_heads, capacity, head_dim]`, of which the first [`KvCache::len`] positions
/// are filled.
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: i64,
    capacity: i64,
    batch: i64,
}

impl KvCache {
    /// An empty cache for `batch` sequences of up to `capacity` positions, in the model's dtype
    /// on the model's device.
    pub fn new(model: &Llama, batch: i64, capacity: i64) -> Result<Self> {
        let c = &model.cfg;
        let shape = [
            batch,
            c.num_key_value_heads as i64,
            capacity,
            c.head_dim as i64,
        ];
        let opts = (model.kind(), model.device());
        let mut keys = Vec::with_capacity(c.num_hidden_layers);
        let mut values = Vec::with_capacity(c.num_hidden_layers);
        for _ in 0..c.num_hidden_layers {
            keys.push(Tensor::f_zeros(shape, opts)?);
            values.push(Tensor::f_zeros(shape, opts)?);
        }
        Ok(Self {
            keys,
            values,
            len: 0,
            capacity,
            batch,
        })
    }

    /// Positions filled so far.
    pub fn len(&self) -> i64 {
        self.len
    }

    /// Whether no position is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache can hold.
    pub fn capacity(&self) -> i64 {
        self.capacity
    }

    /// Batch size the cache was made for.
    pub fn batch(&self) -> i64 {
        self.batch
    }

    /// Forget every position (the memory is kept).
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

struct Layer {
    input_layernorm: Tensor,
    q_proj: Tensor,
    k_proj: Tensor,
    v_proj: Tensor,
    o_proj: Tensor,
    post_attention_layernorm: Tensor,
    gate_proj: Tensor,
    up_proj: Tensor,
    down_proj: Tensor,
}

/// A LLaMA-architecture causal language model whose parameters live in a [`tch::nn::VarStore`]
/// under the Hugging Face names (`model.embed_tokens.weight`,
/// `model.layers.{i}.self_attn.q_proj.weight`, …, `lm_head.weight` when untied), so HF
/// safetensors checkpoints map onto it one to one.
pub struct Llama {
    cfg: LlamaConfig,
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// The embedding matrix itself when embeddings are tied.
    lm_head: Tensor,
    /// RoPE inverse frequencies (f32, `[head_dim / 2]`), with scaling applied.
    inv_freq: Tensor,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("cfg", &self.cfg)
            .field("device", &self.device())
            .field("kind", &self.kind())
            .finish()
    }
}

/// Everything a forward pass returns besides logits.
#[derive(Debug)]
pub struct ForwardOutput {
    /// `[B, T, V]` (or `[B, V]` with [`LogitsFor::Last`]).
    pub logits: Tensor,
    /// When asked for: `num_hidden_layers + 1` tensors `[B, T, H]` in transformers'
    /// `output_hidden_states` convention: the embeddings, the outputs of layers `0..L-1`, and the
    /// final-norm output of the last layer (the input of `lm_head`).
    pub hidden_states: Vec<Tensor>,
}

impl Llama {
    /// Create the parameters under `vs` with HF names and initialise them like transformers
    /// (normal(0, 0.02) for matrices, ones for norms). Load real weights afterwards with
    /// [`crate::load_safetensors`] or [`crate::load_gguf`].
    pub fn new(vs: &nn::Path, cfg: &LlamaConfig) -> Result<Self> {
        cfg.validate(None)?;
        let (h, i, v) = (
            cfg.hidden_size as i64,
            cfg.intermediate_size as i64,
            cfg.vocab_size as i64,
        );
        let q = (cfg.num_attention_heads * cfg.head_dim) as i64;
        let kv = (cfg.num_key_value_heads * cfg.head_dim) as i64;
        let normal = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let model = vs / "model";
        let embed_tokens = (&model / "embed_tokens").f_var("weight", &[v, h], normal)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = &model / "layers" / l;
            let attn = &p / "self_attn";
            let mlp = &p / "mlp";
            layers.push(Layer {
                input_layernorm: (&p / "input_layernorm").f_var(
                    "weight",
                    &[h],
                    Init::Const(1.0),
                )?,
                q_proj: (&attn / "q_proj").f_var("weight", &[q, h], normal)?,
                k_proj: (&attn / "k_proj").f_var("weight", &[kv, h], normal)?,
                v_proj: (&attn / "v_proj").f_var("weight", &[kv, h], normal)?,
                o_proj: (&attn / "o_proj").f_var("weight", &[h, q], normal)?,
                post_attention_layernorm: (&p / "post_attention_layernorm").f_var(
                    "weight",
                    &[h],
                    Init::Const(1.0),
                )?,
                gate_proj: (&mlp / "gate_proj").f_var("weight", &[i, h], normal)?,
                up_proj: (&mlp / "up_proj").f_var("weight", &[i, h], normal)?,
                down_proj: (&mlp / "down_proj").f_var("weight", &[h, i], normal)?,
            });
        }
        let norm = (&model / "norm").f_var("weight", &[h], Init::Const(1.0))?;
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.shallow_clone()
        } else {
            (vs / "lm_head").f_var("weight", &[v, h], normal)?
        };
        let inv_freq = rope_inv_freq(cfg)?.f_to_device(vs.device())?;
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq,
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Where the parameters are (follows `VarStore::set_device`).
    pub fn device(&self) -> Device {
        self.embed_tokens.device()
    }

    /// The parameters' dtype (follows `VarStore::set_kind`).
    pub fn kind(&self) -> Kind {
        self.embed_tokens.kind()
    }

    /// Logits `[B, T, V]` for training and scoring.
    ///
    /// * `input_ids`: `[B, T]` int64.
    /// * `position_ids`: `[B, T]` int64; `None` means `0..T` for every row. With packing, pass
    ///   positions that restart at each sample.
    /// * `attn_mask`: bool `[B, 1, T, T]` (or broadcastable), `true` where a query may attend to a
    ///   key; `None` means plain causal attention. With packing, pass a block-diagonal causal mask.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        position_ids: Option<&Tensor>,
        attn_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        Ok(self
            .run(
                input_ids,
                position_ids,
                attn_mask,
                None,
                false,
                LogitsFor::All,
            )?
            .logits)
    }

    /// [`Llama::forward`] that also returns every layer's hidden states (see [`ForwardOutput`]).
    pub fn forward_with_hidden_states(
        &self,
        input_ids: &Tensor,
        position_ids: Option<&Tensor>,
        attn_mask: Option<&Tensor>,
    ) -> Result<ForwardOutput> {
        self.run(
            input_ids,
            position_ids,
            attn_mask,
            None,
            true,
            LogitsFor::All,
        )
    }

    /// One incremental step for generation, without gradients: appends the keys and values of
    /// `input_ids` (`[B, T]`) to `cache` and returns logits for the new positions.
    ///
    /// * `position_ids`: `[B, T]`; `None` means `cache.len()..cache.len() + T`.
    /// * `attn_mask`: bool `[B, 1, T, cache.len() + T]` over all keys (cached and new); `None`
    ///   means causal over everything (no padding).
    pub fn forward_step(
        &self,
        input_ids: &Tensor,
        position_ids: Option<&Tensor>,
        attn_mask: Option<&Tensor>,
        cache: &mut KvCache,
        logits_for: LogitsFor,
    ) -> Result<Tensor> {
        tch::no_grad(|| {
            Ok(self
                .run(
                    input_ids,
                    position_ids,
                    attn_mask,
                    Some(cache),
                    false,
                    logits_for,
                )?
                .logits)
        })
    }

    fn run(
        &self,
        input_ids: &Tensor,
        position_ids: Option<&Tensor>,
        attn_mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        want_hidden: bool,
        logits_for: LogitsFor,
    ) -> Result<ForwardOutput> {
        let (b, t) = match input_ids.size().as_slice() {
            &[b, t] if t > 0 => (b, t),
            other => {
                return Err(Error::Input(format!(
                    "input_ids must be [B, T] with T > 0, got {other:?}"
                )))
            }
        };
        if input_ids.kind() != Kind::Int64 {
            return Err(Error::Input(format!(
                "input_ids must be int64, got {:?}",
                input_ids.kind()
            )));
        }
        let past = cache.as_ref().map_or(0, |c| c.len);
        let total = past + t;
        if let Some(c) = cache.as_ref() {
            if c.batch != b {
                return Err(Error::Input(format!(
                    "KV cache is for batch {}, input has batch {b}",
                    c.batch
                )));
            }
            if total > c.capacity {
                return Err(Error::Input(format!(
                    "KV cache holds {} positions, {total} needed",
                    c.capacity
                )));
            }
        }
        let device = self.device();
        let positions = match position_ids {
            Some(p) => {
                if p.size() != [b, t] {
                    return Err(Error::Input(format!(
                        "position_ids must be [{b}, {t}], got {:?}",
                        p.size()
                    )));
                }
                p.f_to_device(device)?.f_to_kind(Kind::Int64)?
            }
            None => Tensor::f_arange_start(past, total, (Kind::Int64, device))?
                .f_unsqueeze(0)?
                .f_expand([b, t], false)?,
        };
        let mask = match attn_mask {
            Some(m) => {
                let s = m.size();
                let ok = s.len() == 4
                    && (s[0] == b || s[0] == 1)
                    && (s[1] == 1)
                    && s[2] == t
                    && s[3] == total;
                if !ok {
                    return Err(Error::Input(format!(
                        "attn_mask must be bool [{b}, 1, {t}, {total}], got {s:?}"
                    )));
                }
                if m.kind() != Kind::Bool {
                    return Err(Error::Input(format!(
                        "attn_mask must be bool, got {:?}",
                        m.kind()
                    )));
                }
                Some(m.f_to_device(device)?)
            }
            // Plain causal attention over cached + new keys: SDPA's `is_causal` aligns the mask
            // top-left, which is only right when there is no past.
            None if past > 0 && t > 1 => {
                let q =
                    Tensor::f_arange_start(past, total, (Kind::Int64, device))?.f_unsqueeze(1)?;
                let k = Tensor::f_arange(total, (Kind::Int64, device))?.f_unsqueeze(0)?;
                Some(k.f_le_tensor(&q)?.f_view([1, 1, t, total])?)
            }
            None => None,
        };
        let is_causal = mask.is_none() && past == 0 && t > 1;

        let kind = self.kind();
        let (cos, sin) = self.rope(&positions, kind)?;
        let mut x = Tensor::f_embedding(
            &self.embed_tokens,
            &input_ids.f_to_device(device)?,
            -1,
            false,
            false,
        )?;
        let mut hidden = Vec::new();
        if want_hidden {
            hidden.push(x.shallow_clone());
        }
        let (nh, nkv, hd) = (
            self.cfg.num_attention_heads as i64,
            self.cfg.num_key_value_heads as i64,
            self.cfg.head_dim as i64,
        );
        let eps = self.cfg.rms_norm_eps;
        let n_layers = self.layers.len();
        for (li, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.input_layernorm, eps)?;
            let q = h
                .f_linear::<Tensor>(&layer.q_proj, None)?
                .f_view([b, t, nh, hd])?
                .f_transpose(1, 2)?;
            let k = h
                .f_linear::<Tensor>(&layer.k_proj, None)?
                .f_view([b, t, nkv, hd])?
                .f_transpose(1, 2)?;
            let v = h
                .f_linear::<Tensor>(&layer.v_proj, None)?
                .f_view([b, t, nkv, hd])?
                .f_transpose(1, 2)?;
            let q = apply_rope(&q, &cos, &sin)?;
            let k = apply_rope(&k, &cos, &sin)?;
            let (k, v) = match cache.as_deref_mut() {
                Some(c) => {
                    c.keys[li].f_narrow(2, past, t)?.f_copy_(&k)?;
                    c.values[li].f_narrow(2, past, t)?.f_copy_(&v)?;
                    (
                        c.keys[li].f_narrow(2, 0, total)?,
                        c.values[li].f_narrow(2, 0, total)?,
                    )
                }
                None => (k, v),
            };
            let attn = Tensor::f_scaled_dot_product_attention(
                &q,
                &k,
                &v,
                mask.as_ref(),
                0.0,
                is_causal,
                None,
                nkv != nh,
            )?;
            let attn = attn
                .f_transpose(1, 2)?
                .f_reshape([b, t, nh * hd])?
                .f_linear::<Tensor>(&layer.o_proj, None)?;
            x = x.f_add(&attn)?;
            let h = rms_norm(&x, &layer.post_attention_layernorm, eps)?;
            let gate = h.f_linear::<Tensor>(&layer.gate_proj, None)?.f_silu()?;
            let up = h.f_linear::<Tensor>(&layer.up_proj, None)?;
            let mlp = gate
                .f_mul(&up)?
                .f_linear::<Tensor>(&layer.down_proj, None)?;
            x = x.f_add(&mlp)?;
            if want_hidden && li + 1 < n_layers {
                hidden.push(x.shallow_clone());
            }
        }
        if let Some(c) = cache {
            c.len = total;
        }
        let x = match logits_for {
            LogitsFor::All => x,
            LogitsFor::Last => x.f_select(1, t - 1)?,
        };
        let x = rms_norm(&x, &self.norm, eps)?;
        if want_hidden {
            hidden.push(x.shallow_clone());
        }
        let logits = x.f_linear::<Tensor>(&self.lm_head, None)?;
        Ok(ForwardOutput {
            logits,
            hidden_states: hidden,
        })
    }

    /// cos and sin `[B, 1, T, head_dim]` in `kind`, computed in f32 like transformers.
    fn rope(&self, positions: &Tensor, kind: Kind) -> Result<(Tensor, Tensor)> {
        let inv = self.inv_freq.f_to_device(positions.device())?;
        let freqs = positions
            .f_to_kind(Kind::Float)?
            .f_unsqueeze(-1)?
            .f_mul(&inv)?;
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
        let cos = emb.f_cos()?.f_to_kind(kind)?.f_unsqueeze(1)?;
        let sin = emb.f_sin()?.f_to_kind(kind)?.f_unsqueeze(1)?;
        Ok((cos, sin))
    }
}

/// RMSNorm as transformers computes it: normalise in f32, cast back, then multiply by the weight.
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let kind = x.kind();
    let x32 = x.f_to_kind(Kind::Float)?;
    let var = x32
        .f_pow_tensor_scalar(2)?
        .f_mean_dim(-1, true, Kind::Float)?;
    let normed = x32
        .f_mul(&var.f_add_scalar(eps)?.f_rsqrt()?)?
        .f_to_kind(kind)?;
    Ok(weight.f_mul(&normed)?)
}

/// `x * cos + rotate_half(x) * sin`, with `rotate_half(x) = cat(-x2, x1)`.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.size()[3] / 2;
    let x1 = x.f_narrow(3, 0, half)?;
    let x2 = x.f_narrow(3, half, half)?;
    let rotated = Tensor::f_cat(&[&x2.f_neg()?, &x1], 3)?;
    Ok(x.f_mul(cos)?.f_add(&rotated.f_mul(sin)?)?)
}

/// RoPE inverse frequencies `[head_dim / 2]` in f32 on the CPU, scaled as the config says;
/// the same arithmetic as transformers' `modeling_rope_utils.py`.
pub fn rope_inv_freq(cfg: &LlamaConfig) -> Result<Tensor> {
    let dim = cfg.head_dim as i64;
    let exponents = Tensor::f_arange_start_step(0, dim, 2, (Kind::Int64, Device::Cpu))?
        .f_to_kind(Kind::Float)?
        .f_div_scalar(dim)?;
    let inv = Tensor::f_pow_scalar(cfg.rope_theta, &exponents)?.f_reciprocal()?;
    Ok(match cfg.rope_scaling {
        None => inv,
        Some(RopeScaling::Linear { factor }) => inv.f_div_scalar(factor)?,
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        }) => {
            let low_freq_wavelen = old / low_freq_factor;
            let high_freq_wavelen = old / high_freq_factor;
            let scalar = |v: f64| Tensor::f_full([] as [i64; 0], v, (Kind::Float, Device::Cpu));
            let wavelen = scalar(2.0 * std::f64::consts::PI)?.f_div(&inv)?;
            let llama = inv
                .f_div_scalar(factor)?
                .f_where_self(&wavelen.f_gt(low_freq_wavelen)?, &inv)?;
            let smooth = scalar(old)?
                .f_div(&wavelen)?
                .f_sub_scalar(low_freq_factor)?
                .f_div_scalar(high_freq_factor - low_freq_factor)?;
            let smoothed = smooth
                .f_neg()?
                .f_add_scalar(1.0)?
                .f_mul(&llama)?
                .f_div_scalar(factor)?
                .f_add(&smooth.f_mul(&llama)?)?;
            let is_medium = wavelen
                .f_lt(high_freq_wavelen)?
                .f_logical_not()?
                .f_logical_and(&wavelen.f_gt(low_freq_wavelen)?.f_logical_not()?)?;
            smoothed.f_where_self(&is_medium, &llama)?
        }
    })
}
