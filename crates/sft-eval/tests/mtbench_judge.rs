//! MT-Bench judging end to end against a fake OpenAI-compatible server on 127.0.0.1.
//!
//! Each judged answer carries a marker that tells the fake judge how to behave (score, 429 with
//! Retry-After, 500s, an unparsable verdict, ...), so the test checks scores, error counting,
//! retries, the cache (a rerun sends zero requests) and that the API key leaks nowhere.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sft_testkit::fake_openai::{FakeOpenAi, Received, Reply};

use sft_eval::mtbench::judge::{ApiKey, JudgeClient, JudgeConfig};
use sft_eval::mtbench::{self, JudgmentStatus, ModelAnswer};
use sft_eval::EvalError;

const KEY: &str = "sk-test-canary-7f3a9c01d2";
const KEY_ENV: &str = "SFT_EVAL_TEST_JUDGE_KEY";

#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    authorization: Option<String>,
    user_prompt: String,
}

type Behaviour = dyn Fn(&Seen, usize, bool) -> Reply + Send + Sync;

/// `sft_testkit`'s fake OpenAI server with a second phase the test can switch to.
struct FakeJudge {
    server: FakeOpenAi,
    url: String,
    phase2: Arc<AtomicBool>,
}

impl FakeJudge {
    fn start(behaviour: Box<Behaviour>) -> FakeJudge {
        let phase2 = Arc::new(AtomicBool::new(false));
        let p2 = phase2.clone();
        let server =
            FakeOpenAi::start(move |r, n| behaviour(&seen(r), n, p2.load(Ordering::Relaxed)));
        FakeJudge {
            url: server.url.clone(),
            server,
            phase2,
        }
    }

    fn requests(&self) -> Vec<Seen> {
        self.server.received().iter().map(seen).collect()
    }
}

fn seen(r: &Received) -> Seen {
    Seen {
        at: r.at,
        authorization: r.authorization.clone(),
        user_prompt: r.prompt_text(),
    }
}

fn ok(content: &str) -> Reply {
    let body = serde_json::json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]});
    (200, vec![], body.to_string())
}

