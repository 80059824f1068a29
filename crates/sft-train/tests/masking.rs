//! Label construction: assistant-only, every turn, exact or refused.

mod common;

use sft_train::{
    tokenize, ChatEncoder, EncodedChat, Error, MaskErrorPolicy, Overlong, Turn, IGNORE,
};

#[test]
fn labels_cover_every_assistant_turn_and_its_end_of_turn_only() {
    let recs = vec![common::record(
        "m:0",
        "m",
        &[
            ("system", "sys"),
            ("user", "hi"),
            ("assistant", "ab"),
            ("user", "more"),
            ("assistant", "c"),
        ],
    )];
    let (exs, rep) = tokenize(
        &recs,
        &common::ToyEncoder,
        100,
        Overlong::Truncate,
        MaskErrorPolicy::Error,
    )
    .unwrap();
    let ex = &exs[0];
    let enc = common::ToyEncoder;
    let trained: Vec<i64> = ex.labels.iter().copied().filter(|&l| l != IGNORE).collect();
    // "ab" + <eot>, "c" + <eot>; nothing from system or user turns.
    let want: Vec<i64> = enc
        .encode(&[Turn {
            role: "assistant".into(),
            content: "ab".into(),
        }])
        .unwrap()
        .ids[2..]
        .to_vec()
        .into_iter()
        .chain(
            enc.encode(&[Turn {
                role: "assistant".into(),
                content: "c".into(),
            }])
            .unwrap()
            .ids[2..]
                .to_vec(),
        )
        .collect();
    assert_eq!(trained, want);
    assert_eq!(rep.target_tokens, 5);
    let view = sft_train::dump::readable(ex, &enc);
    let spans: Vec<&str> = view
        .split('\u{27e6}')
        .skip(1)
        .map(|s| s.split('\u{27e7}').next().unwrap())
        .collect();
    assert_eq!(spans.len(), 2, "{view}");
    assert!(spans.iter().all(|s| s.ends_with("<eot>")), "{view}");
    assert_eq!(view.matches("<A>\u{27e6}").count(), 2, "{view}");
}

struct Broken;
impl ChatEncoder for Broken {
    fn encode(&self, messages: &[Turn]) -> Result<EncodedChat, String> {
        if messages[0].content == "bad" {
            return Err("assistant span not found in rendered text".into());
        }
        let ids = vec![1, 2, 3];
        let trained = if messages[0].content == "short" {
            vec![false, true]
        } else {
            vec![false, true, true]
        };
        Ok(EncodedChat { ids, trained })
    }
    fn decode(&self, _: &[i64]) -> String {
        String::new()
    }
}

#[test]
fn a_mask_that_cannot_be_computed_is_an_error_or_a_counted_skip() {
    let recs = vec![
        common::record("s:0", "s", &[("user", "fine"), ("assistant", "x")]),
        common::record("s:1", "s", &[("user", "bad"), ("assistant", "x")]),
        common::record("s:2", "s", &[("user", "short"), ("assistant", "x")]),
        common::record("s:3", "s", &[("user", "no assistant")]),
    ];
    let err = tokenize(
        &recs,
        &Broken,
        10,
        Overlong::Truncate,
        MaskErrorPolicy::Error,
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::Mask { record_id, .. } if record_id == "s:1"),
        "{err}"
    );
    let (exs, rep) = tokenize(
        &recs,
        &Broken,
        10,
        Overlong::Truncate,
        MaskErrorPolicy::Skip,
    )
    .unwrap();
    assert_eq!(exs.len(), 1);
    assert_eq!(rep.mask_errors, vec!["s:1", "s:2", "s:3"]);
}

#[test]
fn overlong_records_are_truncated_or_dropped_and_counted() {
    let long = "x".repeat(50);
    let recs = vec![
        common::record("o:0", "o", &[("user", "q"), ("assistant", "short")]),
        common::record("o:1", "o", &[("user", "q"), ("assistant", &long)]),
        common::record("o:2", "o", &[("user", &long), ("assistant", "a")]),
    ];
    let (exs, rep) = tokenize(
        &recs,
        &common::ToyEncoder,
        20,
        Overlong::Truncate,
        MaskErrorPolicy::Error,
    )
    .unwrap();
    assert_eq!((rep.kept, rep.truncated, rep.dropped_no_target), (2, 2, 1));
    assert!(exs.iter().all(|e| e.input_ids.len() <= 20));
    let (exs, rep) = tokenize(
        &recs,
        &common::ToyEncoder,
        20,
        Overlong::Drop,
        MaskErrorPolicy::Error,
    )
    .unwrap();
    assert_eq!((exs.len(), rep.dropped_overlong), (1, 2));
    let err = tokenize(
        &recs[2..],
        &common::ToyEncoder,
        20,
        Overlong::Truncate,
        MaskErrorPolicy::Error,
    )
    .unwrap_err();
    assert!(matches!(err, Error::NoData(_)));
}

#[test]
fn jsonl_errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mix.jsonl");
    std::fs::write(
        &p,
        "{\"id\":\"a:0\",\"source\":\"a\",\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":\"r\"}],\"tags\":[]}\n\n{\"id\":\"a:1\",\"source\":\"a\",\"messages\":[{\"role\":\"gpt\",\"content\":\"q\"}]}\n",
    )
    .unwrap();
    let err = sft_train::read_jsonl(&p).unwrap_err().to_string();
    assert!(err.contains("mix.jsonl:3") && err.contains("gpt"), "{err}");
}
