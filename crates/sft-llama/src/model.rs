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

/// Which hidden states [`Llama::forward_hidden`] collects, numbered as transformers'
/// `output_hidden_states`: `0` is the embeddings, `k` in `1..L` the output of block `k - 1`, and
/// `L` (= `num_hidden_layers`) the final-norm output of the last block (the input of `lm_head`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HiddenStates {
    /// None: [`ForwardOutput::hidden_states`] is empty.
    #[default]
    None,
    /// All `L + 1`, in order.
    All,
    /// These indices (each in `0..=L`), returned in the order given.
    Layers(Vec<usize>),
}

impl HiddenStates {
    fn wants(&self, index: usize) -> bool {
        match self {
            HiddenStates::None => false,
            HiddenStates::All => true,
            HiddenStates::Layers(ids) => ids.contains(&index),
        }
    }
}

/// The hidden states of one pass as a [`HiddenStates`] request asks for them.
struct Collector<'a> {
    request: &'a HiddenStates,
    /// Index `i` holds hidden state `i` once offered, if the request wants it.
    slots: Vec<Option<Tensor>>,
}

impl<'a> Collector<'a> {
    /// Checks the request against a model of `num_blocks` blocks.
    fn new(request: &'a HiddenStates, num_blocks: usize) -> Result<Self> {
        if let HiddenStates::Layers(ids) = request {
            if let Some(bad) = ids.iter().find(|&&i| i > num_blocks) {
                return Err(Error::Input(format!(
                    "hidden state {bad} requested, the model has {} (0..={num_blocks})",
                    num_blocks + 1
                )));
            }
        }
        Ok(Self {
            request,
            slots: (0..=num_blocks).map(|_| None).collect(),
        })
    }

    /// Keeps hidden state `index` if the request wants it.
    fn offer(&mut self, index: usize, x: &Tensor) {
        if self.request.wants(index) {
            self.slots[index] = Some(x.shallow_clone());
        }
    }

    /// The requested states, once every requested index has been offered (for
    /// [`HiddenStates::All`]: every index `0..=L`).
    fn finish(self) -> Vec<Tensor> {
        match self.request {
            HiddenStates::None => Vec::new(),
            HiddenStates::All => self.slots.into_iter().flatten().collect(),
            HiddenStates::Layers(ids) => ids
                .iter()
                .map(|&i| {
                    self.slots[i]
                        .as_ref()
                        .expect("every requested index is offered before finish")
                        .shallow_clone()
                })
                .collect(),
        }
    }
}

/// One block's cached keys and values, each `[B, num_key_value_heads, capacity, head_dim]`.
#[derive(Debug)]
struct LayerCache {
    keys: Tensor,
    values: Tensor,
}

impl LayerCache {
    /// Writes `k` and `v` (`[B, nkv, T, hd]`) at positions `past..past + T` and returns the keys
    /// and values of positions `0..past + T`.
    fn append(&mut self, past: i64, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.size()[2];
        self.keys.f_narrow(2, past, t)?.f_copy_(k)?;
        self.values.f_narrow(2, past, t)?.f_copy_(v)?;
        Ok((
            self.keys.f_narrow(2, 0, past + t)?,
            self.values.f_narrow(2, 0, past + t)?,
        ))
    }
}

