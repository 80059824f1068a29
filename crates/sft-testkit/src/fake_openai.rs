//! A fake OpenAI-compatible server on 127.0.0.1 for tests: every request is recorded and answered
//! by a closure, so a test can script 429s, 500s, malformed replies and check what was sent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: std::time::Instant,
    /// The path (`/v1/chat/completions`).
    pub path: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The JSON body (`Null` when it was not JSON).
    pub body: serde_json::Value,
}

impl Received {
    /// The prompt's text: the last message's content (chat) or `prompt` (completions).
    pub fn prompt_text(&self) -> String {
        if let Some(m) = self.body.get("messages").and_then(|m| m.as_array()) {
            return m
                .last()
                .and_then(|m| m.get("content"))
                .and_then(|c| c.as_str())
                .unwrap_or("")
                .to_string();
        }
        self.body
            .get("prompt")
            .and_then(|p| p.as_str())
            .unwrap_or("")
            .to_string()
    }
}

/// A reply: status, headers, body.
pub type Reply = (u16, Vec<(String, String)>, String);

/// A 200 chat-completions reply with `content`.
pub fn chat_reply(content: &str) -> Reply {
    let body = serde_json::json!({
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"completion_tokens": content.split_whitespace().count()},
    });
    (200, vec![], body.to_string())
}

/// A 200 completions reply with `text`.
pub fn text_reply(text: &str) -> Reply {
    let body = serde_json::json!({
        "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
        "usage": {"completion_tokens": text.split_whitespace().count()},
    });
    (200, vec![], body.to_string())
}

type Handler = dyn Fn(&Received, usize) -> Reply + Send + Sync;

/// The server; it stops when dropped.
pub struct FakeOpenAi {
    /// The base URL, ending in `/v1`.
    pub url: String,
    seen: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeOpenAi {
    /// Starts a server answering with `handler(request, n)`, where `n` counts earlier requests
    /// with the same prompt text (0 for the first), so retries can be scripted.
    pub fn start(handler: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static) -> Self {
        let handler: Box<Handler> = Box::new(handler);
        let server = tiny_http::Server::http("127.0.0.1:0").expect("bind a loopback port");
        let url = format!(
            "http://{}/v1",
            server.server_addr().to_ip().expect("an IP address")
        );
        let seen = Arc::new(Mutex::new(Vec::<Received>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let Ok(Some(mut req)) = server.recv_timeout(Duration::from_millis(20)) else {
                    continue;
                };
                let mut text = String::new();
                let _ = req.as_reader().read_to_string(&mut text);
                let received = Received {
                    at: std::time::Instant::now(),
                    path: req.url().to_string(),
                    authorization: req
                        .headers()
                        .iter()
                        .find(|h| h.field.equiv("Authorization"))
                        .map(|h| h.value.as_str().to_string()),
                    body: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
                };
                let n = {
                    let seen = seen2.lock().expect("lock");
                    let p = received.prompt_text();
                    seen.iter().filter(|r| r.prompt_text() == p).count()
                };
                let (status, headers, body) = handler(&received, n);
                seen2.lock().expect("lock").push(received);
                let mut resp = tiny_http::Response::from_string(body)
                    .with_status_code(status)
                    .with_header(
                        tiny_http::Header::from_bytes("Content-Type", "application/json")
                            .expect("header"),
                    );
                for (k, v) in headers {
                    resp.add_header(
                        tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("header"),
                    );
                }
                let _ = req.respond(resp);
            }
        });
        FakeOpenAi {
            url,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
