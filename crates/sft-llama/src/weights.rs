//! Moving weights between a [`tch::nn::VarStore`] and files: HF safetensors (single file or
//! sharded, load and save) and GGUF (load, dequantized).
//!
//! Loading copies into the variables that [`crate::Llama::new`] created, so the store's dtype
//! and device decide the result: call `VarStore::set_kind` before or after loading. Every
//! variable must be found with the right shape; tensors in the file that the model does not use
//! (e.g. old checkpoints' `rotary_emb.inv_freq`) are reported in [`LoadReport::unused`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::model::Llama;

/// What a load did.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Variables filled.
    pub loaded: usize,
    /// Tensors in the checkpoint the model has no variable for, sorted.
    pub unused: Vec<String>,
    /// The files read.
    pub files: Vec<PathBuf>,
}

/// The safetensors files of a checkpoint: `path` may be a `.safetensors` file, a
/// `model.safetensors.index.json`, or a directory holding either.
pub fn safetensors_files(path: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let path = path.as_ref();
    let index = if path.is_dir() {
        let single = path.join("model.safetensors");
        if single.is_file() {
            return Ok(vec![single]);
        }
        let index = path.join("model.safetensors.index.json");
        if !index.is_file() {
            return Err(Error::MissingTensor {
                path: path.to_path_buf(),
                name: "model.safetensors (or model.safetensors.index.json)".into(),
            });
        }
        index
    } else if path.to_string_lossy().ends_with(".index.json") {
        path.to_path_buf()
    } else {
        return Ok(vec![path.to_path_buf()]);
    };
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
    let parsed: Index = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: index.clone(),
        source,
    })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = parsed.weight_map.values().map(|f| dir.join(f)).collect();
    files.sort();
    files.dedup();
    Ok(files)
}

fn kind_of(dtype: safetensors::Dtype) -> Option<Kind> {
    use safetensors::Dtype as D;
    Some(match dtype {
        D::F32 => Kind::Float,
        D::F16 => Kind::Half,
        D::BF16 => Kind::BFloat16,
        D::F64 => Kind::Double,
        _ => return None,
    })
}

/// Fill every variable of `vs` from HF safetensors (see [`safetensors_files`] for `path`).
pub fn load_safetensors(vs: &VarStore, path: impl AsRef<Path>) -> Result<LoadReport> {
    let files = safetensors_files(path.as_ref())?;
    let mut vars = vs.variables();
    let mut report = LoadReport {
        files: files.clone(),
        ..Default::default()
    };
    for file in &files {
        let f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
        // SAFETY: the file is opened read-only and not modified while mapped (a checkpoint
        // rewritten underneath a running load is outside what we guard against).
        #[allow(unsafe_code)]
        let mmap = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(file, e))?;
        let st = safetensors::SafeTensors::deserialize(&mmap).map_err(|e| Error::Safetensors {
            path: file.clone(),
            message: e.to_string(),
        })?;
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        for name in names {
            let Some(var) = vars.remove(&name) else {
                report.unused.push(name);
                continue;
            };
            let view = st.tensor(&name).map_err(|e| Error::Safetensors {
                path: file.clone(),
                message: e.to_string(),
            })?;
            let kind = kind_of(view.dtype()).ok_or_else(|| Error::UnsupportedDtype {
                path: file.clone(),
                name: name.clone(),
                dtype: format!("{:?}", view.dtype()),
            })?;
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            if shape != var.size() {
                return Err(Error::ShapeMismatch {
                    path: file.clone(),
                    name,
                    expected: var.size(),
                    found: shape,
                });
            }
            let src = Tensor::f_from_data_size(view.data(), &shape, kind)?;
            copy_into(&var, &src)?;
            report.loaded += 1;
        }
    }
    if let Some(name) = vars.keys().min() {
        let path = if files.len() == 1 {
            files[0].clone()
        } else {
            path.as_ref().to_path_buf()
        };
        return Err(Error::MissingTensor {
            path,
            name: name.clone(),
        });
    }
    report.unused.sort();
    if !report.unused.is_empty() {
        tracing::warn!(unused = ?report.unused, "checkpoint tensors the model does not use");
    }
    tracing::info!(
        tensors = report.loaded,
        files = files.len(),
        "loaded safetensors"
    );
    Ok(report)
}