/// Keys and values of past positions for incremental decoding, one pair per block (indexed by
/// block, each block reads and writes only its own): `[B, num_key_value_heads, capacity,
/// head_dim]`, of which the first [`KvCache::len`] positions are filled.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
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
        let layers = (0..c.num_hidden_layers)
            .map(|_| {
                Ok(LayerCache {
                    keys: Tensor::f_zeros(shape, opts)?,
                    values: Tensor::f_zeros(shape, opts)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            layers,
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

    /// Copies positions `from..from + n` of row `src_row` of `src` (a cache of the same model)
    /// into row `row` at positions `at..at + n` (continuous batching: newly admitted prompts'
    /// prefill joins a running batch). The filled length is not changed.
    pub(crate) fn write_row(
        &mut self,
        row: i64,
        at: i64,
        src: &KvCache,
        src_row: i64,
        from: i64,
        n: i64,
    ) -> Result<()> {
        if src_row >= src.batch
            || row >= self.batch
            || src.layers.len() != self.layers.len()
            || from + n > src.len
            || at + n > self.capacity
        {
            return Err(Error::Input(format!(
                "cannot copy positions {from}..{} of row {src_row} of a {}-row cache of {} \
                 positions to row {row} at {at} of a {}-row cache of capacity {}",
                from + n,
                src.batch,
                src.len,
                self.batch,
                self.capacity
            )));
        }
        for (dst, s) in self.layers.iter_mut().zip(&src.layers) {
            for (d, x) in [(&dst.keys, &s.keys), (&dst.values, &s.values)] {
                d.f_narrow(0, row, 1)?
                    .f_narrow(2, at, n)?
                    .f_copy_(&x.f_narrow(0, src_row, 1)?.f_narrow(2, from, n)?)?;
            }
        }
        Ok(())
    }

    /// Keeps only the rows `rows` (in that order) and frees the others: the batch becomes
    /// `rows.len()` (continuous batching shrinks to its running rows once no prompt is left to
    /// admit, so that each step computes only them).
    pub(crate) fn keep_rows(&mut self, rows: &[i64]) -> Result<()> {
        if rows.is_empty() || rows.iter().any(|&r| r < 0 || r >= self.batch) {
            return Err(Error::Input(format!(
                "cannot keep rows {rows:?} of a {}-row cache",
                self.batch
            )));
        }
        let device = self.layers.first().map_or(Device::Cpu, |l| l.keys.device());
        let index = Tensor::f_from_slice(rows)?.f_to_device(device)?;
        for l in &mut self.layers {
            l.keys = l.keys.f_index_select(0, &index)?;
            l.values = l.values.f_index_select(0, &index)?;
        }
        self.batch = rows.len() as i64;
        Ok(())
    }

    /// Moves positions `by..len` of every row to `0..len - by` and shortens the filled length by
    /// `by` (continuous batching frees the columns no running sequence needs any more).
    pub(crate) fn shift_left(&mut self, by: i64) -> Result<()> {
        if by <= 0 || by > self.len {
            return Ok(());
        }
        let keep = self.len - by;
        for l in &mut self.layers {
            // The source and destination overlap: copy through a temporary.
            let k = l.keys.f_narrow(2, by, keep)?.f_contiguous()?;
            let v = l.values.f_narrow(2, by, keep)?.f_contiguous()?;
            l.keys.f_narrow(2, 0, keep)?.f_copy_(&k)?;
            l.values.f_narrow(2, 0, keep)?.f_copy_(&v)?;
        }
        self.len = keep;
        Ok(())
    }

    /// Sets the filled length to `len` (at most the capacity); positions not written since hold
    /// stale values, which the caller masks out.
    pub(crate) fn set_len(&mut self, len: i64) -> Result<()> {
        if len > self.capacity || len < 0 {
            return Err(Error::Input(format!(
                "KV cache length {len} outside 0..={}",
                self.capacity
            )));
        }
        self.len = len;
        Ok(())
    }

    /// Checks that `t` new positions of a `[b, t]` input fit, for a model of `num_blocks` blocks.
    fn check(&self, b: i64, t: i64, num_blocks: usize) -> Result<()> {
        if self.layers.len() != num_blocks {
            return Err(Error::Input(format!(
                "KV cache has {} layers, the model {num_blocks}",
                self.layers.len()
            )));
        }
        if self.batch != b {
            return Err(Error::Input(format!(
                "KV cache is for batch {}, input has batch {b}",
                self.batch
            )));
        }
        let total = self.len + t;
        if total > self.capacity {
            return Err(Error::Input(format!(
                "KV cache holds {} positions, {total} needed",
                self.capacity
            )));
        }
        Ok(())
    }
}

/// What every block of one forward pass shares.
struct Pass {
    /// Batch size `B`.
    batch: i64,
    /// New positions `T`.
    len: i64,
    /// Cached positions before this pass.
    past: i64,
    /// RoPE tables `[B, 1, T, head_dim]` in the activation dtype.
    cos: Tensor,
    sin: Tensor,
    /// Bool `[B or 1, 1, T, past + T]`, `true` where a query may attend; `None` with `is_causal`
    /// or when nothing is masked (a single new token).
    mask: Option<Tensor>,
    /// Let SDPA apply the causal mask itself (no past, no explicit mask, `T > 1`).
    is_causal: bool,
    /// A pass without gradients (decoding, hidden states): it uses the stacked projections of
    /// [`Llama::fuse_projections`] where they exist (the stacked matrix does not carry
    /// gradients back to the parameters) and libtorch's fused RMSNorm for f32.
    fused: bool,
}

/// RMSNorm as transformers computes it: normalise in f32, cast back, then multiply by the weight.
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// The weight `p.weight` (`[hidden_size]`, initialised to ones).
    fn new(p: nn::Path, cfg: &LlamaConfig) -> Result<Self> {
        Ok(Self {
            weight: p.f_var("weight", &[cfg.hidden_size as i64], Init::Const(1.0))?,
            eps: cfg.rms_norm_eps,
        })
    }

    /// `fused`: a pass without gradients (decoding, hidden states), where an f32 input goes
    /// through libtorch's one-kernel `rms_norm`: the same f32 arithmetic in one pass over the
    /// row instead of five element-wise ops. Other dtypes keep transformers' order (cast back
    /// before the weight multiply), which the fused kernel does not follow.
    fn forward(&self, x: &Tensor, fused: bool) -> Result<Tensor> {
        let kind = x.kind();
        if fused && kind == Kind::Float && self.weight.kind() == Kind::Float {
            let h = self.weight.size()[0];
            return Ok(x.f_rms_norm([h].as_slice(), Some(&self.weight), self.eps)?);
        }
        let x32 = x.f_to_kind(Kind::Float)?;
        let var = x32
            .f_pow_tensor_scalar(2)?
            .f_mean_dim(-1, true, Kind::Float)?;
        let normed = x32
            .f_mul(&var.f_add_scalar(self.eps)?.f_rsqrt()?)?
            .f_to_kind(kind)?;
        Ok(self.weight.f_mul(&normed)?)
    }
}

/// The parameter init transformers uses for matrices.
const NORMAL: Init = Init::Randn {
    mean: 0.0,
    stdev: 0.02,
};

/// How an inference model's matrices (`[out, in]`, as HF stores them) lie in memory; chosen
/// by [`Llama::fuse_projections_as`]. Values, shapes and names are the same either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[out, in]` contiguous: `x · Wᵀ` is a GEMM with a transposed operand.
    RowMajor,
    /// A transposed view of `[in, out]` storage: `x · Wᵀ` reads that storage as it lies. MKL
    /// runs the decoding shapes (8 to 48 rows) 1.3 to 2.2 times faster this way
    /// (`docs/benchmarks.md`, "Weight layout").
    ColumnMajor,
}

impl WeightLayout {
    /// The layout measured faster for decoding on `device` in `kind`: column-major for f32 and
    /// bf16 on the CPU, row-major elsewhere (libtorch's CPU f16 matmul is 12× slower from
    /// column-major storage; cuBLAS was not measured to gain from it).
    pub fn for_device(device: Device, kind: Kind) -> Self {
        match (device, kind) {
            (Device::Cpu, Kind::Float | Kind::BFloat16) => WeightLayout::ColumnMajor,
            _ => WeightLayout::RowMajor,
        }
    }

    /// `w`'s values in this layout: `w` itself for row-major, else a transposed view of new
    /// `[in, out]` storage.
    fn arrange(self, w: Tensor) -> Result<Tensor> {
        Ok(match self {
            WeightLayout::RowMajor => w,
            WeightLayout::ColumnMajor => w.f_transpose(0, 1)?.f_contiguous()?.f_transpose(0, 1)?,
        })
    }

    /// Gives `w` this layout in new storage (same values, shape and VarStore variable).
    fn apply(self, w: &mut Tensor) -> Result<()> {
        if self == WeightLayout::ColumnMajor {
            tch::no_grad(|| -> Result<()> {
                let arranged = self.arrange(w.shallow_clone())?;
                Ok(w.f_set_data(&arranged)?)
            })?;
        }
        Ok(())
    }
}

/// Weights stacked along the output dimension whose row blocks are the separate parameters
/// (`[a; b; …]`, each parameter a view of its rows): one matmul where there were several.
struct Stacked {
    weight: Tensor,
    /// Rows of each part, in order.
    rows: Vec<i64>,
}

impl Stacked {
    /// Stacks `parts` (each `[rows_i, in]`) into new storage and points every part at its rows
    /// of it (`set_data`, so the VarStore's variables, which share the parts' tensor objects,
    /// see the same memory: values, in-place updates, loading and saving are unchanged).
    fn new(parts: &mut [&mut Tensor], layout: WeightLayout) -> Result<Self> {
        tch::no_grad(|| {
            let weight = layout.arrange(Tensor::f_cat(
                &parts.iter().map(|p| &**p).collect::<Vec<_>>(),
                0,
            )?)?;
            let rows: Vec<i64> = parts.iter().map(|p| p.size()[0]).collect();
            let mut at = 0;
            for (p, &n) in parts.iter_mut().zip(&rows) {
                p.f_set_data(&weight.f_narrow(0, at, n)?)?;
                at += n;
            }
            Ok(Self { weight, rows })
        })
    }

    /// Whether `first` (the first part) still lives in the stacked weight: not once the
    /// parameters were moved or converted (`VarStore::set_kind` / `set_device` give each its
    /// own storage again).
    fn live(&self, first: &Tensor) -> bool {
        first.data_ptr() == self.weight.data_ptr()
    }

    /// `x · weightᵀ` split back into the parts' outputs (views of one result, last dimension).
    fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let y = x.f_linear::<Tensor>(&self.weight, None)?;
        let mut at = 0;
        self.rows
            .iter()
            .map(|&n| {
                let part = y.f_narrow(-1, at, n);
                at += n;
                Ok(part?)
            })
            .collect()
    }
}

