//! Masking through `sft-chat` for every template, on multi-turn conversations
//! (tokenizer: `fixtures/tokenizer/tiny`).

mod common;

use sft_train::chat::TemplateEncoder;
use sft_train::{tokenize, ChatEncoder, MaskErrorPolicy, Overlong, IGNORE};

/// Decoded text of each maximal run of trained tokens.
fn trained_spans(ex: &sft_train::Example, enc: &dyn ChatEncoder) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 1;
    while i < ex.labels.len() {
        if ex.labels[i] == IGNORE {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < ex.labels.len() && ex.labels[j] != IGNORE {
            j += 1;
        }
        out.push(enc.decode(&ex.input_ids[i..j]));
        i = j;
    }
    out
}

#[test]
fn every_template_trains_all_assistant_turns_and_their_end_marker_only() {
    let tok = common::workspace().join("fixtures/tokenizer/tiny");
    let recs = vec![
        common::record(
            "t:0",
            "t",
            &[
                ("system", "You answer briefly."),
                ("user", "the quick fox"),
                ("assistant", "the brown dog"),
                ("user", "and then"),
                ("assistant", "the lazy fox jumps"),
            ],
        ),
        common::record(
            "t:1",
            "t",
            &[("user", "hello"), ("assistant", "hello there")],
        ),
    ];
    for (template, end) in [
        ("vicuna_v1.1", "</s>"),
        ("chatml", "<|im_end|>"),
        ("model", "</s>"),
    ] {
        let enc =
            TemplateEncoder::new(&tok, template).unwrap_or_else(|e| panic!("{template}: {e}"));
        let (exs, rep) = tokenize(&recs, &enc, 512, Overlong::Truncate, MaskErrorPolicy::Error)
            .unwrap_or_else(|e| panic!("{template}: {e}"));
        assert_eq!(rep.kept, 2, "{template}");
        let spans = trained_spans(&exs[0], &enc);
        assert_eq!(spans.len(), 2, "{template}: {spans:?}");
        assert!(
            spans[0].contains("the brown dog") && spans[0].trim_end().ends_with(end),
            "{template}: {spans:?}"
        );
        assert!(
            spans[1].contains("the lazy fox jumps") && spans[1].trim_end().ends_with(end),
            "{template}: {spans:?}"
        );
        for s in &spans {
            for not in [
                "quick",
                "and then",
                "briefly",
                "USER",
                "user",
                "<|im_start|>",
            ] {
                assert!(!s.contains(not), "{template}: `{not}` is trained in {s:?}");
            }
        }
        let one = trained_spans(&exs[1], &enc);
        assert_eq!(one.len(), 1, "{template}: {one:?}");
        assert!(one[0].contains("hello there"), "{template}: {one:?}");
    }
}

/// Pins how records become token ids and loss masks to [`sft_train::CHAT_SEMANTICS_VERSION`]:
/// SHA-256 of the `(input_ids, labels)` of two multi-turn conversations under every template.
/// If this fails after a change, the change altered what training sees. If that is intended,
/// bump `CHAT_SEMANTICS_VERSION` (so `sft-run` retrains stored stages instead of reusing them)
/// and set the pin to the new version and the printed hashes.
#[test]
fn chat_semantics_version_pins_the_ids_and_masks() {
    use sha2::{Digest, Sha256};
    const PIN: (u32, [(&str, &str); 3]) = (
        1,
        [
            (
                "vicuna_v1.1",
                "82c2c46fdd331f991eb716c624366a7d61dd9e40b06095b5fe2ac787fe314a67",
            ),
            (
                "chatml",
                "aaf2f4ef682faa3379b5764e8402d72f4dc99ace3efa4d8799833499937e8381",
            ),
            (
                "model",
                "9d67e51cbdcc836257a0f37f18ddd3e22827668deb17491aec89064d7c720ec2",
            ),
        ],
    );
    let tok = common::workspace().join("fixtures/tokenizer/tiny");
    let recs = vec![
        common::record(
            "t:0",
            "t",
            &[
                ("system", "You answer briefly."),
                ("user", "the quick fox"),
                ("assistant", "the brown dog"),
                ("user", "and then"),
                ("assistant", "the lazy fox jumps"),
            ],
        ),
        common::record(
            "t:1",
            "t",
            &[("user", "hello"), ("assistant", "hello there")],
        ),
    ];
    let got: Vec<(&str, String)> = PIN
        .1
        .iter()
        .map(|(template, _)| {
            let enc = TemplateEncoder::new(&tok, template).unwrap();
            let (exs, _) =
                tokenize(&recs, &enc, 512, Overlong::Truncate, MaskErrorPolicy::Error).unwrap();
            let v: Vec<(&[i64], &[i64])> = exs
                .iter()
                .map(|e| (e.input_ids.as_slice(), e.labels.as_slice()))
                .collect();
            let json = serde_json::to_string(&v).unwrap();
            (*template, hex::encode(Sha256::digest(json.as_bytes())))
        })
        .collect();
    let want: Vec<(&str, String)> = PIN.1.iter().map(|(t, h)| (*t, h.to_string())).collect();
    assert!(
        got == want && PIN.0 == sft_train::CHAT_SEMANTICS_VERSION,
        "token ids or masks changed (pinned for CHAT_SEMANTICS_VERSION {}, which is now {}). \
         If intended, bump sft_train::CHAT_SEMANTICS_VERSION and set the pin to (version, {got:?})",
        PIN.0,
        sft_train::CHAT_SEMANTICS_VERSION
    );
}
