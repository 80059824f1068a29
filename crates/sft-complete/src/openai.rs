//! A client for any OpenAI-compatible server (`/v1/chat/completions` and `/v1/completions`:
//! vLLM, llama.cpp's server, hosted APIs), and [`OpenAiCompleter`], the [`Completer`] over it.
//!
//! - **Key.** The API key comes from an environment variable whose *name* is configured;
//!   [`ApiKey`] has no `Display`, its `Debug` prints `<redacted>`, and every error text is
//!   scrubbed of it. It is sent only as the `Authorization` header.
//! - **Retries.** 429, 408 and 5xx responses and transport errors are retried with exponential
//!   backoff and jitter, honouring `Retry-After` (seconds); any other status fails at once
//!   (401/403 are [`ErrorKind::Auth`](crate::ErrorKind::Auth)).
//! - **Cache.** An append-only JSONL file keyed by SHA-256 of a canonical JSON of everything that
//!   decides the reply (model, route, prompt, sampling, seed), fsynced per record; a torn last
//!   line is skipped. A rerun over the same requests sends nothing.
//! - **Parallelism.** `parallel` worker threads share one connection pool.

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
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::completer::{Completer, Completion, CompletionRequest, Prompt};
use crate::error::{Error, Result};

/// An API key. It cannot be printed: `Debug` shows `<redacted>` and there is no `Display`.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Reads the key from the environment variable `var`. A missing or empty variable is `None`
    /// (local servers need no key).
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

    /// `text` with every occurrence of the key replaced by `<redacted>`.
    pub fn redact(&self, text: &str) -> String {
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

/// Where the server is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointConfig {
    /// Base URL up to and including `/v1` (e.g. `http://127.0.0.1:8000/v1`).
    pub base_url: String,
    /// Model name sent in each request.
    pub model: String,
    /// Name of the environment variable holding the API key (never the key itself).
    pub api_key_env: String,
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
    /// Reply cache (append-only JSONL); `None` disables caching.
    pub cache_path: Option<PathBuf>,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            base_url: "https://api.openai.com/v1".into(),
            model: "gpt-4".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            timeout_s: 60.0,
            max_retries: 8,
            backoff_base_s: 1.0,
            backoff_max_s: 60.0,
            retry_after_max_s: 300.0,
            parallel: 4,
            cache_path: None,
        }
    }
}

/// The two request shapes of the OpenAI API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/chat/completions`; the text is `choices[0].message.content`.
    Chat,
    /// `/completions`; the text is `choices[0].text`.
    Completions,
}

impl Route {
    fn path(self) -> &'static str {
        match self {
            Route::Chat => "/chat/completions",
            Route::Completions => "/completions",
        }
    }
}

/// One cache line. The field aliases read judge caches written before the client was shared.
#[derive(Serialize, Deserialize)]
struct CacheEntry {
    key: String,
    #[serde(alias = "judge_model")]
    model: String,
    #[serde(alias = "judgment")]
    reply: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    finish_reason: Option<String>,
}

/// A reply's text and why it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The completion text.
    pub text: String,
    /// `choices[0].finish_reason`, when given.
    pub finish_reason: Option<String>,
    /// `usage.completion_tokens`, when given (not cached).
    pub tokens: Option<usize>,
    /// Served from the cache.
    pub cached: bool,
}

/// Counters of what a client did, for reports and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStats {
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
pub struct OpenAiClient {
    config: EndpointConfig,
    key: Option<ApiKey>,
    agent: ureq::Agent,
    cache: Mutex<HashMap<String, (String, Option<String>)>>,
    cache_file: Option<Mutex<File>>,
    rng: Mutex<ChaCha8Rng>,
    requests: AtomicUsize,
    cache_hits: AtomicUsize,
    retries: AtomicUsize,
    failures: AtomicUsize,
}

impl std::fmt::Debug for OpenAiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiClient")
            .field("config", &self.config)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Whether a status is worth retrying.
pub fn retryable(status: u16) -> bool {
    status == 429 || status == 408 || status >= 500
}

/// The cache key of a canonical request identity: hex SHA-256 of its compact JSON.
pub fn cache_key(identity: &Value) -> String {
    hex::encode(Sha256::digest(identity.to_string().as_bytes()))
}

impl OpenAiClient {
    /// A client reading its key from `config.api_key_env` and loading the cache file if any.
    pub fn new(config: EndpointConfig) -> Result<OpenAiClient> {
        let key = ApiKey::from_env(&config.api_key_env);
        if key.is_none() {
            tracing::debug!(var = %config.api_key_env, "API key variable is unset or empty; sending no Authorization header");
        }
        Self::with_key(config, key)
    }