/// Grouped-query self-attention with RoPE (`self_attn.{q,k,v,o}_proj`).
struct Attention {
    q_proj: Tensor,
    k_proj: Tensor,
    v_proj: Tensor,
    o_proj: Tensor,
    /// `[q_proj; k_proj; v_proj]` after [`Llama::fuse_projections`].
    qkv: Option<Stacked>,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    fn new(p: nn::Path, cfg: &LlamaConfig, init: Init) -> Result<Self> {
        let h = cfg.hidden_size as i64;
        let q = (cfg.num_attention_heads * cfg.head_dim) as i64;
        let kv = (cfg.num_key_value_heads * cfg.head_dim) as i64;
        Ok(Self {
            q_proj: (&p / "q_proj").f_var("weight", &[q, h], init)?,
            k_proj: (&p / "k_proj").f_var("weight", &[kv, h], init)?,
            v_proj: (&p / "v_proj").f_var("weight", &[kv, h], init)?,
            o_proj: (&p / "o_proj").f_var("weight", &[h, q], init)?,
            qkv: None,
            num_heads: cfg.num_attention_heads as i64,
            num_kv_heads: cfg.num_key_value_heads as i64,
            head_dim: cfg.head_dim as i64,
        })
    }

    /// `[B, T, H]` → `[B, T, H]`; appends this pass's keys and values to `cache` when given.
    fn forward(&self, x: &Tensor, pass: &Pass, cache: Option<&mut LayerCache>) -> Result<Tensor> {
        let (b, t) = (pass.batch, pass.len);
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |y: Tensor, n: i64| -> Result<Tensor> {
            Ok(y.f_view([b, t, n, hd])?.f_transpose(1, 2)?)
        };
        let stacked = self
            .qkv
            .as_ref()
            .filter(|s| pass.fused && s.live(&self.q_proj));
        let (q, k, v) = match stacked {
            Some(s) => {
                let mut parts = s.forward(x)?.into_iter();
                let mut next = || parts.next().expect("three parts");
                (heads(next(), nh)?, heads(next(), nkv)?, heads(next(), nkv)?)
            }
            None => {
                let proj = |w: &Tensor| x.f_linear::<Tensor>(w, None);
                (
                    heads(proj(&self.q_proj)?, nh)?,
                    heads(proj(&self.k_proj)?, nkv)?,
                    heads(proj(&self.v_proj)?, nkv)?,
                )
            }
        };
        let q = apply_rope(&q, &pass.cos, &pass.sin)?;
        let k = apply_rope(&k, &pass.cos, &pass.sin)?;
        let (k, v) = match cache {
            Some(c) => c.append(pass.past, &k, &v)?,
            None => (k, v),
        };
        let y = Tensor::f_scaled_dot_product_attention(
            &q,
            &k,
            &v,
            pass.mask.as_ref(),
            0.0,
            pass.is_causal,
            None,
            nkv != nh,
        )?;
        Ok(y.f_transpose(1, 2)?
            .f_reshape([b, t, nh * hd])?
            .f_linear::<Tensor>(&self.o_proj, None)?)
    }
}

