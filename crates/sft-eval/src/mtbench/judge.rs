//! The MT-Bench judge: FastChat's single-answer grading through `sft-complete`'s
//! [`OpenAiClient`], the workspace's one client for OpenAI-compatible `/v1/chat/completions`
//! endpoints.
//!
//! - The API key comes from an environment variable whose *name* is configured; [`ApiKey`] has
//!   no `Display`, its `Debug` prints `<redacted>`, and every error text is scrubbed of it.
//! - Retries: 429, 408 and 5xx responses and transport errors are retried with exponential
//!   backoff and jitter, honouring `Retry-After` (seconds); 400, 401, 403, 404 and 422 fail at once.
//! - Cache: an append-only JSONL file keyed by SHA-256 of (judge model, messages, temperature,
//!   max_tokens, repeat index), fsynced per record; a torn last line is skipped. A rerun over the
//!   same prompts sends zero requests.
//! - Parallelism: `parallel` worker threads share one agent.

use serde::{Deserialize, Serialize};
use sft_complete::openai::cache_key;
use sft_complete::{OpenAiClient, Route};

use super::{classify, JudgeRequest, Judgment, JudgmentStatus};
use crate::error::{EvalError, Result};

pub use sft_complete::{ApiKey, EndpointConfig};

/// What the judge's client did ([`sft_complete::ClientStats`]).
pub type JudgeStats = sft_complete::ClientStats;

/// FastChat's placeholder judgment for a failed request.
pub const API_ERROR_OUTPUT: &str = "$ERROR$";

/// The judge: its endpoint (`sft-complete`'s, with its retry and cache settings) and FastChat's
/// sampling settings. Serialized flat (`base_url`, `model`, ..., `temperature`, `max_tokens`,
/// `repeats`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JudgeConfig {
    /// Base URL (`/chat/completions` is appended), judge model (FastChat's default `gpt-4`),
    /// key variable, timeouts, retries, parallelism and the judgment cache file.
    #[serde(flatten)]
    pub endpoint: EndpointConfig,
    /// Sampling temperature (FastChat: 0).
    pub temperature: f64,
    /// `max_tokens` (FastChat: 2048 for OpenAI judges).
    pub max_tokens: u32,
    /// Judgments per (question, turn); the summary takes their median.
    pub repeats: usize,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        JudgeConfig {
            endpoint: EndpointConfig::default(),
            temperature: 0.0,
            max_tokens: 2048,
            repeats: 1,
        }
    }
}

/// The judge. Share it by reference between threads.
#[derive(Debug)]
pub struct JudgeClient {
    config: JudgeConfig,
    client: OpenAiClient,
}

impl JudgeClient {
    /// A client reading its key from `config.api_key_env` and loading the cache file if any.
    pub fn new(config: JudgeConfig) -> Result<JudgeClient> {
        let key = ApiKey::from_env(&config.endpoint.api_key_env);
        if key.is_none() {
            tracing::warn!(var = %config.endpoint.api_key_env, "judge API key variable is unset or empty; sending no Authorization header");
        }
        Self::with_key(config, key)
    }

    /// A client with an explicit key (tests, or keys read from a 0600 file by the caller).
    pub fn with_key(config: JudgeConfig, key: Option<ApiKey>) -> Result<JudgeClient> {
        if config.repeats == 0 {
            return Err(EvalError::Config("repeats must be at least 1".into()));
        }
        let client = OpenAiClient::with_key(config.endpoint.clone(), key)
            .map_err(|e| EvalError::Config(e.to_string()))?;
        Ok(JudgeClient { config, client })
    }

    /// The configuration.
    pub fn config(&self) -> &JudgeConfig {
        &self.config
    }

    /// What the client has done so far.
    pub fn stats(&self) -> JudgeStats {
        self.client.stats()
    }

    /// The cache key: unchanged since judge caches were first written, so old caches still hit.
    fn cache_key(&self, system: &str, user: &str, repeat: usize) -> String {
        cache_key(&serde_json::json!({
            "model": self.config.endpoint.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
            "repeat": repeat,
        }))
    }

    /// How many of `requests` × `repeats` judgments are not cached yet (a dry run's request count).
    pub fn uncached(&self, requests: &[JudgeRequest]) -> usize {
        requests
            .iter()
            .flat_map(|r| (0..self.config.repeats).map(move |i| (r, i)))
            .filter(|(r, i)| {
                !self
                    .client
                    .is_cached(&self.cache_key(&r.system_prompt, &r.user_prompt, *i))
            })
            .count()
    }

    /// The judge's reply to (system, user), from the cache or the endpoint.
    pub fn complete(&self, system: &str, user: &str, repeat: usize) -> Result<String> {
        let body = serde_json::json!({
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
            "n": 1,
        });
        let key = self.cache_key(system, user, repeat);
        Ok(self.client.call(Route::Chat, &body, &key)?.text)
    }

    /// Judges every request `config.repeats` times with `config.parallel` threads. Failed
    /// requests become judgments with status `request_error` and score -1; the run goes on.
    pub fn judge_all(&self, requests: &[JudgeRequest]) -> Vec<Judgment> {
        let jobs: Vec<(usize, usize)> = (0..requests.len())
            .flat_map(|i| (0..self.config.repeats).map(move |r| (i, r)))
            .collect();
        let bar = indicatif::ProgressBar::new(jobs.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "mt-bench judge {bar:40} {pos}/{len} [{elapsed}<{eta}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let judgments = self.client.parallel_map(jobs.len(), |n| {
            let (i, repeat) = jobs[n];
            let req = &requests[i];
            let (judgment, score, status) =
                match self.complete(&req.system_prompt, &req.user_prompt, repeat) {
                    Ok(text) => {
                        let (score, status) = classify(&text);
                        (text, score, status)
                    }
                    Err(e) => {
                        tracing::error!(question_id = req.question_id, turn = req.turn, "{e}");
                        (
                            API_ERROR_OUTPUT.to_string(),
                            -1.0,
                            JudgmentStatus::RequestError,
                        )
                    }
                };
            bar.inc(1);
            Judgment {
                question_id: req.question_id,
                model: req.model.clone(),
                judge: (self.config.endpoint.model.clone(), req.prompt_name.clone()),
                user_prompt: req.user_prompt.clone(),
                judgment,
                score,
                turn: req.turn,
                tstamp: now(),
                status,
                repeat,
                category: req.category.clone(),
            }
        });
        bar.finish_and_clear();
        judgments
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_never_shows_in_debug() {
        let k = ApiKey::new("sk-canary-123456");
        let client =
            JudgeClient::with_key(JudgeConfig::default(), Some(k.clone())).expect("client");
        assert!(!format!("{client:?}").contains("canary"));
    }

    #[test]
    fn the_cache_key_is_stable() {
        // Judge caches written before the client moved to sft-complete must still hit.
        let client = JudgeClient::with_key(JudgeConfig::default(), None).expect("client");
        let expected = {
            use sha2::{Digest, Sha256};
            let canonical = serde_json::json!({
                "model": "gpt-4",
                "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                "temperature": 0.0,
                "max_tokens": 2048,
                "repeat": 0,
            });
            hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
        };
        assert_eq!(client.cache_key("s", "u", 0), expected);
    }
}
