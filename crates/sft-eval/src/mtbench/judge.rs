//! A judge client for any OpenAI-compatible `/v1/chat/completions` endpoint.
//!
//! - The API key comes from an environment variable whose *name* is configured; [`ApiKey`] has
//!   no `Display`, its `Debug` prints `<redacted>`, and every error text is scrubbed of it.
//! - Retries: 429, 408 and 5xx responses and transport errors are retried with exponential
//!   backoff and jitter, honouring `Retry-After` (seconds); 400, 401, 403, 404 and 422 fail at once.
//! - Cache: an append-only JSONL file keyed by SHA-256 of (judge model, messages, temperature,
//!   max_tokens, repeat index), fsynced per record; a torn last line is skipped. A rerun over the
//!   same prompts sends zero requests.
//! - Parallelism: `parallel` worker threads share one agent.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{classify, JudgeRequest, Judgment, JudgmentStatus};
use crate::error::{EvalError, Result};

/// FastChat's placeholder judgment for a failed request.
pub const API_ERROR_OUTPUT: &str = "$ERROR$";

/// An API key. It cannot be printed: `Debug` shows `<redacted>` and there is no `Display`.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Reads the key from the environment variable `var`. A missing or empty variable is `None`
    /// (some local endpoints need no key).
    pub fn from_env(var: &str) -> Option<ApiKey> {
        std::env::var(var)
            .ok()
            .filter(|k| !k.is_empty())
            .map(ApiKey)
    }

    /// Wraps a key held in memory.
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into())
    }

    fn redact(&self, text: &str) -> String {
        if self.0.len() >= 4 {
            text.replace(&self.0, "<redacted>")
        } else {
            text.to_string()
        }
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Judge endpoint and retry settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JudgeConfig {
    /// Base URL up to and including `/v1` (e.g. `https://api.openai.com/v1`);
    /// `/chat/completions` is appended.
    pub base_url: String,
    /// Judge model name sent in the request (FastChat's default is `gpt-4`).
    pub model: String,
    /// Name of the environment variable holding the API key (never the key itself).
    pub api_key_env: String,
    /// Sampling temperature (FastChat: 0).
    pub temperature: f64,
    /// `max_tokens` (FastChat: 2048 for OpenAI judges).
    pub max_tokens: u32,
    /// Per-request timeout, seconds.
    pub timeout_s: f64,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff delay, seconds; doubles per retry.
    pub backoff_base_s: f64,
    /// Backoff ceiling, seconds.
    pub backoff_max_s: f64,
    /// Longest `Retry-After` honoured, seconds (longer values are clamped).
    pub retry_after_max_s: f64,
    /// Concurrent requests.
    pub parallel: usize,
    /// Judgments per (question, turn); the summary takes their median.
    pub repeats: usize,
    /// Judgment cache file (append-only JSONL); `None` disables caching.
    pub cache_path: Option<PathBuf>,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        JudgeConfig {
            base_url: "https://api.openai.com/v1".into(),
            model: "gpt-4".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            temperature: 0.0,
            max_tokens: 2048,
            timeout_s: 60.0,
            max_retries: 8,
            backoff_base_s: 1.0,
            backoff_max_s: 60.0,
            retry_after_max_s: 300.0,
            parallel: 4,
            repeats: 1,
            cache_path: None,
        }
    }
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: [Msg<'a>; 2],
    temperature: f64,
    max_tokens: u32,
    n: u32,
}

#[derive(Serialize)]
struct Msg<'a> {
    role: &'a str,
    content: &'a str,
}

#[derive(Serialize, Deserialize)]
struct CacheEntry {
    key: String,
    judge_model: String,
    judgment: String,
}

/// Counters of what the client did, for reports and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JudgeStats {
    /// HTTP requests sent (including retries).
    pub requests: usize,
    /// Replies served from the cache.
    pub cache_hits: usize,
    /// Retries made.
    pub retries: usize,
    /// Calls that failed for good.
    pub failures: usize,
}