fn copy_into(var: &Tensor, src: &Tensor) -> Result<()> {
    tch::no_grad(|| -> Result<()> {
        let src = src.f_to_kind(var.kind())?;
        let mut dst = var.shallow_clone();
        dst.f_copy_(&src)?;
        Ok(())
    })
}

/// The dtype name HF configs use for a tch kind.
pub fn hf_dtype_name(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Float => "float32",
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        Kind::Double => "float64",
        _ => return None,
    })
}

/// The safetensors dtype for a tch kind, for the kinds checkpoints hold.
fn st_dtype(kind: Kind) -> Option<safetensors::Dtype> {
    Some(match kind {
        Kind::Float => safetensors::Dtype::F32,
        Kind::BFloat16 => safetensors::Dtype::BF16,
        Kind::Half => safetensors::Dtype::F16,
        Kind::Double => safetensors::Dtype::F64,
        Kind::Int64 => safetensors::Dtype::I64,
        _ => return None,
    })
}

/// Serialises named tensors to safetensors bytes: [`write_safetensors`] into memory. For
/// small files (tests, tokenizer-sized tensors); weights and optimizer state are streamed.
pub fn safetensors_bytes(
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    write_safetensors(&mut out, tensors, metadata)?;
    Ok(out)
}

/// Streams named tensors to `w` as a safetensors file and returns the bytes written. Each
/// tensor is detached, copied to the CPU and made contiguous only when its turn comes, so one
/// tensor's bytes are in host memory at a time (a 7B checkpoint does not need its 80 GB of
/// weights and moments in RAM at once). F32, BF16, F16, F64 and I64 are supported (I64 is for
/// optimizer step counters). `metadata` goes into the header; transformers expects
/// `{"format": "pt"}` on PyTorch weights, which [`save_safetensors`] writes.
///
/// The header is built and serialised by the `safetensors` crate ([`safetensors::tensor::Metadata`]),
/// with its order (descending dtype alignment, then name), so the bytes are those
/// `safetensors::serialize` produces. This is the one tensor → safetensors conversion in the
/// workspace: the trainer's checkpoints stream through it with their own atomic protocol.
pub fn write_safetensors(
    w: &mut dyn std::io::Write,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<u64> {
    let mut order: Vec<(safetensors::Dtype, &str, &Tensor)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let kind = t.kind();
        let dtype = st_dtype(kind).ok_or_else(|| {
            Error::config(
                None,
                format!("tensor {name}: cannot save kind {kind:?} as safetensors"),
            )
        })?;
        order.push((dtype, name.as_str(), t));
    }
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let mut infos = Vec::with_capacity(order.len());
    let mut offset = 0usize;
    for (dtype, name, t) in &order {
        let n = t.numel() * t.kind().elt_size_in_bytes();
        let shape = t.size().iter().map(|&d| d as usize).collect();
        infos.push((
            name.to_string(),
            safetensors::tensor::TensorInfo {
                dtype: *dtype,
                shape,
                data_offsets: (offset, offset + n),
            },
        ));
        offset += n;
    }
    let st_err = |message: String| Error::Safetensors {
        path: PathBuf::from("<stream>"),
        message,
    };
    let header =
        safetensors::tensor::Metadata::new(metadata, infos).map_err(|e| st_err(e.to_string()))?;
    let mut header = serde_json::to_vec(&header).map_err(|e| st_err(e.to_string()))?;
    header.resize(header.len().next_multiple_of(8), b' ');
    let io = |e: std::io::Error| Error::io(Path::new("<safetensors stream>"), e);
    w.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&header).map_err(io)?;
    for (_, _, t) in &order {
        let t = t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?;
        let numel = t.numel();
        let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut data, numel)?;
        w.write_all(&data).map_err(io)?;
    }
    Ok((8 + header.len() + offset) as u64)
}