/// The marker the judge reacts to: `T2:` markers in multi-turn prompts, `T1:` otherwise.
fn marker(prompt: &str) -> String {
    let tag = if prompt.contains("### Assistant A:") {
        "T2:"
    } else {
        "T1:"
    };
    prompt
        .rfind(tag)
        .map(|i| {
            prompt[i + 3..]
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

fn scripted(req: &Seen, attempt: usize, phase2: bool) -> Reply {
    if req.authorization.as_deref() != Some(&format!("Bearer {KEY}")) {
        return (401, vec![], "{\"error\": \"bad key\"}".into());
    }
    let m = marker(&req.user_prompt);
    match m.as_str() {
        "RATE_LIMITED" if attempt == 0 => {
            (429, vec![("Retry-After".into(), "1".into())], "{}".into())
        }
        "RATE_LIMITED" => ok("Fine after waiting. Rating: [[6]]"),
        "FLAKY_500" if attempt < 2 => (500, vec![], "{\"error\": \"boom\"}".into()),
        "FLAKY_500" => ok("Recovered. Rating: [[5]]"),
        "ALWAYS_500" if !phase2 => (503, vec![], "{\"error\": \"down\"}".into()),
        "ALWAYS_500" => ok("Back up. Rating: [[4]]"),
        "UNPARSABLE" => ok("I would give it nine out of ten."),
        "SINGLE_BRACKET" => ok("Decent. Rating: [7]"),
        "OUT_OF_RANGE" => ok("Amazing! [[11]]"),
        s if s.starts_with("SCORE_") => ok(&format!("Rating: [[{}]]", &s[6..])),
        other => ok(&format!("unknown marker {other:?}")),
    }
}

fn fixture_inputs() -> (
    Vec<mtbench::Question>,
    BTreeMap<u64, ModelAnswer>,
    BTreeMap<String, mtbench::JudgePrompt>,
) {
    let dir = common::fixtures().join("mt_bench");
    let questions = mtbench::load_questions(&dir.join("question.jsonl")).expect("questions");
    let refs = mtbench::load_references(&dir.join("reference_gpt-4.jsonl")).expect("references");
    let prompts = mtbench::load_judge_prompts(&dir.join("judge_prompts.jsonl")).expect("prompts");
    (questions, refs, prompts)
}

fn answers(markers: &[(u64, &str, &str)]) -> BTreeMap<u64, ModelAnswer> {
    markers
        .iter()
        .map(|&(q, t1, t2)| {
            (
                q,
                ModelAnswer::new(
                    q,
                    "toy-model",
                    vec![
                        format!("My answer. T1:{t1} end"),
                        format!("Second. T2:{t2} end"),
                    ],
                ),
            )
        })
        .collect()
}

fn config(url: &str, cache: &std::path::Path) -> JudgeConfig {
    JudgeConfig {
        endpoint: sft_complete::EndpointConfig {
            base_url: url.to_string(),
            model: "fake-judge".into(),
            api_key_env: KEY_ENV.into(),
            timeout_s: 10.0,
            max_retries: 2,
            backoff_base_s: 0.01,
            backoff_max_s: 0.05,
            retry_after_max_s: 5.0,
            parallel: 3,
            cache_path: Some(cache.to_path_buf()),
        },
        repeats: 1,
        ..JudgeConfig::default()
    }
}

#[test]
fn judging_end_to_end_with_errors_cache_and_secret_hygiene() {
    std::env::set_var(KEY_ENV, KEY);
    let (questions, refs, prompts) = fixture_inputs();
    let ids: Vec<u64> = questions.iter().map(|q| q.question_id).collect();
    assert_eq!(ids, [81, 101, 111, 131]);
    let answers = answers(&[
        (81, "SCORE_8", "SCORE_6"),
        (101, "RATE_LIMITED", "SINGLE_BRACKET"),
        (111, "FLAKY_500", "UNPARSABLE"),
        (131, "OUT_OF_RANGE", "ALWAYS_500"),
    ]);
    let requests =
        mtbench::build_judge_requests(&questions, &answers, "toy-model", &refs, &prompts)
            .expect("requests");
    assert_eq!(requests.len(), 8);
    // Reference-guided prompts for reasoning and math, with the GPT-4 reference inside.
    let names: Vec<(u64, u8, &str)> = requests
        .iter()
        .map(|r| (r.question_id, r.turn, r.prompt_name.as_str()))
        .collect();
    assert!(names.contains(&(81, 1, "single-v1")));
    assert!(names.contains(&(81, 2, "single-v1-multi-turn")));
    assert!(names.contains(&(101, 1, "single-math-v1")));
    assert!(names.contains(&(111, 2, "single-math-v1-multi-turn")));
    let r111 = &refs[&111].choices[0].turns;
    let t2 = requests
        .iter()
        .find(|r| r.question_id == 111 && r.turn == 2)
        .expect("111 turn 2");
    assert!(t2.user_prompt.contains(&r111[0]) && t2.user_prompt.contains(&r111[1]));
    assert!(t2.user_prompt.contains("T1:FLAKY_500") && t2.user_prompt.contains("T2:UNPARSABLE"));

    let server = FakeJudge::start(Box::new(scripted));
    let work = tempfile::tempdir().expect("tempdir");
    let cache = work.path().join("judge-cache.jsonl");
    let client = JudgeClient::new(config(&server.url, &cache)).expect("client");
    let judgments = client.judge_all(&requests);
    assert_eq!(judgments.len(), 8);
    let get = |q: u64, t: u8| {
        judgments
            .iter()
            .find(|j| j.question_id == q && j.turn == t)
            .expect("judgment")
    };
    assert_eq!(
        (get(81, 1).score, get(81, 1).status),
        (8.0, JudgmentStatus::Ok)
    );
    assert_eq!(
        (get(81, 2).score, get(81, 2).status),
        (6.0, JudgmentStatus::Ok)
    );
    assert_eq!(
        (get(101, 1).score, get(101, 1).status),
        (6.0, JudgmentStatus::Ok)
    );
    assert_eq!(
        (get(101, 2).score, get(101, 2).status),
        (7.0, JudgmentStatus::Ok)
    );
    assert_eq!(
        (get(111, 1).score, get(111, 1).status),
        (5.0, JudgmentStatus::Ok)
    );
    assert_eq!(
        (get(111, 2).score, get(111, 2).status),
        (-1.0, JudgmentStatus::ParseError)
    );
    assert_eq!(
        (get(131, 1).score, get(131, 1).status),
        (-1.0, JudgmentStatus::OutOfRange)
    );
    assert_eq!(
        (get(131, 2).score, get(131, 2).status),
        (-1.0, JudgmentStatus::RequestError)
    );
    assert_eq!(get(131, 2).judgment, "$ERROR$");
    assert_eq!(
        get(101, 1).judge,
        ("fake-judge".to_string(), "single-math-v1".to_string())
    );

    // Requests: 1 each for the plain ones, 429+retry, 500+500+ok, 3 attempts for the dead one.
    let seen = server.requests();
    assert_eq!(seen.len(), 13, "requests sent");
    assert_eq!(client.stats().requests, 13);
    assert_eq!(client.stats().failures, 1);
    let rl: Vec<Instant> = seen
        .iter()
        .filter(|s| marker(&s.user_prompt) == "RATE_LIMITED")
        .map(|s| s.at)
        .collect();
    assert_eq!(rl.len(), 2);
    assert!(
        rl[1] - rl[0] >= Duration::from_millis(950),
        "Retry-After: 1 not honoured: {:?}",
        rl[1] - rl[0]
    );
    assert!(seen
        .iter()
        .all(|s| s.authorization.as_deref() == Some(&format!("Bearer {KEY}"))));

    let summary = mtbench::summarize(&judgments, "toy-model", "fake-judge", 1);
    assert_eq!(summary.all.items, 8);
    assert_eq!(summary.all.scored, 5);
    assert_eq!(summary.all.turn1, Some((8.0 + 6.0 + 5.0) / 3.0));
    assert_eq!(summary.all.turn2, Some((6.0 + 7.0) / 2.0));
    assert_eq!(
        summary.all.overall,
        Some((8.0 + 6.0 + 6.0 + 7.0 + 5.0) / 5.0)
    );
    assert_eq!(summary.status_counts[&JudgmentStatus::RequestError], 1);
    assert_eq!(summary.per_category["writing"].overall, Some(7.0));
    assert!(!summary.valid);

    // Write outputs as the CLI does and check that the key is in none of them.
    let out = work.path().join("judgment.jsonl");
    sft_eval::io::write_jsonl(&out, &judgments).expect("write judgments");
    let summary_path = work.path().join("summary.json");
    sft_eval::io::write_json(&summary_path, &summary).expect("write summary");
    let line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&out)
            .expect("read")
            .lines()
            .next()
            .expect("a line"),
    )
    .expect("json");
    for key in [
        "question_id",
        "model",
        "judge",
        "user_prompt",
        "judgment",
        "score",
        "turn",
        "tstamp",
    ] {
        assert!(
            line.get(key).is_some(),
            "FastChat judgment key {key} missing"
        );
    }

    // Rerun: the endpoint is healthy now; only the failed item is requested again.
    server.phase2.store(true, Ordering::Relaxed);
    let client2 = JudgeClient::new(config(&server.url, &cache)).expect("client");
    let again = client2.judge_all(&requests);
    assert_eq!(server.requests().len(), 14);
    assert_eq!(client2.stats().cache_hits, 7);
    assert_eq!(
        again
            .iter()
            .find(|j| j.question_id == 131 && j.turn == 2)
            .expect("j")
            .score,
        4.0
    );
    // Everything cached now: a third run sends zero requests and gives identical scores.
    let client3 = JudgeClient::new(config(&server.url, &cache)).expect("client");
    let third = client3.judge_all(&requests);
    assert_eq!(server.requests().len(), 14, "rerun sent requests");
    assert_eq!(client3.stats().requests, 0);
    let scores = |js: &[mtbench::Judgment]| {
        js.iter()
            .map(|j| (j.question_id, j.turn, j.score.to_bits()))
            .collect::<Vec<_>>()
    };
    assert_eq!(scores(&again), scores(&third));

    for f in [&cache, &out, &summary_path] {
        let text = std::fs::read_to_string(f).expect("read output");
        assert!(!text.contains(KEY), "API key found in {}", f.display());
    }
    assert!(!format!("{client:?}").contains(KEY));
}

#[test]
fn unauthorized_is_not_retried_and_the_key_is_redacted() {
    // The server echoes the Authorization header into the error body, as some proxies do.
    let server = FakeJudge::start(Box::new(|req: &Seen, _, _| {
        (
            401,
            vec![],
            format!(
                "{{\"error\": \"invalid key {}\"}}",
                req.authorization.clone().unwrap_or_default()
            ),
        )
    }));
    let work = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&server.url, &work.path().join("cache.jsonl"));
    cfg.endpoint.max_retries = 5;
    let client = JudgeClient::with_key(cfg, Some(ApiKey::new(KEY))).expect("client");
    let err = client
        .complete("system", "user", 0)
        .expect_err("401 must fail");
    assert!(matches!(err, EvalError::Judge(_)));
    let msg = format!("{err} {err:?}");
    assert!(msg.contains("401") && msg.contains("not retried"), "{msg}");
    assert!(!msg.contains(KEY), "key leaked into the error: {msg}");
    assert!(msg.contains("<redacted>"), "{msg}");
    assert_eq!(server.requests().len(), 1, "401 was retried");
    let cache = std::fs::read_to_string(work.path().join("cache.jsonl")).unwrap_or_default();
    assert!(cache.is_empty(), "a failed request was cached");
}

