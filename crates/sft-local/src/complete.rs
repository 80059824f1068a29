//! [`LocalCompleter`]: `sft-complete`'s [`Completer`] on a model loaded here (any device and
//! dtype), with `sft-llama`'s batched generation.
//!
//! Chat prompts are rendered with the chosen chat template (the model's own by default) and a
//! generation prompt; text prompts are tokenized as they are, with the tokenizer's special
//! tokens (BOS). Requests with equal sampling settings are generated together in batches of
//! `batch_size`, each with its own seed ([`sft_llama::generate::generate_ids_seeded`]), so a
//! request's completion does not depend on what else was asked.

use std::path::Path;
use std::sync::Mutex;

use sft_chat::{ChatTemplate, ChatTokenizer};
use sft_complete::{Completer, Completion, CompletionRequest, Prompt};
use sft_llama::{FinishReason, GenerationConfig, Sampling, TokenizerCodec};

use crate::error::{Error, Result};

/// Requests with one sampling setting (its JSON): (request index, prompt ids).
type SamplingGroup = (String, Vec<(usize, Vec<u32>)>);

/// The local model as a [`Completer`].
pub struct LocalCompleter {
    loaded: Mutex<sft_llama::LoadedModel>,
    tokenizer: ChatTokenizer,
    template: Option<ChatTemplate>,
    name: String,
    batch_size: usize,
    eos: Vec<u32>,
    progress: bool,
}

impl std::fmt::Debug for LocalCompleter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCompleter")
            .field("name", &self.name)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl LocalCompleter {
    /// Loads the model and tokenizer at `path` (HF directory or GGUF) on `device` in `kind`.
    /// `template` names the chat template for chat prompts (`model`, `vicuna_v1.1`, `chatml`, or
    /// a Jinja file); `None` makes chat prompts an error (text prompts only).
    pub fn load(
        path: &Path,
        device: tch::Device,
        kind: tch::Kind,
        template: Option<&str>,
        batch_size: usize,
    ) -> Result<LocalCompleter> {
        let tokenizer = ChatTokenizer::from_path(path).map_err(|e| Error::Model {
            context: format!("tokenizer of {}", path.display()),
            source: e.into(),
        })?;
        let template = template
            .map(|name| {
                ChatTemplate::resolve(name, &tokenizer).map_err(|source| Error::Template {
                    name: name.to_string(),
                    source,
                })
            })
            .transpose()?;
        let loaded =
            sft_llama::load_model_for_inference(path, device, kind).map_err(|e| Error::Model {
                context: format!("loading {}", path.display()),
                source: e.into(),
            })?;
        let eos = crate::local::stop_ids(&loaded.model, &tokenizer);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Ok(LocalCompleter {
            loaded: Mutex::new(loaded),
            tokenizer,
            template,
            name,
            batch_size: batch_size.max(1),
            eos,
            progress: false,
        })
    }

    /// Draws a progress bar per batch group.
    pub fn with_progress(mut self, progress: bool) -> Self {
        self.progress = progress;
        self
    }

    /// The prompt's token ids.
    fn encode(&self, prompt: &Prompt) -> std::result::Result<Vec<u32>, sft_complete::Error> {
        let backend = |e: sft_chat::ChatError| sft_complete::Error::Backend(e.into());
        match prompt {
            Prompt::Text(text) => self.tokenizer.encode(text, true).map_err(backend),
            Prompt::Chat(messages) => {
                let Some(template) = &self.template else {
                    return Err(sft_complete::Error::Config(
                        "a chat prompt needs a chat template (pass one)".into(),
                    ));
                };
                let text = template.render_prompt(messages).map_err(backend)?;
                self.tokenizer
                    .encode(&text, template.adds_special_tokens())
                    .map_err(backend)
            }
        }
    }
}

impl Completer for LocalCompleter {
    fn model_name(&self) -> String {
        self.name.clone()
    }

    fn complete(&self, requests: &[CompletionRequest]) -> Vec<sft_complete::Result<Completion>> {
        let mut out: Vec<Option<sft_complete::Result<Completion>>> =
            (0..requests.len()).map(|_| None).collect();
        let mut encoded = Vec::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            match r.sampling.validate().and_then(|_| self.encode(&r.prompt)) {
                Ok(ids) => encoded.push((i, ids)),
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        // Group by sampling settings, in first-seen order.
        let mut groups: Vec<SamplingGroup> = Vec::new();
        for (i, ids) in encoded {
            let key = serde_json::to_string(&requests[i].sampling).unwrap_or_default();
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, g)) => g.push((i, ids)),
                None => groups.push((key, vec![(i, ids)])),
            }
        }
        let codec = TokenizerCodec {
            tokenizer: &self.tokenizer,
            add_special_tokens: true,
        };
        let loaded = match self.loaded.lock() {
            Ok(l) => l,
            Err(_) => {
                return requests
                    .iter()
                    .map(|_| Err(sft_complete::Error::Config("model lock poisoned".into())))
                    .collect()
            }
        };
        for (_, group) in groups {
            let s = &requests[group[0].0].sampling;
            let cfg = GenerationConfig {
                sampling: if s.temperature > 0.0 {
                    Sampling::Sample {
                        temperature: s.temperature,
                        top_p: s.top_p,
                        top_k: None,
                    }
                } else {
                    Sampling::Greedy
                },
                eos_token_ids: self.eos.clone(),
                stop_strings: s.stop.clone(),
                batch_size: self.batch_size,
                progress: self.progress,
                continuous: true,
                ..GenerationConfig::greedy(s.max_new_tokens)
            };
            let seeds: Vec<u64> = group.iter().map(|(i, _)| requests[*i].seed).collect();
            let (idx, prompts): (Vec<usize>, Vec<Vec<u32>>) = group.into_iter().unzip();
            match sft_llama::generate::generate_ids_seeded(
                &loaded.model,
                &prompts,
                &seeds,
                &cfg,
                Some(&codec),
            ) {
                Ok(gen) => {
                    for (i, g) in idx.into_iter().zip(gen.generations) {
                        out[i] = Some(Ok(Completion {
                            tokens: Some(g.generated_ids.len()),
                            text: g.text,
                            finish_reason: Some(
                                match g.finish_reason {
                                    FinishReason::Length => "length",
                                    _ => "stop",
                                }
                                .to_string(),
                            ),
                            cached: false,
                        }));
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    for i in idx {
                        out[i] = Some(Err(sft_complete::Error::Backend(msg.clone().into())));
                    }
                }
            }
        }
        out.into_iter()
            .map(|o| {
                o.unwrap_or_else(|| Err(sft_complete::Error::Config("internal: no result".into())))
            })
            .collect()
    }
}
