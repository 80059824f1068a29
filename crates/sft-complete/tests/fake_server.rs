//! The server path end to end against a fake OpenAI-compatible server on loopback: the
//! InsTag-style tagger (malformed replies, 429 with Retry-After, 500s, a request that fails for
//! good, the cache, the API key) and RFT sampling (shards, resume, settings check).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sft_complete::instag::{LlmTagger, Normalizer, TagOptions, TaggedRecord};
use sft_complete::rft::{request_seed, shard_path, SampleOptions};
use sft_complete::{ApiKey, EndpointConfig, ErrorKind, OpenAiClient, OpenAiCompleter};
use sft_compose::rft::{filter_files, FilterOptions, Question};
use sft_compose::{Message, Record};
use sft_testkit::fake_openai::{chat_reply, text_reply, FakeOpenAi, Reply};

const KEY: &str = "sk-test-canary-5d1e77a0c3";

fn completer(url: &str, cache: &std::path::Path) -> OpenAiCompleter {
    let config = EndpointConfig {
        base_url: url.to_string(),
        model: "fake-tagger".into(),
        api_key_env: "UNUSED_IN_THIS_TEST".into(),
        timeout_s: 10.0,
        max_retries: 2,
        backoff_base_s: 0.01,
        backoff_max_s: 0.05,
        retry_after_max_s: 5.0,
        parallel: 3,
        cache_path: Some(cache.to_path_buf()),
    };
    OpenAiCompleter::new(OpenAiClient::with_key(config, Some(ApiKey::new(KEY))).expect("client"))
}

fn record(i: usize, user: &str) -> Record {
    Record {
        id: format!("general:{i}"),
        source: "general".into(),
        messages: vec![Message::user(user), Message::assistant("...")],
        tags: vec![],
        metadata: [("orig_id".to_string(), serde_json::json!(format!("sg{i}")))]
            .into_iter()
            .collect(),
    }
}

fn error(status: u16) -> Reply {
    (
        status,
        vec![],
        format!("{{\"error\": \"status {status}\"}}"),
    )
}