/// The `{"format": "pt"}` header metadata transformers expects on PyTorch safetensors.
pub fn pt_metadata() -> HashMap<String, String> {
    HashMap::from([("format".to_string(), "pt".to_string())])
}

/// Write `dir/model.safetensors` (every variable of `vs` in its current dtype, with
/// `{"format": "pt"}` metadata) and `dir/config.json`, a checkpoint transformers'
/// `AutoModelForCausalLM.from_pretrained(dir)` loads unchanged. Tied embeddings are written once
/// (no `lm_head.weight`), as transformers does.
pub fn save_safetensors(
    vs: &VarStore,
    cfg: &LlamaConfig,
    dir: impl AsRef<Path>,
) -> Result<PathBuf> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut kinds = std::collections::BTreeSet::new();
    for (name, var) in &vars {
        match hf_dtype_name(var.kind()) {
            Some(k) => kinds.insert(k),
            None => {
                return Err(Error::UnsupportedDtype {
                    path: dir.to_path_buf(),
                    name: name.clone(),
                    dtype: format!("{:?}", var.kind()),
                })
            }
        };
    }
    let tensors: Vec<(String, Tensor)> = vars.into_iter().collect();
    let file = dir.join("model.safetensors");
    let mut w =
        std::io::BufWriter::new(std::fs::File::create(&file).map_err(|e| Error::io(&file, e))?);
    write_safetensors(&mut w, &tensors, Some(pt_metadata()))?;
    std::io::Write::flush(&mut w).map_err(|e| Error::io(&file, e))?;
    let dtype = if kinds.len() == 1 {
        kinds.first().copied()
    } else {
        None
    };
    cfg.write_hf(dir, dtype)?;
    tracing::info!(path = %file.display(), tensors = tensors.len(), "saved safetensors");
    Ok(file)
}

/// Fill every variable of `vs` from a GGUF file: tensors are dequantized (F32, F16, BF16, Q8_0,
/// Q4_0, Q4_1, Q4_K, Q5_K, Q6_K) through `sft-gguf`, renamed to HF names, and llama.cpp's row
/// permutation of `attn_q` / `attn_k` is undone so that HF's `rotate_half` RoPE applies.
pub fn load_gguf(
    vs: &VarStore,
    cfg: &LlamaConfig,
    gguf: &sft_gguf::GgufFile,
) -> Result<LoadReport> {
    let path = gguf.path().to_path_buf();
    let gerr = |source| Error::Gguf {
        path: path.clone(),
        source,
    };
    if gguf.has_tensor("rope_freqs.weight") {
        return Err(Error::config(
            Some(&path),
            "per-frequency RoPE factors (`rope_freqs.weight`, written for Llama 3.1 GGUFs) are not supported; \
             load the HF safetensors checkpoint instead",
        ));
    }
    let mut vars = vs.variables();
    let mut report = LoadReport {
        files: vec![path.clone()],
        ..Default::default()
    };
    let pb = progress_bar(gguf.tensors().len() as u64, "dequantizing GGUF");
    for info in gguf.tensors() {
        pb.inc(1);
        let Some(hf) = sft_gguf::gguf_to_hf_name(&info.name) else {
            report.unused.push(info.name.clone());
            continue;
        };
        let Some(var) = vars.remove(&hf) else {
            report.unused.push(info.name.clone());
            continue;
        };
        let shape: Vec<i64> = info.shape().iter().map(|&d| d as i64).collect();
        if shape != var.size() {
            return Err(Error::ShapeMismatch {
                path: path.clone(),
                name: format!("{} ({hf})", info.name),
                expected: var.size(),
                found: shape,
            });
        }
        let mut data = gguf.dequantize_f32(&info.name).map_err(gerr)?;
        if let Some(is_q) = sft_gguf::qk_kind(&info.name) {
            let n_head = if is_q {
                cfg.num_attention_heads
            } else {
                cfg.num_key_value_heads
            };
            let rows = shape[0] as usize;
            let cols = if shape.len() > 1 {
                shape[1] as usize
            } else {
                1
            };
            data = sft_gguf::unpermute_qk(&data, n_head, rows, cols).map_err(gerr)?;
        }
        let src = Tensor::f_from_slice(&data)?.f_view(shape.as_slice())?;
        copy_into(&var, &src)?;
        report.loaded += 1;
    }
    pb.finish_and_clear();
    if let Some(name) = vars.keys().min() {
        let gguf_name = sft_gguf::hf_to_gguf_name(name).unwrap_or_default();
        return Err(Error::MissingTensor {
            path,
            name: format!("{gguf_name} ({name})"),
        });
    }
    if !report.unused.is_empty() {
        tracing::warn!(unused = ?report.unused, "GGUF tensors the model does not use");
    }
    tracing::info!(tensors = report.loaded, "loaded GGUF");
    Ok(report)
}

