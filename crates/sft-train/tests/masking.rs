//! Label construction: assistant-only, every turn, exact or refused.

mod common;

use sft_chat::EncodedChat;
use sft_record::Message;
use sft_train::{tokenize, ChatEncoder, Error, MaskErrorPolicy, Overlong, IGNORE};

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
    let want: Vec<i64> = enc.encode(&[Message::assistant("ab")]).unwrap().labels()[2..]
        .to_vec()
        .into_iter()
        .chain(enc.encode(&[Message::assistant("c")]).unwrap().labels()[2..].to_vec())
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
    fn encode(&self, messages: &[Message]) -> Result<EncodedChat, sft_chat::ChatError> {
        if messages[0].content == "bad" {
            return Err(sft_chat::ChatError::Template(
                "assistant span not found in rendered text".into(),
            ));
        }
        let ids = vec![1, 2, 3];
        let trained = if messages[0].content == "short" {
            vec![false, true]
        } else {
            vec![false, true, true]
        };
        Ok(common::encoded(ids, trained))
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
    let err = sft_train::read_records(&p).unwrap_err().to_string();
    assert!(err.contains("mix.jsonl:3") && err.contains("gpt"), "{err}");
}

#[test]
fn parquet_written_by_sft_compose_reads_back_as_the_jsonl_does() {
    use sft_compose::{Message, Record, Role};
    let dir = tempfile::tempdir().unwrap();
    let records = vec![
        Record {
            id: "math:3".into(),
            source: "math".into(),
            messages: vec![
                Message::new(Role::System, "be brief"),
                Message::new(Role::User, "2+2?"),
                Message::new(Role::Assistant, "4"),
            ],
            tags: vec!["arithmetic".into()],
            metadata: [("orig_id".to_string(), serde_json::json!(7))].into(),
        },
        Record {
            id: "code:0".into(),
            source: "code".into(),
            messages: vec![
                Message::new(Role::User, "print hi"),
                Message::new(Role::Assistant, "print('hi')"),
                Message::new(Role::User, "again, in Rust"),
                Message::new(Role::Assistant, "println!(\"hi\");"),
            ],
            tags: vec![],
            metadata: Default::default(),
        },
    ];
    let pq = dir.path().join("mix.parquet");
    let jl = dir.path().join("mix.jsonl");
    sft_compose::write_parquet(&pq, &records).unwrap();
    sft_compose::write_jsonl(&jl, &records).unwrap();
    let from_pq = sft_train::read_records(&pq).unwrap();
    let from_jl = sft_train::read_records(&jl).unwrap();
    assert_eq!(from_pq, from_jl);
    assert_eq!(from_pq.len(), 2);
    assert_eq!(from_pq[1].id, "code:0");
    assert_eq!(from_pq[1].messages[3].content, "println!(\"hi\");");
    assert_eq!(from_pq[0].messages[0].role, Role::System);
}

#[test]
fn parquet_errors_name_file_and_row() {
    use std::sync::Arc;

    use arrow::array::{RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("messages", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["a:0"])),
            Arc::new(StringArray::from(vec!["a"])),
            Arc::new(StringArray::from(vec!["not a list"])),
        ],
    )
    .unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&p).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let err = sft_train::read_records(&p).unwrap_err().to_string();
    assert!(err.contains("bad.parquet:row 0"), "{err}");

    let other = dir.path().join("mix.csv");
    std::fs::write(&other, "a,b\n").unwrap();
    let err = sft_train::read_records(&other).unwrap_err().to_string();
    assert!(err.contains("mix.csv") && err.contains(".parquet"), "{err}");
}
