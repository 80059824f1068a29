//! GSM8K on the real test split and on the hand-written fixture.

mod common;

use sft_eval::gsm8k;

#[test]
fn gold_solutions_score_one_on_the_real_test_split() {
    let data = common::shared_data();
    let items = gsm8k::load(&data.join("gsm8k/test.jsonl")).expect("test split");
    assert_eq!(items.len(), 1319);
    let gold: Vec<String> = items.iter().map(|i| i.answer.clone()).collect();
    let r = gsm8k::score(&items, &gold).expect("score");
    assert_eq!(r.strict_match.correct, 1319);
    assert_eq!(r.flexible_extract.correct, 1319);
    assert_eq!(r.strict_match.accuracy.mean, 1.0);
    // Only the question, no answer: strict finds nothing; flexible finds numbers from the question
    // and is right only by accident.
    let questions: Vec<String> = items.iter().map(|i| i.question.clone()).collect();
    let r = gsm8k::score(&items, &questions).expect("score");
    assert_eq!(r.strict_match.correct, 0);
    assert_eq!(r.strict_match.invalid, 1319);
    assert!(r.flexible_extract.accuracy.mean < 0.1);
}

#[test]
fn fixture_completions_give_the_recorded_scores() {
    let dir = common::fixtures().join("gsm8k");
    let items = gsm8k::load(&dir.join("items.jsonl")).expect("items");
    let rows: Vec<serde_json::Value> =
        sft_eval::io::read_jsonl(&dir.join("completions.jsonl")).expect("completions");
    let completions: Vec<String> = rows
        .iter()
        .map(|r| {
            r["completion"]
                .as_str()
                .expect("completion string")
                .to_string()
        })
        .collect();
    let r = gsm8k::score(&items, &completions).expect("score");
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("expected.json")).expect("expected"),
    )
    .expect("json");
    assert_eq!(
        r.strict_match.correct as u64,
        expected["strict_correct"].as_u64().expect("n")
    );
    assert_eq!(
        r.flexible_extract.correct as u64,
        expected["flexible_correct"].as_u64().expect("n")
    );
    assert_eq!(
        r.flexible_numeric.correct as u64,
        expected["flexible_numeric_correct"].as_u64().expect("n")
    );
}

#[test]
fn malformed_file_names_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("bad.jsonl");
    std::fs::write(
        &p,
        "{\"question\": \"q\", \"answer\": \"#### 1\"}\n{\"question\": 3}\n",
    )
    .expect("write");
    let err = gsm8k::load(&p).expect_err("must fail").to_string();
    assert!(err.contains("bad.jsonl:2"), "{err}");
}