/// The client. Share it by reference between threads.
pub struct JudgeClient {
    config: JudgeConfig,
    key: Option<ApiKey>,
    agent: ureq::Agent,
    cache: Mutex<HashMap<String, String>>,
    cache_file: Option<Mutex<File>>,
    rng: Mutex<ChaCha8Rng>,
    requests: AtomicUsize,
    cache_hits: AtomicUsize,
    retries: AtomicUsize,
    failures: AtomicUsize,
}

impl std::fmt::Debug for JudgeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JudgeClient")
            .field("config", &self.config)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Whether a status is worth retrying.
fn retryable(status: u16) -> bool {
    status == 429 || status == 408 || status >= 500
}

impl JudgeClient {
    /// A client reading its key from `config.api_key_env` and loading the cache file if any.
    pub fn new(config: JudgeConfig) -> Result<JudgeClient> {
        let key = ApiKey::from_env(&config.api_key_env);
        if key.is_none() {
            tracing::warn!(var = %config.api_key_env, "judge API key variable is unset or empty; sending no Authorization header");
        }
        Self::with_key(config, key)
    }

    /// A client with an explicit key (tests, or keys read from a 0600 file by the caller).
    pub fn with_key(config: JudgeConfig, key: Option<ApiKey>) -> Result<JudgeClient> {
        if config.parallel == 0 || config.repeats == 0 {
            return Err(EvalError::Config(
                "parallel and repeats must be at least 1".into(),
            ));
        }
        if !(config.timeout_s > 0.0 && config.backoff_base_s >= 0.0 && config.backoff_max_s >= 0.0)
        {
            return Err(EvalError::Config(
                "timeouts and backoff must be non-negative".into(),
            ));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs_f64(config.timeout_s)))
            .http_status_as_error(false)
            .build()
            .into();
        let (cache, cache_file) = match &config.cache_path {
            Some(p) => {
                let map = load_cache(p)?;
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| EvalError::io(p, e))?;
                (map, Some(Mutex::new(file)))
            }
            None => (HashMap::new(), None),
        };
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Ok(JudgeClient {
            config,
            key,
            agent,
            cache: Mutex::new(cache),
            cache_file,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            requests: AtomicUsize::new(0),
            cache_hits: AtomicUsize::new(0),
            retries: AtomicUsize::new(0),
            failures: AtomicUsize::new(0),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &JudgeConfig {
        &self.config
    }

    /// What the client has done so far.
    pub fn stats(&self) -> JudgeStats {
        JudgeStats {
            requests: self.requests.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    fn cache_key(&self, system: &str, user: &str, repeat: usize) -> String {
        let canonical = serde_json::json!({
            "model": self.config.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
            "repeat": repeat,
        });
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }

    /// How many of `requests` × `repeats` judgments are not cached yet (a dry run's request count).
    pub fn uncached(&self, requests: &[JudgeRequest]) -> usize {
        let cache = match self.cache.lock() {
            Ok(c) => c,
            Err(_) => return requests.len() * self.config.repeats,
        };
        requests
            .iter()
            .flat_map(|r| (0..self.config.repeats).map(move |i| (r, i)))
            .filter(|(r, i)| {
                !cache.contains_key(&self.cache_key(&r.system_prompt, &r.user_prompt, *i))
            })
            .count()
    }

    /// The judge's reply to (system, user), from the cache or the endpoint.
    pub fn complete(&self, system: &str, user: &str, repeat: usize) -> Result<String> {
        let key = self.cache_key(system, user, repeat);
        if let Some(hit) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        let reply = self.request_with_retries(system, user).inspect_err(|_| {
            self.failures.fetch_add(1, Ordering::Relaxed);
        })?;
        self.store(&key, &reply)?;
        Ok(reply)
    }

    fn store(&self, key: &str, judgment: &str) -> Result<()> {
        if let Ok(mut c) = self.cache.lock() {
            c.insert(key.to_string(), judgment.to_string());
        }
        if let (Some(file), Some(path)) = (&self.cache_file, &self.config.cache_path) {
            let entry = CacheEntry {
                key: key.into(),
                judge_model: self.config.model.clone(),
                judgment: judgment.into(),
            };
            let mut line = serde_json::to_vec(&entry)
                .map_err(|e| EvalError::io(path, std::io::Error::other(e)))?;
            line.push(b'\n');
            let mut f = file
                .lock()
                .map_err(|_| EvalError::Judge("cache lock poisoned".into()))?;
            f.write_all(&line).map_err(|e| EvalError::io(path, e))?;
            f.sync_data().map_err(|e| EvalError::io(path, e))?;
        }
        Ok(())
    }

    fn redact(&self, text: &str) -> String {
        match &self.key {
            Some(k) => k.redact(text),
            None => text.to_string(),
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base =
            (self.config.backoff_base_s * 2f64.powi(attempt as i32)).min(self.config.backoff_max_s);
        let r = self.rng.lock().map(|mut r| r.next_u32()).unwrap_or(0) as f64 / u32::MAX as f64;
        // Equal jitter: half fixed, half random.
        Duration::from_secs_f64(base * (0.5 + 0.5 * r))
    }

    fn request_with_retries(&self, system: &str, user: &str) -> Result<String> {
        let url = format!(
            "{}/chat/completions",
            self.config.base_url.trim_end_matches('/')
        );
        let body = serde_json::to_string(&ChatRequest {
            model: &self.config.model,
            messages: [
                Msg {
                    role: "system",
                    content: system,
                },
                Msg {
                    role: "user",
                    content: user,
                },
            ],
            temperature: self.config.temperature,
            max_tokens: self.config.max_tokens,
            n: 1,
        })
        .map_err(|e| EvalError::Judge(e.to_string()))?;
        let mut last_error = String::new();
        for attempt in 0..=self.config.max_retries {
            if attempt > 0 {
                self.retries.fetch_add(1, Ordering::Relaxed);
            }
            self.requests.fetch_add(1, Ordering::Relaxed);
            let mut req = self
                .agent
                .post(&url)
                .header("Content-Type", "application/json");
            if let Some(k) = &self.key {
                req = req.header("Authorization", format!("Bearer {}", k.0));
            }
            let wait = match req.send(body.as_str()) {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .filter(|s| s.is_finite() && *s >= 0.0);
                    let text = resp.body_mut().read_to_string().unwrap_or_default();
                    if status == 200 {
                        return parse_reply(&text).map_err(|m| EvalError::Judge(self.redact(&m)));
                    }
                    last_error = format!("HTTP {status} from {url}: {}", snippet(&text));
                    if !retryable(status) {
                        return Err(EvalError::Judge(
                            self.redact(&last_error) + " (not retried)",
                        ));
                    }
                    match retry_after {
                        Some(s) => Duration::from_secs_f64(s.min(self.config.retry_after_max_s)),
                        None => self.backoff(attempt),
                    }
                }
                Err(e) => {
                    last_error = format!("{url}: {e}");
                    self.backoff(attempt)
                }
            };
            if attempt < self.config.max_retries {
                tracing::warn!(attempt, wait_s = wait.as_secs_f64(), error = %self.redact(&last_error), "judge request failed; retrying");
                std::thread::sleep(wait);
            }
        }
        Err(EvalError::Judge(format!(
            "{} (gave up after {} attempts)",
            self.redact(&last_error),
            self.config.max_retries + 1
        )))
    }

    /// Judges every request `config.repeats` times with `config.parallel` threads. Failed
    /// requests become judgments with status `request_error` and score -1; the run goes on.
    pub fn judge_all(&self, requests: &[JudgeRequest]) -> Vec<Judgment> {
        let jobs: Vec<(usize, usize)> = (0..requests.len())
            .flat_map(|i| (0..self.config.repeats).map(move |r| (i, r)))
            .collect();
        let next = AtomicUsize::new(0);
        let out: Mutex<Vec<Option<Judgment>>> = Mutex::new((0..jobs.len()).map(|_| None).collect());
        let bar = indicatif::ProgressBar::new(jobs.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "mt-bench judge {bar:40} {pos}/{len} [{elapsed}<{eta}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        std::thread::scope(|s| {
            for _ in 0..self.config.parallel.min(jobs.len().max(1)) {
                s.spawn(|| loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(i, repeat)) = jobs.get(n) else {
                        break;
                    };
                    let req = &requests[i];
                    let (judgment, score, status) =
                        match self.complete(&req.system_prompt, &req.user_prompt, repeat) {
                            Ok(text) => {
                                let (score, status) = classify(&text);
                                (text, score, status)
                            }
                            Err(e) => {
                                tracing::error!(
                                    question_id = req.question_id,
                                    turn = req.turn,
                                    "{e}"
                                );
                                (
                                    API_ERROR_OUTPUT.to_string(),
                                    -1.0,
                                    JudgmentStatus::RequestError,
                                )
                            }
                        };
                    let j = Judgment {
                        question_id: req.question_id,
                        model: req.model.clone(),
                        judge: (self.config.model.clone(), req.prompt_name.clone()),
                        user_prompt: req.user_prompt.clone(),
                        judgment,
                        score,
                        turn: req.turn,
                        tstamp: now(),
                        status,
                        repeat,
                        category: req.category.clone(),
                    };
                    if let Ok(mut o) = out.lock() {
                        o[n] = Some(j);
                    }
                    bar.inc(1);
                });
            }
        });
        bar.finish_and_clear();
        out.into_inner()
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .collect()
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn snippet(text: &str) -> String {
    let t: String = text.chars().take(300).collect();
    t.replace('\n', " ")
}

/// `choices[0].message.content` of an OpenAI chat-completions reply.
fn parse_reply(text: &str) -> std::result::Result<String, String> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("malformed judge reply ({e}): {}", snippet(text)))?;
    v.pointer("/choices/0/message/content")
        .and_then(|c| c.as_str())
        .map(str::to_string)
        .ok_or_else(|| {
            format!(
                "judge reply has no choices[0].message.content: {}",
                snippet(text)
            )
        })
}