    /// A client with an explicit key (tests, or keys read from a 0600 file by the caller).
    pub fn with_key(config: EndpointConfig, key: Option<ApiKey>) -> Result<OpenAiClient> {
        if config.parallel == 0 {
            return Err(Error::Config("parallel must be at least 1".into()));
        }
        if !(config.timeout_s > 0.0 && config.backoff_base_s >= 0.0 && config.backoff_max_s >= 0.0)
        {
            return Err(Error::Config(
                "the timeout must be positive and the backoff non-negative".into(),
            ));
        }
        if !(config.base_url.starts_with("http://") || config.base_url.starts_with("https://")) {
            return Err(Error::Config(format!(
                "base URL {:?} must start with http:// or https://",
                config.base_url
            )));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs_f64(config.timeout_s)))
            .http_status_as_error(false)
            .build()
            .into();
        let (cache, cache_file) = match &config.cache_path {
            Some(p) => {
                let map = load_cache(p)?;
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                }
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| Error::io(p, e))?;
                (map, Some(Mutex::new(file)))
            }
            None => (HashMap::new(), None),
        };
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Ok(OpenAiClient {
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
    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// What the client has done so far.
    pub fn stats(&self) -> ClientStats {
        ClientStats {
            requests: self.requests.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    /// Whether a reply for `key` is cached.
    pub fn is_cached(&self, key: &str) -> bool {
        self.cache
            .lock()
            .map(|c| c.contains_key(key))
            .unwrap_or(false)
    }

    /// `text` with the API key scrubbed out.
    pub fn redact(&self, text: &str) -> String {
        match &self.key {
            Some(k) => k.redact(text),
            None => text.to_string(),
        }
    }

    /// Sends `body` (the `model` field is set from the configuration) to `route`, or serves the
    /// reply cached under `key`. A reply that has no text is an error and is not cached.
    pub fn call(&self, route: Route, body: &Value, key: &str) -> Result<Reply> {
        if let Some((text, finish_reason)) =
            self.cache.lock().ok().and_then(|c| c.get(key).cloned())
        {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Reply {
                text,
                finish_reason,
                tokens: None,
                cached: true,
            });
        }
        let reply = self.request_with_retries(route, body).inspect_err(|_| {
            self.failures.fetch_add(1, Ordering::Relaxed);
        })?;
        self.store(key, &reply)?;
        Ok(reply)
    }

    /// Stores a reply under `key` in memory and in the cache file.
    fn store(&self, key: &str, reply: &Reply) -> Result<()> {
        if let Ok(mut c) = self.cache.lock() {
            c.insert(
                key.to_string(),
                (reply.text.clone(), reply.finish_reason.clone()),
            );
        }
        if let (Some(file), Some(path)) = (&self.cache_file, &self.config.cache_path) {
            let entry = CacheEntry {
                key: key.into(),
                model: self.config.model.clone(),
                reply: reply.text.clone(),
                finish_reason: reply.finish_reason.clone(),
            };
            let mut line = serde_json::to_vec(&entry)
                .map_err(|e| Error::io(path, std::io::Error::other(e)))?;
            line.push(b'\n');
            let mut f = file
                .lock()
                .map_err(|_| Error::Config("cache lock poisoned".into()))?;
            f.write_all(&line).map_err(|e| Error::io(path, e))?;
            f.sync_data().map_err(|e| Error::io(path, e))?;
        }
        Ok(())
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base =
            (self.config.backoff_base_s * 2f64.powi(attempt as i32)).min(self.config.backoff_max_s);
        let r = self.rng.lock().map(|mut r| r.next_u32()).unwrap_or(0) as f64 / u32::MAX as f64;
        // Equal jitter: half fixed, half random.
        Duration::from_secs_f64(base * (0.5 + 0.5 * r))
    }

    fn request_with_retries(&self, route: Route, body: &Value) -> Result<Reply> {
        let url = format!(
            "{}{}",
            self.config.base_url.trim_end_matches('/'),
            route.path()
        );
        let mut body = body.clone();
        if let Some(obj) = body.as_object_mut() {
            obj.insert("model".into(), Value::String(self.config.model.clone()));
        }
        let body = body.to_string();
        let mut last_error = String::new();
        let mut last_status = None;
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
                        return parse_reply(route, &text)
                            .map_err(|m| Error::Reply(self.redact(&m)));
                    }
                    last_status = Some(status);
                    last_error = format!("HTTP {status} from {url}: {}", snippet(&text));
                    if !retryable(status) {
                        return Err(Error::Request {
                            status: Some(status),
                            message: self.redact(&last_error) + " (not retried)",
                        });
                    }
                    match retry_after {
                        Some(s) => Duration::from_secs_f64(s.min(self.config.retry_after_max_s)),
                        None => self.backoff(attempt),
                    }
                }
                Err(e) => {
                    last_status = None;
                    last_error = format!("{url}: {e}");
                    self.backoff(attempt)
                }
            };
            if attempt < self.config.max_retries {
                tracing::warn!(attempt, wait_s = wait.as_secs_f64(), error = %self.redact(&last_error), "request failed; retrying");
                std::thread::sleep(wait);
            }
        }
        Err(Error::Request {
            status: last_status,
            message: format!(
                "{} (gave up after {} attempts)",
                self.redact(&last_error),
                self.config.max_retries + 1
            ),
        })
    }

    /// Runs `job(i)` for `i in 0..n` on `config.parallel` threads, results in index order.
    pub fn parallel_map<T: Send>(&self, n: usize, job: impl Fn(usize) -> T + Sync) -> Vec<T> {
        let next = AtomicUsize::new(0);
        let out: Mutex<Vec<Option<T>>> = Mutex::new((0..n).map(|_| None).collect());
        std::thread::scope(|s| {
            for _ in 0..self.config.parallel.min(n.max(1)) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let r = job(i);
                    if let Ok(mut o) = out.lock() {
                        o[i] = Some(r);
                    }
                });
            }
        });
        out.into_inner()
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .collect()
    }
}