pub(crate) fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_message(what.to_string());
    pb
}

/// Where a model came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// An HF directory (`config.json` + safetensors).
    HfDir(PathBuf),
    /// A GGUF file.
    Gguf(PathBuf),
}

/// A model together with the store that owns its parameters.
pub struct LoadedModel {
    /// Owns the parameters (HF names); save it with [`save_safetensors`], train it with `sft-train`.
    pub vs: VarStore,
    /// The model.
    pub model: Llama,
    /// What was loaded.
    pub source: ModelSource,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("model", &self.model)
            .field("source", &self.source)
            .finish()
    }
}

/// The configuration of the model at `path` (a `.gguf` file, or an HF directory or a file in
/// one), read without loading any weights: what [`load_model`] would build. For checks that
/// must fail before anything heavy starts (e.g. a hidden-state layer out of range).
pub fn model_config(path: impl AsRef<Path>) -> Result<LlamaConfig> {
    let path = path.as_ref();
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    }
    if is_gguf(path) {
        let gguf = sft_gguf::GgufFile::open(path).map_err(|source| Error::Gguf {
            path: path.to_path_buf(),
            source,
        })?;
        LlamaConfig::from_gguf(&gguf)
    } else {
        LlamaConfig::from_hf_file(hf_dir(path))
    }
}

fn is_gguf(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// The HF directory of `path`: itself, or the directory of a file in it.
fn hf_dir(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    }
}

/// Load a model from an HF directory (or its `config.json`'s directory) or a `.gguf` file onto
/// `device` in `kind` (`Kind::Float`, `Kind::BFloat16` or `Kind::Half`).
pub fn load_model(path: impl AsRef<Path>, device: Device, kind: Kind) -> Result<LoadedModel> {
    let path = path.as_ref();
    if !matches!(
        kind,
        Kind::Float | Kind::BFloat16 | Kind::Half | Kind::Double
    ) {
        return Err(Error::Input(format!(
            "model dtype must be f32, bf16 or f16, got {kind:?}"
        )));
    }
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    }
    let mut vs = VarStore::new(device);
    if is_gguf(path) {
        let gguf = sft_gguf::GgufFile::open(path).map_err(|source| Error::Gguf {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg = LlamaConfig::from_gguf(&gguf)?;
        let model = Llama::for_loading(&vs.root(), &cfg)?;
        vs.set_kind(kind);
        load_gguf(&vs, &cfg, &gguf)?;
        Ok(LoadedModel {
            vs,
            model,
            source: ModelSource::Gguf(path.to_path_buf()),
        })
    } else {
        let dir = hf_dir(path);
        let cfg = LlamaConfig::from_hf_file(&dir)?;
        let model = Llama::for_loading(&vs.root(), &cfg)?;
        vs.set_kind(kind);
        load_safetensors(&vs, &dir)?;
        Ok(LoadedModel {
            vs,
            model,
            source: ModelSource::HfDir(dir),
        })
    }
}

/// [`load_model`] for generation and other passes without gradients: the projections are
/// stacked ([`Llama::fuse_projections`]), so each decoding step runs fewer, larger matmuls.
/// Same parameters, names and values as [`load_model`]'s.
pub fn load_model_for_inference(
    path: impl AsRef<Path>,
    device: Device,
    kind: Kind,
) -> Result<LoadedModel> {
    let mut loaded = load_model(path, device, kind)?;
    loaded.model.fuse_projections()?;
    Ok(loaded)
}
