//! [`ChatTokenizer`]: a `tokenizers::Tokenizer` plus the special tokens and chat template that
//! came with it, loaded from an HF directory, a `tokenizer.json`, or GGUF metadata.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::Value as Json;
use tokenizers::Tokenizer;

use crate::gguf_tokenizer::{self, GgufPreTokenizer};
use crate::{ChatError, Result};

/// Byte ranges of tokens in the encoded text.
pub type ByteOffsets = Vec<(usize, usize)>;

/// A special token: id and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialToken {
    /// Token id.
    pub id: u32,
    /// Token text, e.g. `<|im_end|>`.
    pub text: String,
}

/// A tokenizer with its special tokens and (optional) Jinja chat template.
#[derive(Debug, Clone)]
pub struct ChatTokenizer {
    inner: Tokenizer,
    bos: Option<SpecialToken>,
    eos: Option<SpecialToken>,
    pad: Option<SpecialToken>,
    unk: Option<SpecialToken>,
    chat_template: Option<String>,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| ChatError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// HF tokenizer_config token fields are a string or an AddedToken dict `{"content": ...}`.
fn token_text(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

/// Turn off `trim_offsets` in ByteLevel post-processors: trimmed offsets drop the whitespace a
/// token covers, which would hide tokens like `Ġ` from the span mapping. Ids are unaffected.
fn untrim_offsets(v: &mut Json) -> bool {
    match v {
        Json::Object(o) => {
            let mut changed = false;
            if o.get("type").and_then(Json::as_str) == Some("ByteLevel") {
                if let Some(t) = o.get_mut("trim_offsets") {
                    changed = *t != Json::Bool(false);
                    *t = Json::Bool(false);
                }
            }
            if let Some(Json::Array(items)) = o.get_mut("processors") {
                for item in items {
                    changed |= untrim_offsets(item);
                }
            }
            changed
        }
        _ => false,
    }
}

impl ChatTokenizer {
    /// Wrap a `tokenizers::Tokenizer`; special tokens are given by text and looked up.
    pub fn new(
        mut inner: Tokenizer,
        bos: Option<&str>,
        eos: Option<&str>,
        pad: Option<&str>,
        unk: Option<&str>,
        chat_template: Option<String>,
    ) -> Result<Self> {
        // Switch off offset trimming (see `untrim_offsets`) by editing the post-processor's JSON.
        if let Some(pp) = inner.get_post_processor() {
            let mut pp_json = serde_json::to_value(pp).map_err(ChatError::tok)?;
            if untrim_offsets(&mut pp_json) {
                let mut json: Json =
                    serde_json::from_str(&inner.to_string(false).map_err(ChatError::tok)?)
                        .map_err(ChatError::tok)?;
                json["post_processor"] = pp_json;
                inner = Tokenizer::from_str(&json.to_string()).map_err(ChatError::tok)?;
            }
        }
        let lookup = |text: Option<&str>, what: &str| -> Result<Option<SpecialToken>> {
            match text {
                None => Ok(None),
                Some(t) => match inner.token_to_id(t) {
                    Some(id) => Ok(Some(SpecialToken {
                        id,
                        text: t.to_string(),
                    })),
                    None => Err(ChatError::Tokenizer(format!(
                        "{what} token {t:?} is not in the vocabulary"
                    ))),
                },
            }
        };
        Ok(Self {
            bos: lookup(bos, "bos")?,
            eos: lookup(eos, "eos")?,
            pad: lookup(pad, "pad")?,
            unk: lookup(unk, "unk")?,
            inner,
            chat_template,
        })
    }

    /// Load an HF tokenizer directory: `tokenizer.json` (required) and `tokenizer_config.json`
    /// (optional: `bos_token`, `eos_token`, `pad_token`, `unk_token`, `chat_template`; a
    /// `chat_template.jinja` file next to it also counts).
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let tok_path = dir.join("tokenizer.json");
        let inner = Tokenizer::from_str(&read(&tok_path)?).map_err(|e| ChatError::BadFile {
            path: tok_path.clone(),
            message: e.to_string(),
        })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Json = if cfg_path.exists() {
            serde_json::from_str(&read(&cfg_path)?).map_err(|e| ChatError::BadFile {
                path: cfg_path.clone(),
                message: e.to_string(),
            })?
        } else {
            Json::Null
        };
        let field = |k: &str| cfg.get(k).and_then(token_text);
        let mut chat_template = match cfg.get("chat_template") {
            Some(Json::String(s)) => Some(s.clone()),
            // A list of named templates: take "default".
            Some(Json::Array(items)) => items
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Json::as_str)
                .map(str::to_string),
            _ => None,
        };
        let jinja_path = dir.join("chat_template.jinja");
        if chat_template.is_none() && jinja_path.exists() {
            chat_template = Some(read(&jinja_path)?);
        }
        Self::new(
            inner,
            field("bos_token").as_deref(),
            field("eos_token").as_deref(),
            field("pad_token").as_deref(),
            field("unk_token").as_deref(),
            chat_template,
        )
        .map_err(|e| match e {
            ChatError::Tokenizer(m) => ChatError::BadFile {
                path: cfg_path,
                message: m,
            },
            other => other,
        })
    }