#[test]
fn repeated_judging_takes_the_median() {
    // Successive attempts at the same prompt score 3, 9, 5: the item's score is the median 5.
    let server = FakeJudge::start(Box::new(|_: &Seen, attempt, _| {
        ok(&format!("[[{}]]", [3, 9, 5][attempt % 3]))
    }));
    let (questions, refs, prompts) = fixture_inputs();
    let q81: Vec<_> = questions
        .into_iter()
        .filter(|q| q.question_id == 81)
        .collect();
    let answers = answers(&[(81, "A", "B")]);
    let requests = mtbench::build_judge_requests(&q81, &answers, "toy-model", &refs, &prompts)
        .expect("requests");
    let work = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&server.url, &work.path().join("cache.jsonl"));
    cfg.repeats = 3;
    cfg.endpoint.parallel = 1;
    let client = JudgeClient::with_key(cfg, Some(ApiKey::new(KEY))).expect("client");
    let js = client.judge_all(&requests);
    assert_eq!(js.len(), 6);
    assert_eq!(server.requests().len(), 6);
    let s = mtbench::summarize(&js, "toy-model", "fake-judge", 3);
    assert_eq!(s.all.turn1, Some(5.0));
    assert_eq!(s.all.turn2, Some(5.0));
    assert!(s.valid);
}