/// The SwiGLU feed-forward (`mlp.{gate,up,down}_proj`).
struct Mlp {
    gate_proj: Tensor,
    up_proj: Tensor,
    down_proj: Tensor,
    /// `[gate_proj; up_proj]` after [`Llama::fuse_projections`].
    gate_up: Option<Stacked>,
}

impl Mlp {
    fn new(p: nn::Path, cfg: &LlamaConfig, init: Init) -> Result<Self> {
        let (h, i) = (cfg.hidden_size as i64, cfg.intermediate_size as i64);
        Ok(Self {
            gate_proj: (&p / "gate_proj").f_var("weight", &[i, h], init)?,
            up_proj: (&p / "up_proj").f_var("weight", &[i, h], init)?,
            down_proj: (&p / "down_proj").f_var("weight", &[h, i], init)?,
            gate_up: None,
        })
    }

    /// `down(silu(gate(x)) * up(x))`; with `fused`, gate and up in one matmul.
    fn forward(&self, x: &Tensor, fused: bool) -> Result<Tensor> {
        let stacked = self
            .gate_up
            .as_ref()
            .filter(|s| fused && s.live(&self.gate_proj));
        let (gate, up) = match stacked {
            Some(s) => {
                let mut parts = s.forward(x)?.into_iter();
                let gate = parts.next().expect("two parts");
                (gate, parts.next().expect("two parts"))
            }
            None => (
                x.f_linear::<Tensor>(&self.gate_proj, None)?,
                x.f_linear::<Tensor>(&self.up_proj, None)?,
            ),
        };
        Ok(gate
            .f_silu()?
            .f_mul(&up)?
            .f_linear::<Tensor>(&self.down_proj, None)?)
    }
}