    /// Load a bare `tokenizer.json` (no special-token roles, no chat template).
    pub fn from_tokenizer_json(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let inner = Tokenizer::from_str(&read(path)?).map_err(|e| ChatError::BadFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::new(inner, None, None, None, None, None)
    }

    /// Build the tokenizer a GGUF file embeds (`tokenizer.ggml.model = gpt2`), splitting text the
    /// way llama.cpp does for its `tokenizer.ggml.pre` (see [`GgufPreTokenizer`]).
    pub fn from_gguf(file: &sft_gguf::GgufFile) -> Result<Self> {
        Self::from_gguf_with(file, GgufPreTokenizer::LlamaCpp)
    }

    /// [`ChatTokenizer::from_gguf`] with an explicit pre-tokenizer flavour.
    pub fn from_gguf_with(file: &sft_gguf::GgufFile, flavour: GgufPreTokenizer) -> Result<Self> {
        gguf_tokenizer::build(file, flavour)
    }

    /// Open a GGUF file and build its tokenizer ([`ChatTokenizer::from_gguf`]).
    pub fn from_gguf_path(path: impl AsRef<Path>) -> Result<Self> {
        let file = sft_gguf::GgufFile::open(path)?;
        Self::from_gguf(&file)
    }

    /// Load from a path: a `.gguf` file, a directory with `tokenizer.json`, or a `tokenizer.json`.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            Self::from_hf_dir(path)
        } else if path.extension().is_some_and(|e| e == "gguf") {
            Self::from_gguf_path(path)
        } else if path.file_name().is_some_and(|n| n == "tokenizer.json") {
            match path.parent() {
                Some(dir) if dir.join("tokenizer_config.json").exists() => Self::from_hf_dir(dir),
                _ => Self::from_tokenizer_json(path),
            }
        } else {
            Err(ChatError::BadFile {
                path: PathBuf::from(path),
                message: "expected a .gguf file, a tokenizer.json or an HF directory".into(),
            })
        }
    }

    /// Write `tokenizer.json` and `tokenizer_config.json` (special tokens, chat template,
    /// `tokenizer_class: PreTrainedTokenizerFast`) into `dir`, so that [`ChatTokenizer::from_hf_dir`]
    /// and transformers' `AutoTokenizer.from_pretrained(dir)` load the same tokenizer. Makes a
    /// checkpoint trained from a GGUF file self-contained.
    pub fn save_hf_dir(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let io = |path: PathBuf| move |source| ChatError::Io { path, source };
        std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
        let tok_path = dir.join("tokenizer.json");
        let json = self.inner.to_string(true).map_err(ChatError::tok)?;
        std::fs::write(&tok_path, json).map_err(io(tok_path.clone()))?;
        let mut cfg = serde_json::Map::new();
        cfg.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
        for (key, tok) in [
            ("bos_token", &self.bos),
            ("eos_token", &self.eos),
            ("pad_token", &self.pad),
            ("unk_token", &self.unk),
        ] {
            cfg.insert(
                key.into(),
                tok.as_ref()
                    .map_or(Json::Null, |t| Json::String(t.text.clone())),
            );
        }
        if let Some(t) = &self.chat_template {
            cfg.insert("chat_template".into(), Json::String(t.clone()));
        }
        let cfg_path = dir.join("tokenizer_config.json");
        let text = serde_json::to_string_pretty(&Json::Object(cfg)).map_err(ChatError::tok)?;
        std::fs::write(&cfg_path, text + "\n").map_err(io(cfg_path.clone()))?;
        Ok(())
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Beginning-of-sequence token.
    pub fn bos(&self) -> Option<&SpecialToken> {
        self.bos.as_ref()
    }

    /// End-of-sequence token.
    pub fn eos(&self) -> Option<&SpecialToken> {
        self.eos.as_ref()
    }

    /// Padding token.
    pub fn pad(&self) -> Option<&SpecialToken> {
        self.pad.as_ref()
    }

    /// Unknown token.
    pub fn unk(&self) -> Option<&SpecialToken> {
        self.unk.as_ref()
    }

    /// The model's own Jinja chat template, if it shipped one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token id of a token text.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Encode text. `add_special_tokens` runs the post-processor (e.g. prepends BOS where the
    /// tokenizer is configured to); special tokens written in the text (`<|im_start|>`) are always
    /// matched whole.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, add_special_tokens)
            .map_err(ChatError::tok)?
            .get_ids()
            .to_vec())
    }

    /// Encode text and return each token's byte range in `text` (tokens added by the
    /// post-processor, like BOS, have an empty range).
    pub fn encode_with_offsets(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<(Vec<u32>, ByteOffsets)> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(ChatError::tok)?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Decode ids to text.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(ChatError::tok)
    }

    /// The text of one token as stored in the vocabulary (byte-level spelling, e.g. `Ġthe`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
}