#[test]
fn tagging_through_a_server_with_failures_cache_and_a_secret_key() {
    let healed = Arc::new(AtomicBool::new(false));
    let healed2 = healed.clone();
    let server = FakeOpenAi::start(move |req, n| {
        let q = req.prompt_text();
        if req.authorization.as_deref() != Some(&format!("Bearer {KEY}")) {
            return error(401);
        }
        if q.starts_with("ok:") {
            chat_reply("Here you go:\n```json\n[{\"tag\": \"Python Programming\", \"explanation\": \"asks for code\"},\n {\"tag\": \"Code-Generation!\", \"explanation\": \"wants a function\"}]\n```")
        } else if q.starts_with("limited:") {
            if n == 0 {
                (
                    429,
                    vec![("Retry-After".into(), "1".into())],
                    "{\"error\": \"slow down\"}".into(),
                )
            } else {
                chat_reply("{\"tag\": \"Mathematics\", \"explanation\": \"a sum\"}")
            }
        } else if q.starts_with("flaky:") {
            if n < 2 {
                error(500)
            } else {
                chat_reply("[{\"tag\": \"travel planning\", \"explanation\": \"a trip\"}] I hope these tags help.")
            }
        } else if q.starts_with("never:") {
            chat_reply("The user wants a poem; tags: poetry, creativity.")
        } else if q.starts_with("once:") {
            if n == 0 {
                chat_reply("{\"tag\": \"cooking\", \"explanation\": ")
            } else {
                chat_reply("{\"tag\": \"Cooking\", \"explanation\": \"a recipe\"}\n{\"tag\": \"recipes\", \"explanation\": \"asks for one\"}")
            }
        } else if q.starts_with("dead:") {
            if healed2.load(Ordering::Relaxed) {
                chat_reply("[\"dead tag\"]")
            } else {
                error(503)
            }
        } else {
            error(400)
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache.jsonl");
    let records = vec![
        record(0, "ok: write a python function"),
        record(1, "limited: what is 2+2"),
        record(2, "flaky: plan a trip"),
        record(3, "never: a poem please"),
        record(4, "once: a recipe for bread"),
        record(5, "dead: anything"),
    ];
    let options = TagOptions {
        parse_retries: 2,
        ..TagOptions::default()
    };
    let c = completer(&server.url, &cache);
    let tagger = LlmTagger::new(&c, options.clone(), Normalizer::default(), 1).expect("tagger");
    let start = Instant::now();
    let (lines, stats) = tagger.tag_all(&records, false);
    let elapsed = start.elapsed();

    let by_id = |id: &str| -> &TaggedRecord { lines.iter().find(|l| l.id == id).expect("line") };
    let tags = |id: &str| -> Vec<String> { by_id(id).tags.iter().map(|t| t.tag.clone()).collect() };
    assert_eq!(lines.len(), 6);
    assert_eq!(
        lines.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
        [
            "general:0",
            "general:1",
            "general:2",
            "general:3",
            "general:4",
            "general:5"
        ],
        "input order"
    );
    assert_eq!(tags("general:0"), ["python program", "code generat"]);
    assert_eq!(by_id("general:0").tags[1].raw, "Code-Generation!");
    assert_eq!(by_id("general:0").tags[0].explanation, "asks for code");
    assert_eq!(by_id("general:0").orig_id.as_deref(), Some("sg0"));
    assert_eq!(tags("general:1"), ["mathemat"]);
    assert_eq!(tags("general:2"), ["travel plan"]);
    assert_eq!(tags("general:4"), ["cook", "recip"]);
    assert_eq!(by_id("general:3").status, "failed");
    assert!(by_id("general:3")
        .error
        .as_deref()
        .unwrap_or("")
        .contains("no JSON"));
    assert_eq!(by_id("general:5").status, "failed");
    assert!(by_id("general:5")
        .error
        .as_deref()
        .unwrap_or("")
        .contains("503"));
    assert_eq!(
        (
            stats.records,
            stats.tagged,
            stats.parse_failures,
            stats.request_failures
        ),
        (6, 4, 1, 1)
    );
    // never: 1 + 2 retries; once: 1 + 1.
    assert_eq!(stats.parse_retries, 3);
    assert_eq!(stats.completions, 6 + 3);
    assert_eq!(stats.top_tags.len(), 6);
    assert_eq!(stats.tags_per_record.get(&2), Some(&2));

    // Retry-After was honoured, 5xx retried, the dead request given up after 1 + 2 attempts.
    assert!(elapsed >= Duration::from_millis(950), "{elapsed:?}");
    let seen = server.received();
    let count = |prefix: &str| {
        seen.iter()
            .filter(|r| r.prompt_text().starts_with(prefix))
            .count()
    };
    assert_eq!(
        (
            count("ok:"),
            count("limited:"),
            count("flaky:"),
            count("never:"),
            count("once:"),
            count("dead:")
        ),
        (1, 2, 3, 3, 2, 3)
    );
    assert!(seen.iter().all(|r| r.path == "/v1/chat/completions"));
    let first = &seen[0].body;
    assert_eq!(first["model"], "fake-tagger");
    assert_eq!(first["messages"][0]["role"], "system");
    assert!(first["messages"][0]["content"]
        .as_str()
        .unwrap_or("")
        .starts_with("You are a helpful assistant. Please identify tags of user intentions"));
    assert_eq!(first["temperature"], 0.0);

    // Written where compose reads it.
    let file = dir.path().join("tags.jsonl");
    sft_complete::instag::write_tag_file(&file, &lines).expect("write");
    let tag_file = sft_compose::load_tag_file(&file).expect("compose reads the tag file");
    assert_eq!(
        tag_file.tags["general:0"],
        ["python program", "code generat"]
    );
    assert!(tag_file.tags["general:3"].is_empty());

    // A rerun sends only what failed for good; a third run sends nothing.
    healed.store(true, Ordering::Relaxed);
    let before = server.received().len();
    let c2 = completer(&server.url, &cache);
    let (lines2, stats2) = LlmTagger::new(&c2, options.clone(), Normalizer::default(), 1)
        .expect("tagger")
        .tag_all(&records, false);
    assert_eq!(
        server.received().len() - before,
        1,
        "only the dead request is sent again"
    );
    assert_eq!(stats2.request_failures, 0);
    assert_eq!(lines2[5].tags[0].tag, "dead tag");
    assert_eq!(lines2[..5], lines[..5]);
    let before = server.received().len();
    let c3 = completer(&server.url, &cache);
    let (_, stats3) = LlmTagger::new(&c3, options, Normalizer::default(), 2)
        .expect("tagger")
        .tag_all(&records, false);
    assert_eq!(
        server.received().len(),
        before,
        "a rerun sends zero requests"
    );
    assert_eq!(stats3.cached, stats3.completions);
    // Minimum frequency 2: every tag here is on one record only.
    assert_eq!(stats3.tagged, 5);
    assert_eq!(stats3.below_min_frequency, stats3.distinct_normalized);

    // The key is in no file and no debug output.
    for f in [&cache, &file] {
        let text = std::fs::read_to_string(f).expect("read");
        assert!(!text.contains(KEY), "API key found in {}", f.display());
    }
    assert!(!format!("{c:?} {:?}", stats).contains(KEY));
}

#[test]
fn a_rejected_key_is_an_auth_error_and_is_not_retried() {
    let server = FakeOpenAi::start(|req, _| {
        (
            401,
            vec![],
            format!(
                "{{\"error\": \"bad key {}\"}}",
                req.authorization.clone().unwrap_or_default()
            ),
        )
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let c = completer(&server.url, &dir.path().join("c.jsonl"));
    let req = sft_complete::instag::tag_request("q", &TagOptions::default(), 0);
    let out = sft_complete::Completer::complete(&c, &[req]);
    let e = out.into_iter().next().expect("one").expect_err("401");
    assert_eq!(e.kind(), ErrorKind::Auth);
    let msg = format!("{e} {e:?}");
    assert!(!msg.contains(KEY) && msg.contains("<redacted>"), "{msg}");
    assert_eq!(server.received().len(), 1);
}

fn questions(dir: &std::path::Path) -> (std::path::PathBuf, Vec<Question>) {
    let qs: Vec<Question> = (1..=3)
        .map(|n| Question {
            query: format!("What is {n} plus {n}?"),
            response: format!("{n}+{n}=<<{n}+{n}={}>>{}\n#### {}", 2 * n, 2 * n, 2 * n),
        })
        .collect();
    let path = dir.join("questions.jsonl");
    let text: String = qs
        .iter()
        .map(|q| serde_json::json!({"question": q.query, "answer": q.response}).to_string() + "\n")
        .collect();
    std::fs::write(&path, text).expect("write questions");
    (path, qs)
}

#[test]
fn rft_sampling_through_a_server_resumes_and_feeds_the_filter() {
    let options = SampleOptions {
        k: 3,
        seed: 11,
        chunk: 2,
        ..SampleOptions::default()
    };
    let broken = Arc::new(AtomicBool::new(true));
    let broken2 = broken.clone();
    let seed = options.seed;
    let server = FakeOpenAi::start(move |req, _| {
        let prompt = req.prompt_text();
        let n: i64 = prompt
            .split("What is ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|d| d.parse().ok())
            .unwrap_or(0);
        let s = req.body["seed"].as_u64().unwrap_or(0);
        let sample = (0..3).find(|&i| (0..3).any(|q| request_seed(seed, i, q) == s));
        if sample == Some(1) && broken2.load(Ordering::Relaxed) {
            return error(500);
        }
        match sample {
            // Sample 0: correct; sample 1: correct in other words (same equations);
            // sample 2: a wrong answer.
            Some(0) => text_reply(&format!(
                " {n}+{n}=<<{n}+{n}={}>>{}.\n#### {}",
                2 * n,
                2 * n,
                2 * n
            )),
            Some(1) => text_reply(&format!(
                " We add: <<{n}+{n}={}>>{} in all.\n#### {}",
                2 * n,
                2 * n,
                2 * n
            )),
            _ => text_reply(&format!(" It is {}.\n#### {}", 2 * n + 1, 2 * n + 1)),
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (qpath, qs) = questions(dir.path());
    let out = dir.path().join("cand");
    let c = completer(&server.url, &out.join("cache").join("requests.jsonl"));
    // Shard 1's requests fail for good: shards 0 and 2 are written, the run fails naming shard 1.
    let e = sft_complete::rft::sample(&c, &qs, &qpath, &options, &out, false)
        .expect_err("shard 1 cannot complete");
    assert!(e.to_string().contains("1 shard(s) incomplete ([1]"), "{e}");
    assert!(shard_path(&out, 0).is_file() && shard_path(&out, 2).is_file());
    assert!(!shard_path(&out, 1).exists());
    let mtime = |i| {
        std::fs::metadata(shard_path(&out, i))
            .and_then(|m| m.modified())
            .expect("mtime")
    };
    let (m0, m2) = (mtime(0), mtime(2));
    let body = &server.received()[0].body;
    assert_eq!(server.received()[0].path, "/v1/completions");
    assert!(body["prompt"]
        .as_str()
        .unwrap_or("")
        .starts_with("Below is an instruction that describes a task."));
    assert_eq!(
        (body["temperature"].as_f64(), body["max_tokens"].as_u64()),
        (Some(0.7), Some(256))
    );

    // The rerun sends only shard 1's three requests.
    broken.store(false, Ordering::Relaxed);
    let before = server.received().len();
    let report = sft_complete::rft::sample(&c, &qs, &qpath, &options, &out, false).expect("resume");
    assert_eq!(server.received().len() - before, 3);
    assert_eq!((report.shards_written, report.shards_skipped), (1, 2));
    assert_eq!(
        (mtime(0), mtime(2)),
        (m0, m2),
        "finished shards are not redone"
    );

    // Other settings into the same directory are refused.
    let mut other = options.clone();
    other.sampling.temperature = 1.0;
    let e = sft_complete::rft::sample(&c, &qs, &qpath, &other, &out, false).expect_err("mismatch");
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("sampling"), "{e}");

    // The filter keeps, per question, the gold answer and one path per distinct equation list.
    let (records, stats) = filter_files(&qpath, &out, FilterOptions::default()).expect("filter");
    assert_eq!(stats.candidates, 9);
    assert_eq!(stats.wrong_answer, 3);
    assert_eq!(stats.correct, 6);
    assert_eq!(stats.kept, 3);
    assert_eq!(records.len(), 6);
}
