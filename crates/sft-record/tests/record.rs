//! The record model's serialized form and the JSONL reader/writer.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::io::Write;

use sft_record::{
    read_jsonl, read_records, write_atomic, write_json, write_jsonl, Error, ErrorKind, Message,
    Record, Role,
};

fn record() -> Record {
    Record {
        id: "math:0".into(),
        source: "math".into(),
        messages: vec![
            Message::system("Be brief."),
            Message::user("1+1?"),
            Message::assistant("2"),
        ],
        tags: vec!["math".into()],
        metadata: BTreeMap::new(),
    }
}

#[test]
fn roles_parse_only_their_names_and_round_trip() {
    for role in [Role::System, Role::User, Role::Assistant] {
        assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        let json = serde_json::to_string(&role).unwrap();
        assert_eq!(json, format!("\"{}\"", role.as_str()));
        assert_eq!(serde_json::from_str::<Role>(&json).unwrap(), role);
    }
    let err = "gpt".parse::<Role>().unwrap_err();
    assert_eq!(err.found, "gpt");
    assert!(err.to_string().contains("unknown role `gpt`"), "{err}");
    assert!("User".parse::<Role>().is_err());
    assert!(serde_json::from_str::<Role>("\"human\"").is_err());
}

#[test]
fn sharegpt_aliases_map_to_roles() {
    assert_eq!(Role::from_sharegpt(" Human "), Some(Role::User));
    assert_eq!(Role::from_sharegpt("user"), Some(Role::User));
    assert_eq!(Role::from_sharegpt("GPT"), Some(Role::Assistant));
    assert_eq!(Role::from_sharegpt("bing"), Some(Role::Assistant));
    assert_eq!(Role::from_sharegpt("System"), Some(Role::System));
    assert_eq!(Role::from_sharegpt("narrator"), None);
}

#[test]
fn record_serialized_form_is_the_chat_format() {
    let mut r = record();
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        r#"{"id":"math:0","source":"math","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"1+1?"},{"role":"assistant","content":"2"}],"tags":["math"]}"#
    );
    r.metadata
        .insert("orig_id".into(), serde_json::json!("abc"));
    let text = serde_json::to_string(&r).unwrap();
    assert!(
        text.ends_with(r#""tags":["math"],"metadata":{"orig_id":"abc"}}"#),
        "{text}"
    );
    let back: Record = serde_json::from_str(&text).unwrap();
    assert_eq!(back, r);
    // tags and metadata may be absent, extra fields are ignored.
    let minimal: Record = serde_json::from_str(
        r#"{"id":"a:1","source":"a","messages":[{"role":"user","content":"x"}],"extra":1}"#,
    )
    .unwrap();
    assert!(minimal.tags.is_empty() && minimal.metadata.is_empty());
}

#[test]
fn read_jsonl_accepts_bom_crlf_blank_lines_and_gzip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let line = serde_json::to_string(&record()).unwrap();
    let text = format!("\u{feff}{line}\r\n\r\n  \n{line}\r\n");
    let plain = dir.join("a.jsonl");
    std::fs::write(&plain, &text).unwrap();
    let got = read_records(&plain).unwrap();
    assert_eq!(got, vec![record(), record()]);

    let gz = dir.join("a.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(text.as_bytes()).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    assert_eq!(read_records(&gz).unwrap(), vec![record(), record()]);
}

#[test]
fn a_bad_line_names_path_and_line_and_keeps_serdes_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let p = dir.join("bad.jsonl");
    let good = serde_json::to_string(&record()).unwrap();
    let bad = good.replace("\"assistant\"", "\"gpt\"");
    std::fs::write(&p, format!("{good}\n\n{bad}\n")).unwrap();
    let err = read_records(&p).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Data);
    assert_eq!(err.line(), Some(3));
    assert_eq!(err.path(), p.as_path());
    let text = err.to_string();
    assert!(text.starts_with(&format!("{}:3: ", p.display())), "{text}");
    assert!(text.contains("unknown role `gpt`"), "{text}");
    let source = err.source().expect("serde error as source");
    assert!(source.downcast_ref::<serde_json::Error>().is_some());

    std::fs::write(&p, b"{\"a\":1}\n\xff\xfe\n").unwrap();
    let err = read_jsonl::<serde_json::Value>(&p).unwrap_err();
    assert!(matches!(err, Error::Utf8 { line: 2, .. }), "{err:?}");

    let missing = dir.join("missing.jsonl");
    let err = read_records(&missing).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.to_string().contains("missing.jsonl"), "{err}");
}

#[test]
fn write_jsonl_round_trips_and_leaves_no_temporary_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let p = dir.join("out.jsonl");
    let records = vec![record(), record()];
    assert_eq!(write_jsonl(&p, &records).unwrap(), 2);
    let text = std::fs::read_to_string(&p).unwrap();
    assert_eq!(text.lines().count(), 2);
    assert!(text.ends_with("}\n"));
    assert_eq!(read_records(&p).unwrap(), records);
    write_json(&dir.join("one.json"), &record()).unwrap();
    assert!(std::fs::read_to_string(dir.join("one.json"))
        .unwrap()
        .ends_with("}\n"));
    assert_eq!(entries(&dir), vec!["one.json", "out.jsonl"]);
}

#[test]
fn a_failed_write_keeps_the_old_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let p = dir.join("out.jsonl");
    write_atomic(&p, b"old\n").unwrap();
    // A map with non-string keys cannot be JSON: the second item fails.
    let bad: Vec<BTreeMap<Vec<u8>, u8>> = vec![BTreeMap::new(), BTreeMap::from([(vec![1], 1)])];
    let err = write_jsonl(&p, &bad).unwrap_err();
    assert!(matches!(err, Error::Serialize { index: 1, .. }), "{err:?}");
    assert_eq!(std::fs::read(&p).unwrap(), b"old\n");
    assert_eq!(entries(&dir), vec!["out.jsonl"]);
}

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
