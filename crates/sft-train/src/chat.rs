//! [`ChatEncoder`] over `sft-chat`: a tokenizer plus a named chat template.

use std::path::{Path, PathBuf};

use sft_chat::EncodedChat;
use sft_record::Message;

use crate::data::ChatEncoder;
use crate::error::{Error, Result};

/// File written next to trained weights that points at the tokenizer they were trained with,
/// so a later stage can start from `final/` without naming the tokenizer again.
pub const TOKENIZER_SOURCE: &str = "tokenizer_source.json";

/// A tokenizer and chat template that produce ids with an exact assistant-only mask.
pub struct TemplateEncoder {
    tokenizer: sft_chat::ChatTokenizer,
    template: sft_chat::ChatTemplate,
    /// Where the tokenizer was loaded from.
    pub tokenizer_path: PathBuf,
}

impl std::fmt::Debug for TemplateEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplateEncoder")
            .field("template", &self.template.name())
            .field("tokenizer", &self.tokenizer_path)
            .finish()
    }
}

/// Where to find the tokenizer for a model path: the path itself when it is a `.gguf` file or a
/// directory with `tokenizer.json`, else the path recorded in its [`TOKENIZER_SOURCE`].
///
/// This is the one lookup of a model's tokenizer: [`crate::TrainJob`] (training) and
/// [`crate::eval_loss_at`] use it when no tokenizer is named.
pub fn tokenizer_path_for(model: &Path) -> Result<PathBuf> {
    if model.is_file() || model.join("tokenizer.json").exists() {
        return Ok(model.to_path_buf());
    }
    let src = model.join(TOKENIZER_SOURCE);
    let text = std::fs::read(&src).map_err(|source| Error::NoTokenizer {
        model: model.to_path_buf(),
        source,
    })?;
    let v: TokenizerSource =
        serde_json::from_slice(&text).map_err(|source| Error::Json { path: src, source })?;
    Ok(v.path)
}

/// The contents of [`TOKENIZER_SOURCE`]: where the tokenizer of a trained model came from and
/// the template it was trained with.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TokenizerSource {
    /// The tokenizer (`.gguf`, HF dir or `tokenizer.json`), absolute when it could be resolved.
    pub path: PathBuf,
    /// The chat template's name.
    #[serde(default)]
    pub template: String,
}

impl TemplateEncoder {
    /// Loads the tokenizer at `tokenizer` (a `.gguf`, an HF directory or a `tokenizer.json`)
    /// and resolves `template` (`vicuna_v1.1`, `chatml`, or `model` for its own Jinja template).
    pub fn new(tokenizer: &Path, template: &str) -> Result<Self> {
        let tok =
            sft_chat::ChatTokenizer::from_path(tokenizer).map_err(|source| Error::Tokenizer {
                path: tokenizer.to_path_buf(),
                source,
            })?;
        let tpl =
            sft_chat::ChatTemplate::resolve(template, &tok).map_err(|source| Error::Template {
                name: template.to_string(),
                source,
            })?;
        let abs = std::fs::canonicalize(tokenizer).unwrap_or_else(|_| tokenizer.to_path_buf());
        Ok(TemplateEncoder {
            tokenizer: tok,
            template: tpl,
            tokenizer_path: abs,
        })
    }

    /// An encoder over an already loaded tokenizer (loaded from `tokenizer_path`, recorded as
    /// [`TemplateEncoder::tokenizer_path`]) and an already resolved template.
    pub fn from_loaded(
        tokenizer: sft_chat::ChatTokenizer,
        template: sft_chat::ChatTemplate,
        tokenizer_path: impl Into<PathBuf>,
    ) -> Self {
        TemplateEncoder {
            tokenizer,
            template,
            tokenizer_path: tokenizer_path.into(),
        }
    }

    /// The template's name.
    pub fn template_name(&self) -> &str {
        self.template.name()
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &sft_chat::ChatTokenizer {
        &self.tokenizer
    }
}

impl ChatEncoder for TemplateEncoder {
    fn encode(
        &self,
        messages: &[Message],
    ) -> std::result::Result<EncodedChat, sft_chat::ChatError> {
        self.template.encode_with_mask(&self.tokenizer, messages)
    }

    fn decode(&self, ids: &[i64]) -> String {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.tokenizer
            .decode(&ids, false)
            .unwrap_or_else(|e| format!("<undecodable: {e}>"))
    }
}