/// One decoder layer (`model.layers.{i}`): pre-norm attention and pre-norm MLP, each residual.
struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    fn new(p: nn::Path, cfg: &LlamaConfig, init: Init) -> Result<Self> {
        // Creation order = transformers' parameter order, so a seeded random init draws the same.
        Ok(Self {
            input_layernorm: RmsNorm::new(&p / "input_layernorm", cfg)?,
            self_attn: Attention::new(&p / "self_attn", cfg, init)?,
            post_attention_layernorm: RmsNorm::new(&p / "post_attention_layernorm", cfg)?,
            mlp: Mlp::new(&p / "mlp", cfg, init)?,
        })
    }

    fn forward(&self, x: &Tensor, pass: &Pass, cache: Option<&mut LayerCache>) -> Result<Tensor> {
        let h = self.input_layernorm.forward(x, pass.fused)?;
        let x = x.f_add(&self.self_attn.forward(&h, pass, cache)?)?;
        let h = self.post_attention_layernorm.forward(&x, pass.fused)?;
        Ok(x.f_add(&self.mlp.forward(&h, pass.fused)?)?)
    }
}

/// A LLaMA-architecture causal language model whose parameters live in a [`tch::nn::VarStore`]
/// under the Hugging Face names (`model.embed_tokens.weight`,
/// `model.layers.{i}.self_attn.q_proj.weight`, …, `lm_head.weight` when untied), so HF
/// safetensors checkpoints map onto it one to one.
pub struct Llama {
    cfg: LlamaConfig,
    embed_tokens: Tensor,
    blocks: Vec<Block>,
    norm: RmsNorm,
    /// The embedding matrix itself when embeddings are tied.
    lm_head: Tensor,
    /// RoPE inverse frequencies (f32, `[head_dim / 2]`), with scaling applied.
    inv_freq: Tensor,
}

/// The blocks of a [`Llama`] prepared for one batch ([`Llama::blocks`]).
pub struct Blocks<'a> {
    model: &'a Llama,
    pass: Pass,
}