fn load_cache(path: &Path) -> Result<HashMap<String, String>> {
    let mut map = HashMap::new();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(map),
        Err(e) => return Err(EvalError::io(path, e)),
    };
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| EvalError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<CacheEntry>(&line) {
            Ok(e) => {
                map.insert(e.key, e.judgment);
            }
            Err(e) => tracing::warn!(
                "{}:{}: skipping unreadable cache line ({e})",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_never_shows_in_debug() {
        let k = ApiKey::new("sk-canary-123456");
        assert_eq!(format!("{k:?}"), "ApiKey(<redacted>)");
        let client =
            JudgeClient::with_key(JudgeConfig::default(), Some(k.clone())).expect("client");
        assert!(!format!("{client:?}").contains("canary"));
        assert_eq!(
            k.redact("Bearer sk-canary-123456 bad"),
            "Bearer <redacted> bad"
        );
    }

    #[test]
    fn cache_survives_a_torn_last_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cache.jsonl");
        let cfg = JudgeConfig {
            base_url: "http://127.0.0.1:9/v1".into(),
            max_retries: 0,
            cache_path: Some(path.clone()),
            ..JudgeConfig::default()
        };
        let client = JudgeClient::with_key(cfg.clone(), None).expect("client");
        client
            .store(&client.cache_key("s", "u", 0), "Rating: [[9]]")
            .expect("store");
        drop(client);
        // A crash mid-write leaves half a record.
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"key\": \"abc\", \"judge_mo")
            .expect("write");
        drop(f);
        let client = JudgeClient::with_key(cfg, None).expect("torn line is tolerated");
        // Served from the cache: nothing listens on port 9, so a request would fail.
        assert_eq!(
            client.complete("s", "u", 0).expect("cached"),
            "Rating: [[9]]"
        );
        assert_eq!(client.stats().requests, 0);
        assert!(client.complete("s", "other", 0).is_err());
        assert_eq!(client.stats().requests, 1);
    }

    #[test]
    fn reply_parsing() {
        assert_eq!(
            parse_reply(r#"{"choices":[{"message":{"content":"[[5]]"}}]}"#),
            Ok("[[5]]".into())
        );
        assert!(parse_reply("{}").is_err());
        assert!(parse_reply("not json").is_err());
        assert!(retryable(429) && retryable(503) && !retryable(401) && !retryable(400));
    }
}
