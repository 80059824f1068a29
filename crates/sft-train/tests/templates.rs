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