impl Blocks<'_> {
    /// Number of blocks (`num_hidden_layers`).
    pub fn len(&self) -> usize {
        self.model.blocks.len()
    }

    /// Whether the model has no blocks (never, for a valid config).
    pub fn is_empty(&self) -> bool {
        self.model.blocks.is_empty()
    }

    /// Block `i` on its input `x` (`[B, T, H]`, the embeddings for block 0): its output, with
    /// gradients tracked unless the caller is under `no_grad`.
    pub fn forward(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        let block = self.model.blocks.get(i).ok_or_else(|| {
            Error::Input(format!(
                "block {i} of a model with {} blocks",
                self.model.blocks.len()
            ))
        })?;
        block.forward(x, &self.pass, None)
    }
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
    /// `[B, T, V]`.
    pub logits: Tensor,
    /// `[B, T, H]` tensors as the [`HiddenStates`] request asked for them (empty for
    /// [`HiddenStates::None`]; `num_hidden_layers + 1` for [`HiddenStates::All`]).
    pub hidden_states: Vec<Tensor>,
}

impl Llama {
    /// Create the parameters under `vs` with HF names and initialise them like transformers
    /// (normal(0, 0.02) for matrices, ones for norms). Load real weights afterwards with
    /// [`crate::load_safetensors`] or [`crate::load_gguf`].
    pub fn new(vs: &nn::Path, cfg: &LlamaConfig) -> Result<Self> {
        Self::with_matrix_init(vs, cfg, NORMAL)
    }

    /// The parameters for weights that are loaded right after: matrices start at zero instead
    /// of normal(0, 0.02). Drawing normal values for every parameter only to overwrite them cost
    /// 4% of a SmolLM2 generation benchmark's samples (its load), and grows with the model.
    pub(crate) fn for_loading(vs: &nn::Path, cfg: &LlamaConfig) -> Result<Self> {
        Self::with_matrix_init(vs, cfg, Init::Const(0.0))
    }