fn snippet(text: &str) -> String {
    let t: String = text.chars().take(300).collect();
    t.replace('\n', " ")
}

/// The text of a 200 reply: `choices[0].message.content` (chat) or `choices[0].text`.
pub fn parse_reply(route: Route, text: &str) -> std::result::Result<Reply, String> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| format!("malformed reply ({e}): {}", snippet(text)))?;
    let pointer = match route {
        Route::Chat => "/choices/0/message/content",
        Route::Completions => "/choices/0/text",
    };
    let content = v
        .pointer(pointer)
        .and_then(|c| c.as_str())
        .ok_or_else(|| format!("reply has no {pointer}: {}", snippet(text)))?;
    Ok(Reply {
        text: content.to_string(),
        finish_reason: v
            .pointer("/choices/0/finish_reason")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        tokens: v
            .pointer("/usage/completion_tokens")
            .and_then(|c| c.as_u64())
            .map(|n| n as usize),
        cached: false,
    })
}

fn load_cache(path: &Path) -> Result<HashMap<String, (String, Option<String>)>> {
    let mut map = HashMap::new();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(map),
        Err(e) => return Err(Error::io(path, e)),
    };
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<CacheEntry>(&line) {
            Ok(e) => {
                map.insert(e.key, (e.reply, e.finish_reason));
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

/// [`Completer`] over an [`OpenAiClient`]: chat prompts go to `/chat/completions`, text prompts
/// to `/completions`, with `temperature`, `top_p`, `max_tokens`, `stop` and `seed`.
#[derive(Debug)]
pub struct OpenAiCompleter {
    client: OpenAiClient,
}

impl OpenAiCompleter {
    /// A completer over `client`.
    pub fn new(client: OpenAiClient) -> Self {
        OpenAiCompleter { client }
    }

    /// The client (its stats, its configuration).
    pub fn client(&self) -> &OpenAiClient {
        &self.client
    }

    fn route_body_key(&self, req: &CompletionRequest) -> (Route, Value, String) {
        let s = &req.sampling;
        let (route, mut body) = match &req.prompt {
            Prompt::Chat(messages) => (
                Route::Chat,
                json!({"messages": messages.iter().map(|m| json!({"role": m.role.as_str(), "content": m.content})).collect::<Vec<_>>()}),
            ),
            Prompt::Text(text) => (Route::Completions, json!({ "prompt": text })),
        };
        if let Some(obj) = body.as_object_mut() {
            obj.insert("temperature".into(), json!(s.temperature));
            obj.insert("top_p".into(), json!(s.top_p));
            obj.insert("max_tokens".into(), json!(s.max_new_tokens));
            obj.insert("seed".into(), json!(req.seed));
            obj.insert("n".into(), json!(1));
            if !s.stop.is_empty() {
                obj.insert("stop".into(), json!(s.stop));
            }
        }
        let identity = json!({
            "model": self.client.config.model,
            "route": route.path(),
            "body": body,
        });
        (route, body, cache_key(&identity))
    }
}

impl Completer for OpenAiCompleter {
    fn model_name(&self) -> String {
        self.client.config.model.clone()
    }

    fn complete(&self, requests: &[CompletionRequest]) -> Vec<Result<Completion>> {
        self.client.parallel_map(requests.len(), |i| {
            let req = &requests[i];
            req.sampling.validate()?;
            let (route, body, key) = self.route_body_key(req);
            let reply = self.client.call(route, &body, &key)?;
            Ok(Completion {
                text: reply.text,
                finish_reason: reply.finish_reason,
                tokens: reply.tokens,
                cached: reply.cached,
            })
        })
    }

    fn uncached(&self, requests: &[CompletionRequest]) -> usize {
        requests
            .iter()
            .filter(|r| !self.client.is_cached(&self.route_body_key(r).2))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_never_shows_in_debug() {
        let k = ApiKey::new("sk-canary-123456");
        assert_eq!(format!("{k:?}"), "ApiKey(<redacted>)");
        let client =
            OpenAiClient::with_key(EndpointConfig::default(), Some(k.clone())).expect("client");
        assert!(!format!("{client:?}").contains("canary"));
        assert_eq!(
            k.redact("Bearer sk-canary-123456 bad"),
            "Bearer <redacted> bad"
        );
    }

    #[test]
    fn cache_survives_a_torn_last_line_and_reads_old_judge_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cache.jsonl");
        std::fs::write(
            &path,
            "{\"key\":\"old\",\"judge_model\":\"gpt-4\",\"judgment\":\"Rating: [[7]]\"}\n",
        )
        .expect("write");
        let cfg = EndpointConfig {
            base_url: "http://127.0.0.1:9/v1".into(),
            max_retries: 0,
            cache_path: Some(path.clone()),
            ..EndpointConfig::default()
        };
        let client = OpenAiClient::with_key(cfg.clone(), None).expect("client");
        let reply = Reply {
            text: "Rating: [[9]]".into(),
            finish_reason: Some("stop".into()),
            tokens: None,
            cached: false,
        };
        client.store("k1", &reply).expect("store");
        drop(client);
        // A crash mid-write leaves half a record.
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"key\": \"abc\", \"mo").expect("write");
        drop(f);
        let client = OpenAiClient::with_key(cfg, None).expect("torn line is tolerated");
        // Served from the cache: nothing listens on port 9, so a request would fail.
        let hit = client.call(Route::Chat, &json!({}), "k1").expect("cached");
        assert_eq!((hit.text.as_str(), hit.cached), ("Rating: [[9]]", true));
        assert_eq!(hit.finish_reason.as_deref(), Some("stop"));
        assert_eq!(
            client
                .call(Route::Chat, &json!({}), "old")
                .expect("old line")
                .text,
            "Rating: [[7]]"
        );
        assert_eq!(client.stats().requests, 0);
        let e = client.call(Route::Chat, &json!({}), "other").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Http);
        assert_eq!(client.stats().requests, 1);
    }

    #[test]
    fn reply_parsing() {
        let r = parse_reply(
            Route::Chat,
            r#"{"choices":[{"message":{"content":"[[5]]"},"finish_reason":"stop"}],"usage":{"completion_tokens":3}}"#,
        )
        .expect("chat");
        assert_eq!(r.text, "[[5]]");
        assert_eq!(r.tokens, Some(3));
        assert_eq!(
            parse_reply(Route::Completions, r#"{"choices":[{"text":"42"}]}"#)
                .expect("text")
                .text,
            "42"
        );
        assert!(parse_reply(
            Route::Completions,
            r#"{"choices":[{"message":{"content":"x"}}]}"#
        )
        .is_err());
        assert!(parse_reply(Route::Chat, "{}").is_err());
        assert!(parse_reply(Route::Chat, "not json").is_err());
        assert!(retryable(429) && retryable(503) && !retryable(401) && !retryable(400));
    }

    #[test]
    fn requests_with_other_seeds_or_prompts_have_other_keys() {
        let c = OpenAiCompleter::new(
            OpenAiClient::with_key(EndpointConfig::default(), None).expect("client"),
        );
        let req = CompletionRequest {
            prompt: Prompt::Text("Q".into()),
            sampling: crate::SamplingParams::greedy(8),
            seed: 1,
        };
        let key = |r: &CompletionRequest| c.route_body_key(r).2;
        let mut other_seed = req.clone();
        other_seed.seed = 2;
        let mut chat = req.clone();
        chat.prompt = Prompt::Chat(vec![sft_record::Message::user("Q")]);
        assert_eq!(key(&req), key(&req.clone()));
        assert_ne!(key(&req), key(&other_seed));
        assert_ne!(key(&req), key(&chat));
        assert_eq!(c.route_body_key(&chat).0, Route::Chat);
    }
}
