//! The one completion interface: [`Completer`], its requests and its results.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use sft_record::Message;

/// What the model continues: a conversation (rendered with the model's chat template, or sent to
/// `/chat/completions`) or raw text (sent as is, or to `/completions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prompt {
    /// Messages, ending with the user turn to answer.
    Chat(Vec<Message>),
    /// Text continued verbatim (e.g. the RFT paper's Alpaca prompt).
    Text(String),
}

/// How tokens are chosen and when generation stops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Softmax temperature; 0 is greedy decoding.
    pub temperature: f64,
    /// Nucleus mass in (0, 1].
    pub top_p: f64,
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// Strings that end the completion (the text is cut before them).
    pub stop: Vec<String>,
}

impl SamplingParams {
    /// Greedy decoding of up to `max_new_tokens`.
    pub fn greedy(max_new_tokens: usize) -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            max_new_tokens,
            stop: Vec::new(),
        }
    }

    /// Checks the ranges; the error names the setting.
    pub fn validate(&self) -> Result<()> {
        use crate::error::Error;
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Config(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Config(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        if self.max_new_tokens == 0 {
            return Err(Error::Config("max_new_tokens must be positive".into()));
        }
        Ok(())
    }
}

/// One prompt to complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    /// What to continue.
    pub prompt: Prompt,
    /// Sampling settings.
    pub sampling: SamplingParams,
    /// The request's own sampling seed: the same request gives the same completion whatever else
    /// is in the batch (locally exactly; servers as far as they honour `seed`). Part of the
    /// cache key, so `k` samples of one prompt are `k` requests with `k` seeds.
    pub seed: u64,
}

/// One completion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    /// The generated text (stop strings excluded).
    pub text: String,
    /// Why it ended (`stop`, `length`, ...), when the backend says.
    pub finish_reason: Option<String>,
    /// Generated tokens, when the backend says.
    pub tokens: Option<usize>,
    /// Served from the cache, without a request.
    pub cached: bool,
}

/// Something that completes prompts: the local model (`sft_local::LocalCompleter`) or any
/// OpenAI-compatible server ([`crate::OpenAiCompleter`]).
///
/// `complete` returns one result per request, in request order: one failed request does not
/// fail the others, so callers can count failures instead of losing a batch.
pub trait Completer: Send + Sync {
    /// The model's identity as recorded in outputs (file name or server model name).
    fn model_name(&self) -> String;

    /// Completes `requests`.
    fn complete(&self, requests: &[CompletionRequest]) -> Vec<Result<Completion>>;

    /// How many of `requests` would be sent (not served from a cache); all, without a cache.
    fn uncached(&self, requests: &[CompletionRequest]) -> usize {
        requests.len()
    }
}

impl<T: Completer + ?Sized> Completer for Box<T> {
    fn model_name(&self) -> String {
        (**self).model_name()
    }
    fn complete(&self, requests: &[CompletionRequest]) -> Vec<Result<Completion>> {
        (**self).complete(requests)
    }
    fn uncached(&self, requests: &[CompletionRequest]) -> usize {
        (**self).uncached(requests)
    }
}