    fn with_matrix_init(vs: &nn::Path, cfg: &LlamaConfig, init: Init) -> Result<Self> {
        cfg.validate(None)?;
        let (h, v) = (cfg.hidden_size as i64, cfg.vocab_size as i64);
        let model = vs / "model";
        let embed_tokens = (&model / "embed_tokens").f_var("weight", &[v, h], init)?;
        let blocks = (0..cfg.num_hidden_layers)
            .map(|l| Block::new(&model / "layers" / l, cfg, init))
            .collect::<Result<_>>()?;
        let norm = RmsNorm::new(&model / "norm", cfg)?;
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.shallow_clone()
        } else {
            (vs / "lm_head").f_var("weight", &[v, h], init)?
        };
        let inv_freq = rope_inv_freq(cfg)?.f_to_device(vs.device())?;
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens,
            blocks,
            norm,
            lm_head,
            inv_freq,
        })
    }

    /// Stacks each block's `q_proj`, `k_proj`, `v_proj` weights into one matrix, and `gate_proj`
    /// with `up_proj`, so that decoding ([`Llama::forward_step`]) and [`Llama::hidden_states`]
    /// run one matmul where they ran three and two. Training passes keep the separate weights.
    ///
    /// The parameters keep their HF names, shapes and values: each becomes a view of its rows of
    /// the stacked matrix (no extra memory once the old storage is freed), so saving, loading
    /// and in-place updates through the VarStore see the same numbers. Converting or moving the
    /// VarStore afterwards (`set_kind`, `set_device`) gives every parameter its own storage
    /// again; the model then notices and uses the separate weights (call this again to stack
    /// them anew). Call it on models loaded for inference, after choosing dtype and device.
    ///
    /// The matrices also take the layout decoding is fastest with on the model's device and
    /// dtype ([`WeightLayout::for_device`]); [`Llama::fuse_projections_as`] chooses it.
    pub fn fuse_projections(&mut self) -> Result<()> {
        self.fuse_projections_as(WeightLayout::for_device(self.device(), self.kind()))
    }

    /// [`Llama::fuse_projections`] with every matrix (stacked, `o_proj`, `down_proj`, the LM
    /// head and so a tied embedding) in `layout`.
    pub fn fuse_projections_as(&mut self, layout: WeightLayout) -> Result<()> {
        for block in &mut self.blocks {
            let a = &mut block.self_attn;
            a.qkv = Some(Stacked::new(
                &mut [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj],
                layout,
            )?);
            layout.apply(&mut a.o_proj)?;
            let m = &mut block.mlp;
            m.gate_up = Some(Stacked::new(
                &mut [&mut m.gate_proj, &mut m.up_proj],
                layout,
            )?);
            layout.apply(&mut m.down_proj)?;
        }
        // A tied head shares the embedding's tensor: converting one converts both.
        layout.apply(&mut self.lm_head)?;
        Ok(())
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
                &HiddenStates::None,
                LogitsFor::All,
            )?
            .logits)
    }

    /// [`Llama::forward`] that also returns the hidden states `hidden` asks for (see
    /// [`HiddenStates`] for their numbering); the logits are the same bits as `forward`'s.
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        position_ids: Option<&Tensor>,
        attn_mask: Option<&Tensor>,
        hidden: &HiddenStates,
    ) -> Result<ForwardOutput> {
        self.run(
            input_ids,
            position_ids,
            attn_mask,
            None,
            hidden,
            LogitsFor::All,
        )
    }

    /// Only the hidden states `hidden` asks for (numbered as in [`HiddenStates`]), each
    /// `[B, T, H]`: the same values as [`Llama::forward_hidden`]'s, but the pass stops after
    /// the deepest requested state and never computes the LM head, so layer 15 of a 40-layer
    /// model costs 15 blocks and no `[B, T, V]` logits. Without gradients.
    pub fn hidden_states(
        &self,
        input_ids: &Tensor,
        position_ids: Option<&Tensor>,
        attn_mask: Option<&Tensor>,
        hidden: &HiddenStates,
    ) -> Result<Vec<Tensor>> {
        let n = self.blocks.len();
        let deepest = match hidden {
            HiddenStates::None => return Ok(Vec::new()),
            HiddenStates::All => n,
            HiddenStates::Layers(ids) => ids.iter().copied().max().unwrap_or(0),
        };
        let mut collect = Collector::new(hidden, n)?;
        tch::no_grad(|| {
            let pass = self.pass(input_ids, position_ids, attn_mask, None, true)?;
            let mut x = self.embed(input_ids)?;
            collect.offer(0, &x);
            for (i, block) in self.blocks.iter().enumerate().take(deepest) {
                x = block.forward(&x, &pass, None)?;
                if i + 1 < n {
                    collect.offer(i + 1, &x);
                }
            }
            if deepest == n {
                collect.offer(n, &self.norm.forward(&x, pass.fused)?);
            }
            Ok(collect.finish())
        })
    }

    /// The decoder's blocks for one batch, to run one at a time: what memory-lean training
    /// (activation checkpointing, a chunked loss) needs. The RoPE tables and the mask are built
    /// once here, as [`Llama::forward`] builds them, so
    /// `head(blocks.forward(L-1, … blocks.forward(0, embed(ids))))` is `forward(ids, …)` bit for
    /// bit. Arguments as in [`Llama::forward`].
    pub fn blocks(
        &self,
        input_ids: &Tensor,
        position_ids: Option<&Tensor>,
        attn_mask: Option<&Tensor>,
    ) -> Result<Blocks<'_>> {
        let pass = self.pass(input_ids, position_ids, attn_mask, None, false)?;
        Ok(Blocks { model: self, pass })
    }

    /// The token embeddings of `input_ids` (`[B, T]` int64) on the model's device: hidden
    /// state 0, the input of block 0.
    pub fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        Ok(Tensor::f_embedding(
            &self.embed_tokens,
            &input_ids.f_to_device(self.device())?,
            -1,
            false,
            false,
        )?)
    }

    /// The final norm and the LM head on the last block's output `[B, T, H]` (any `T`: the
    /// chunked loss calls it on slices of the positions): logits `[B, T, V]` in the model's
    /// dtype.
    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self
            .norm
            .forward(x, false)?
            .f_linear::<Tensor>(&self.lm_head, None)?)
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
                    &HiddenStates::None,
                    logits_for,
                )?
                .logits)
        })
    }

    /// Embedding → blocks (each with its slice of `cache`) → final norm → LM head, keeping the
    /// hidden states `hidden` asks for. (With [`LogitsFor::Last`] the last hidden state would be
    /// `[B, H]`; the public calls never combine the two.)
    fn run(
        &self,
        input_ids: &Tensor,
        position_ids: Option<&Tensor>,
        attn_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        hidden: &HiddenStates,
        logits_for: LogitsFor,
    ) -> Result<ForwardOutput> {
        // Only decoding passes a cache, and it runs without gradients (`forward_step`).
        let fused = cache.is_some();
        let pass = self.pass(input_ids, position_ids, attn_mask, cache.as_deref(), fused)?;
        let n = self.blocks.len();
        let mut hidden = Collector::new(hidden, n)?;
        let mut x = self.embed(input_ids)?;
        hidden.offer(0, &x);
        let (mut layer_caches, cache_len) = match cache {
            Some(KvCache { layers, len, .. }) => (Some(layers.iter_mut()), Some(len)),
            None => (None, None),
        };
        for (i, block) in self.blocks.iter().enumerate() {
            let layer_cache = layer_caches.as_mut().and_then(Iterator::next);
            x = block.forward(&x, &pass, layer_cache)?;
            if i + 1 < n {
                hidden.offer(i + 1, &x);
            }
        }
        if let Some(len) = cache_len {
            *len = pass.past + pass.len;
        }
        let x = match logits_for {
            LogitsFor::All => x,
            LogitsFor::Last => x.f_select(1, pass.len - 1)?,
        };
        let x = self.norm.forward(&x, pass.fused)?;
        hidden.offer(n, &x);
        let logits = x.f_linear::<Tensor>(&self.lm_head, None)?;
        Ok(ForwardOutput {
            logits,
            hidden_states: hidden.finish(),
        })
    }

    /// Checks the inputs and builds what every block shares: positions → RoPE tables, the mask.
    fn pass(
        &self,
        input_ids: &Tensor,
        position_ids: Option<&Tensor>,
        attn_mask: Option<&Tensor>,
        cache: Option<&KvCache>,
        fused: bool,
    ) -> Result<Pass> {
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
        let past = match cache {
            Some(c) => {
                c.check(b, t, self.blocks.len())?;
                c.len
            }
            None => 0,
        };
        let device = self.device();
        let positions = positions(position_ids, b, t, past, device)?;
        let mask = attention_mask(attn_mask, b, t, past, device)?;
        let is_causal = mask.is_none() && past == 0 && t > 1;
        let (cos, sin) = self.rope(&positions, self.kind())?;
        Ok(Pass {
            batch: b,
            len: t,
            past,
            cos,
            sin,
            mask,
            is_causal,
            fused,
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

/// Positions `[b, t]` int64 on `device`: the given ones (checked) or `past..past + t` per row.
fn positions(
    position_ids: Option<&Tensor>,
    b: i64,
    t: i64,
    past: i64,
    device: Device,
) -> Result<Tensor> {
    Ok(match position_ids {
        Some(p) => {
            if p.size() != [b, t] {
                return Err(Error::Input(format!(
                    "position_ids must be [{b}, {t}], got {:?}",
                    p.size()
                )));
            }
            p.f_to_device(device)?.f_to_kind(Kind::Int64)?
        }
        None => Tensor::f_arange_start(past, past + t, (Kind::Int64, device))?
            .f_unsqueeze(0)?
            .f_expand([b, t], false)?,
    })
}

/// The mask SDPA gets: the given one (checked, on `device`), a causal one over cached + new keys
/// when there is a past and several new tokens, or `None` (then SDPA's `is_causal` or nothing).
fn attention_mask(
    attn_mask: Option<&Tensor>,
    b: i64,
    t: i64,
    past: i64,
    device: Device,
) -> Result<Option<Tensor>> {
    let total = past + t;
    Ok(match attn_mask {
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
            let q = Tensor::f_arange_start(past, total, (Kind::Int64, device))?.f_unsqueeze(1)?;
            let k = Tensor::f_arange(total, (Kind::Int64, device))?.f_unsqueeze(0)?;
            Some(k.f_le_tensor(&q)?.f_view([1, 1, t, total])?)
        }
        None => None,
    })
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
