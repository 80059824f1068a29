//! sft-chat against python references (fixtures/tokenizer/reference.json, produced by
//! fixtures/tokenizer/gen_reference.py) and multi-turn masking for every template.

use std::path::PathBuf;

use sft_chat::{
    ChatError, ChatTemplate, ChatTokenizer, EncodedChat, GgufPreTokenizer, JinjaTemplate,
};
use sft_record::{Message, Role};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tokenizer")
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap())
        .unwrap()
}

fn strings(r: &serde_json::Value) -> Vec<String> {
    r["strings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect()
}

fn tiny() -> ChatTokenizer {
    ChatTokenizer::from_hf_dir(fixtures().join("tiny")).unwrap()
}

/// The real SmolLM2 GGUF; a missing asset fails the test ([`sft_testkit::smollm2_gguf`]).
fn smollm2() -> sft_gguf::GgufFile {
    sft_gguf::GgufFile::open(sft_testkit::smollm2_gguf()).unwrap()
}

fn conversations(r: &serde_json::Value) -> Vec<Vec<Message>> {
    r["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| serde_json::from_value(c.clone()).unwrap())
        .collect()
}

#[test]
fn tiny_tokenizer_matches_python_tokenizers() {
    let r = reference();
    let tok = tiny();
    assert_eq!(tok.bos().unwrap().text, "<s>");
    assert_eq!(tok.eos().unwrap().text, "</s>");
    assert!(tok.chat_template().is_some());
    for (s, want) in strings(&r).iter().zip(r["tiny"].as_array().unwrap()) {
        assert_eq!(tok.encode(s, true).unwrap(), ids(want), "{s:?}");
    }
}

#[test]
fn smollm2_gguf_tokenizer_matches_transformers_and_llamacpp() {
    let file = smollm2();
    let r = reference();
    let hf_like = ChatTokenizer::from_gguf_with(&file, GgufPreTokenizer::Transformers).unwrap();
    let cpp_like = ChatTokenizer::from_gguf(&file).unwrap();
    assert_eq!(cpp_like.vocab_size(), 49152);
    assert_eq!(cpp_like.bos().unwrap().text, "<|im_start|>");
    assert_eq!(
        cpp_like.eos().unwrap(),
        &sft_chat::SpecialToken {
            id: 2,
            text: "<|im_end|>".into()
        }
    );
    assert_eq!(cpp_like.pad().unwrap().id, 2);
    assert_eq!(cpp_like.unk().unwrap().text, "<|endoftext|>");
    let mut differing = 0;
    for (i, s) in strings(&r).iter().enumerate() {
        let want_hf = ids(&r["smollm2_transformers"][i]);
        let want_cpp = ids(&r["smollm2_llamacpp"][i]);
        assert_eq!(
            hf_like.encode(s, false).unwrap(),
            want_hf,
            "transformers flavour, {s:?}"
        );
        assert_eq!(
            cpp_like.encode(s, false).unwrap(),
            want_cpp,
            "llama.cpp flavour, {s:?}"
        );
        // No BOS is added (tokenizer.ggml.add_bos_token = false).
        assert_eq!(
            cpp_like.encode(s, true).unwrap(),
            want_cpp,
            "{s:?} with special tokens"
        );
        assert_eq!(
            cpp_like.decode(&want_hf, false).unwrap(),
            r["smollm2_decoded"][i].as_str().unwrap(),
            "decode {s:?}"
        );
        differing += usize::from(want_hf != want_cpp);
    }
    // The fixture holds a string where the two splits differ, so both flavours are really tested.
    assert_eq!(differing, 1);
    // Chat markup stays whole.
    assert_eq!(cpp_like.encode("<|im_start|>user", false).unwrap()[0], 1);
}

#[test]
fn smollm2_jinja_template_renders_like_transformers() {
    let file = smollm2();
    let r = reference();
    let tok = ChatTokenizer::from_gguf(&file).unwrap();
    let template = ChatTemplate::from_tokenizer(&tok).unwrap();
    for (i, conv) in conversations(&r).iter().enumerate() {
        let rendered = template.render(conv).unwrap();
        assert_eq!(
            rendered.text,
            r["smollm2_chat"][i].as_str().unwrap(),
            "conversation {i}"
        );
        let prefix = if conv.last().unwrap().role == Role::Assistant {
            &conv[..conv.len() - 1]
        } else {
            &conv[..]
        };
        assert_eq!(
            template.render_prompt(prefix).unwrap(),
            r["smollm2_chat_prompt"][i].as_str().unwrap(),
            "prompt {i}"
        );
    }
}

/// Every assistant message is masked in, exactly its content plus the end marker (and at most
/// whitespace merged in front), and nothing else is.
fn check_mask(
    tok: &ChatTokenizer,
    enc: &EncodedChat,
    conv: &[Message],
    marker: &str,
    trimmed: bool,
) {
    let n_assistant = conv.iter().filter(|m| m.role == Role::Assistant).count();
    assert_eq!(enc.spans.len(), n_assistant);
    assert_eq!(enc.token_spans.len(), n_assistant);
    let mut in_span = vec![false; enc.ids.len()];
    for (span, toks) in enc.spans.iter().zip(&enc.token_spans) {
        let content = &conv[span.message_index].content;
        let content = if trimmed {
            content.trim()
        } else {
            content.as_str()
        };
        let expected = format!("{content}{marker}");
        let trained = &enc.text[span.range.clone()];
        assert!(
            trained.ends_with(&expected)
                && trained[..trained.len() - expected.len()].trim().is_empty(),
            "span {trained:?}"
        );
        assert_eq!(&enc.text[span.content.clone()], content);
        let decoded = tok.decode(&enc.ids[toks.clone()], false).unwrap();
        assert!(
            decoded.ends_with(&expected)
                && decoded[..decoded.len() - expected.len()].trim().is_empty(),
            "decoded {decoded:?}, expected {expected:?}"
        );
        for t in toks.clone() {
            assert!(enc.labels_mask[t], "token {t} inside span not masked in");
            in_span[t] = true;
        }
    }
    for (t, (&m, &inside)) in enc.labels_mask.iter().zip(&in_span).enumerate() {
        assert_eq!(m, inside, "token {t} labelled outside assistant spans");
    }
    let labels = enc.labels();
    assert_eq!(
        labels.iter().filter(|&&l| l != -100).count(),
        enc.n_target_tokens()
    );
}

fn multi_turn() -> Vec<Vec<Message>> {
    vec![
        vec![
            Message::user("What is two plus two?"),
            Message::assistant("Two plus two is four."),
        ],
        vec![
            Message::system("Be brief."),
            Message::user("Name a prime."),
            Message::assistant("7"),
            Message::user("Another, above 10?"),
            Message::assistant("13, which is prime.\nDone"),
            Message::user("Thanks"),
        ],
        vec![
            Message::user("def add(a, b):"),
            Message::assistant("    return a + b"),
            Message::user("日本語?"),
            Message::assistant("はい 🤖 12345"),
        ],
    ]
}

#[test]
fn vicuna_renders_like_fastchat_and_masks_every_turn() {
    let tok = tiny();
    let t = ChatTemplate::named("vicuna_v1.1").unwrap();
    let conv = &multi_turn()[1];
    let rendered = t.render(conv).unwrap();
    // The space after "ASSISTANT:" is generated by the model (the prompt ends at the colon).
    assert_eq!(
        &rendered.text[rendered.assistant_spans[0].range.clone()],
        " 7</s>"
    );
    assert_eq!(
        &rendered.text[rendered.assistant_spans[0].content.clone()],
        "7"
    );
    let enc = t.encode_with_mask(&tok, conv).unwrap();
    assert_eq!(
        tok.decode(&enc.ids[enc.token_spans[0].clone()], false)
            .unwrap(),
        " 7</s>"
    );
    assert_eq!(rendered.text, "Be brief. USER: Name a prime. ASSISTANT: 7</s>USER: Another, above 10? ASSISTANT: 13, which is prime.\nDone</s>USER: Thanks ");
    let default_system = t.render(&multi_turn()[0]).unwrap().text;
    assert_eq!(
        default_system,
        format!(
            "{} USER: What is two plus two? ASSISTANT: Two plus two is four.</s>",
            sft_chat::VICUNA_SYSTEM
        )
    );
    assert_eq!(
        t.render_prompt(&conv[..4]).unwrap(),
        "Be brief. USER: Name a prime. ASSISTANT: 7</s>USER: Another, above 10? ASSISTANT:"
    );
    for conv in multi_turn() {
        let enc = t.encode_with_mask(&tok, &conv).unwrap();
        assert_eq!(
            enc.ids[0],
            tok.bos().unwrap().id,
            "FastChat tokenizes with BOS"
        );
        assert!(!enc.labels_mask[0]);
        check_mask(&tok, &enc, &conv, "</s>", false);
        // `</s>` is one special token for this LLaMA-like tokenizer, and it is trained on.
        for r in &enc.token_spans {
            assert_eq!(enc.ids[r.end - 1], tok.eos().unwrap().id);
        }
    }
}

#[test]
fn chatml_masks_every_turn() {
    let tok = tiny();
    let t = ChatTemplate::named("chatml").unwrap();
    let conv = &multi_turn()[1];
    assert_eq!(
        t.render(conv).unwrap().text,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a prime.<|im_end|>\n<|im_start|>assistant\n7<|im_end|>\n<|im_start|>user\nAnother, above 10?<|im_end|>\n<|im_start|>assistant\n13, which is prime.\nDone<|im_end|>\n<|im_start|>user\nThanks<|im_end|>\n"
    );
    assert!(t
        .render_prompt(&conv[..4])
        .unwrap()
        .ends_with("<|im_start|>user\nAnother, above 10?<|im_end|>\n<|im_start|>assistant\n"));
    for conv in multi_turn() {
        let enc = t.encode_with_mask(&tok, &conv).unwrap();
        check_mask(&tok, &enc, &conv, "<|im_end|>", false);
    }
    let enc = t.encode_with_mask(&tok, &multi_turn()[0]).unwrap();
    assert_eq!(
        enc.annotated_text("[[", "]]"),
        "<|im_start|>user\nWhat is two plus two?<|im_end|>\n<|im_start|>assistant\n[[Two plus two is four.<|im_end|>]]\n"
    );
}

#[test]
fn llama2_style_jinja_template_masks_with_trimmed_content() {
    let tok = tiny();
    let t = ChatTemplate::from_tokenizer(&tok).unwrap();
    assert!(!t.adds_special_tokens());
    for conv in multi_turn() {
        let enc = t.encode_with_mask(&tok, &conv).unwrap();
        // The template writes `bos_token` itself, once per user turn.
        assert_eq!(enc.ids[0], tok.bos().unwrap().id);
        // `' ' + content.strip() + ' ' + eos_token`: the end marker is " </s>".
        check_mask(&tok, &enc, &conv, " </s>", true);
        // The space after "[/INST]" ends no prompt, so it is trained on.
        for r in &enc.token_spans {
            assert!(tok
                .decode(&enc.ids[r.clone()], false)
                .unwrap()
                .starts_with(' '));
        }
    }
    let prompt = t.render_prompt(&multi_turn()[0][..1]).unwrap();
    assert_eq!(prompt, "<s>[INST] What is two plus two? [/INST]");
}

#[test]
fn smollm2_template_masks_every_turn() {
    let file = smollm2();
    let tok = ChatTokenizer::from_gguf(&file).unwrap();
    let t = ChatTemplate::resolve("model", &tok).unwrap();
    let mut convs = multi_turn();
    convs.extend(conversations(&reference()));
    for conv in convs {
        let enc = t.encode_with_mask(&tok, &conv).unwrap();
        check_mask(&tok, &enc, &conv, "<|im_end|>", false);
        for r in &enc.token_spans {
            assert_eq!(
                enc.ids[r.end - 1],
                2,
                "<|im_end|> closes each assistant span"
            );
        }
    }
    // vicuna_v1.1 with the model's EOS as sep2: every span ends with the EOS id.
    let v = ChatTemplate::resolve("vicuna_v1.1+eos", &tok).unwrap();
    assert_eq!(v.name(), "vicuna_v1.1+eos");
    for conv in multi_turn() {
        let enc = v.encode_with_mask(&tok, &conv).unwrap();
        check_mask(&tok, &enc, &conv, "<|im_end|>", false);
        for r in &enc.token_spans {
            assert_eq!(enc.ids[r.end - 1], 2);
        }
    }
    // The generation prompt tokenizes as the training text's prefix does.
    let conv = &multi_turn()[0];
    let prompt_ids = t.encode_prompt(&tok, &conv[..1]).unwrap();
    let full = t.encode_with_mask(&tok, conv).unwrap();
    assert_eq!(&full.ids[..prompt_ids.len()], &prompt_ids[..]);
    assert_eq!(full.token_spans[0].start, prompt_ids.len());
}

#[test]
fn conversation_errors_are_reported() {
    let t = ChatTemplate::named("chatml").unwrap();
    let err = t.render(&[Message::assistant("hi")]).unwrap_err();
    assert!(
        matches!(err, ChatError::Conversation { index: 0, .. }),
        "{err}"
    );
    let err = t
        .render(&[Message::user("a"), Message::user("b")])
        .unwrap_err();
    assert!(
        matches!(err, ChatError::Conversation { index: 1, .. }),
        "{err}"
    );
    let err = t
        .render(&[Message::user("a"), Message::assistant("")])
        .unwrap_err();
    assert!(
        matches!(err, ChatError::Conversation { index: 1, .. }),
        "{err}"
    );
    assert!(matches!(t.render(&[]), Err(ChatError::Conversation { .. })));
    assert!(matches!(
        ChatTemplate::named("alpaca"),
        Err(ChatError::UnknownTemplate { .. })
    ));
}

#[test]
fn jinja_templates_fail_loudly() {
    let conv = [Message::user("The"), Message::assistant("quick brown fox")];
    // raise_exception surfaces its message.
    let t = ChatTemplate::Jinja(
        JinjaTemplate::new("{{ raise_exception('roles must alternate') }}", "", "").unwrap(),
    );
    let err = t.render(&conv).unwrap_err();
    assert!(err.to_string().contains("roles must alternate"), "{err}");
    // Syntax errors at construction.
    assert!(matches!(
        JinjaTemplate::new("{% for %}", "", ""),
        Err(ChatError::Template(_))
    ));
    // A template that drops assistant content.
    let t = ChatTemplate::Jinja(JinjaTemplate::new("{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}{% endif %}{% endfor %}", "", "").unwrap());
    assert!(matches!(
        t.render(&conv),
        Err(ChatError::SpanNotFound { index: 1, .. })
    ));
    // A template that rewrites content.
    let t = ChatTemplate::Jinja(
        JinjaTemplate::new(
            "{% for m in messages %}{{ m.content | upper }}<|im_end|>{% endfor %}",
            "",
            "",
        )
        .unwrap(),
    );
    assert!(matches!(
        t.render(&conv),
        Err(ChatError::SpanNotFound { .. })
    ));
    // No end-of-turn marker after assistant content.
    let t = ChatTemplate::Jinja(
        JinjaTemplate::new(
            "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}",
            "",
            "",
        )
        .unwrap(),
    );
    assert!(matches!(
        t.render(&conv),
        Err(ChatError::SpanNotFound { .. })
    ));
    // ... unless one is given.
    let t = ChatTemplate::Jinja(
        JinjaTemplate::new(
            "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}",
            "",
            "",
        )
        .unwrap()
        .with_end_marker("\n"),
    );
    let r = t.render(&conv).unwrap();
    assert_eq!(
        &r.text[r.assistant_spans[0].range.clone()],
        "quick brown fox\n"
    );
    // Python string methods (pycompat) work.
    let t = ChatTemplate::Jinja(JinjaTemplate::new("{% for m in messages %}{{ m.role.upper() }}{{ m.content.strip() }}<|im_end|>{% endfor %}", "", "").unwrap());
    assert_eq!(
        t.render(&conv).unwrap().text,
        "USERThe<|im_end|>ASSISTANTquick brown fox<|im_end|>"
    );
}

#[test]
fn token_straddling_a_span_boundary_is_an_error() {
    let tok = tiny();
    // "Th" + "e quick": the tiny vocabulary has the token "The", which starts before the span.
    assert!(tok.encode("The", false).unwrap().len() == 1);
    let t = ChatTemplate::Jinja(
        JinjaTemplate::new("{% for m in messages %}{% if m.role == 'assistant' %}Th{% endif %}{{ m.content }}</s>{% endfor %}", "", "").unwrap(),
    );
    let conv = [Message::user("hi"), Message::assistant("e quick")];
    let err = t.encode_with_mask(&tok, &conv).unwrap_err();
    assert!(
        matches!(
            err,
            ChatError::AmbiguousBoundary {
                message_index: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn gguf_without_tokenizer_is_an_error() {
    let file = sft_gguf::GgufFile::open(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/gguf/quants.gguf"),
    )
    .unwrap();
    let err = ChatTokenizer::from_gguf(&file).unwrap_err();
    assert!(err.to_string().contains("tokenizer.ggml.model"), "{err}");
}

/// Deterministic xorshift for the randomized masking test (no `rand` dependency).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const FRAGMENTS: &[&str] = &[
    "hello",
    " world",
    "The",
    " quick",
    "7",
    " 42",
    "12345",
    "  ",
    " ",
    "\n",
    "\n\n",
    "\t",
    "日本語",
    "🤖",
    "x1",
    ".",
    "!",
    "?",
    "  13",
    "'s",
    " it's",
    "def f(x):\n    return x",
    "$\\frac{1}{2}$",
    "</s>",
    "<|im_end|>",
    "<s>",
    "ASSISTANT:",
    "USER:",
    "é",
    ",",
];

fn random_conversation(rng: &mut XorShift) -> Vec<Message> {
    let mut conv = Vec::new();
    if rng.below(3) == 0 {
        conv.push(Message::system(random_text(rng)));
    }
    for _ in 0..1 + rng.below(4) {
        conv.push(Message::user(random_text(rng)));
        conv.push(Message::assistant(random_text(rng)));
    }
    // Sometimes end on an unanswered user turn (not trained on).
    if rng.below(4) == 0 {
        conv.push(Message::user(random_text(rng)));
    }
    conv
}

fn random_text(rng: &mut XorShift) -> String {
    loop {
        let s: String = (0..1 + rng.below(6))
            .map(|_| FRAGMENTS[rng.below(FRAGMENTS.len())])
            .collect();
        // Whitespace-only content is trimmed to nothing by stripping templates: not a real answer.
        if !s.trim().is_empty() {
            return s;
        }
    }
}

#[test]
fn random_conversations_mask_exactly_the_assistant_text() {
    let tok = tiny();
    let mut templates = vec![
        (ChatTemplate::named("vicuna_v1.1").unwrap(), "</s>", false),
        (ChatTemplate::named("chatml").unwrap(), "<|im_end|>", false),
        (ChatTemplate::from_tokenizer(&tok).unwrap(), " </s>", true),
    ];
    let mut rng = XorShift(0x5eed_2310_0549_2000);
    for _ in 0..150 {
        let conv = random_conversation(&mut rng);
        for (t, marker, trimmed) in &templates {
            let enc = t
                .encode_with_mask(&tok, &conv)
                .unwrap_or_else(|e| panic!("{}: {e}\n{conv:?}", t.name()));
            check_mask(&tok, &enc, &conv, marker, *trimmed);
        }
    }
    let file = smollm2();
    let tok = ChatTokenizer::from_gguf(&file).unwrap();
    templates = vec![
        (ChatTemplate::named("vicuna_v1.1").unwrap(), "</s>", false),
        (ChatTemplate::named("chatml").unwrap(), "<|im_end|>", false),
        (
            ChatTemplate::from_tokenizer(&tok).unwrap(),
            "<|im_end|>",
            false,
        ),
    ];
    for _ in 0..100 {
        let conv = random_conversation(&mut rng);
        for (t, marker, trimmed) in &templates {
            let enc = t
                .encode_with_mask(&tok, &conv)
                .unwrap_or_else(|e| panic!("{}: {e}\n{conv:?}", t.name()));
            check_mask(&tok, &enc, &conv, marker, *trimmed);
        }
    }
}

#[test]
fn from_path_accepts_dirs_json_and_gguf_and_names_bad_files() {
    let dir = fixtures().join("tiny");
    let a = ChatTokenizer::from_path(&dir).unwrap();
    let b = ChatTokenizer::from_path(dir.join("tokenizer.json")).unwrap();
    assert_eq!(
        b.eos().unwrap().text,
        "</s>",
        "tokenizer.json next to a tokenizer_config.json reads the config"
    );
    assert_eq!(
        a.encode("Hello", true).unwrap(),
        b.encode("Hello", true).unwrap()
    );

    let gguf = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/gguf/quants.gguf");
    let err = ChatTokenizer::from_path(&gguf).unwrap_err();
    assert!(err.to_string().contains("tokenizer.ggml.model"), "{err}");

    let err = ChatTokenizer::from_path(dir.join("tokenizer_config.json")).unwrap_err();
    assert!(matches!(err, ChatError::BadFile { .. }), "{err}");

    // A config naming an eos token the vocabulary lacks: the error names the config file.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.join("tokenizer.json"),
        tmp.path().join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("tokenizer_config.json"),
        r#"{"eos_token": "<|nope|>"}"#,
    )
    .unwrap();
    let err = ChatTokenizer::from_hf_dir(tmp.path()).unwrap_err();
    assert!(
        matches!(err, ChatError::BadFile { .. })
            && err.to_string().contains("tokenizer_config.json")
            && err.to_string().contains("<|nope|>"),
        "{err}"
    );
    // Malformed JSON names the file.
    std::fs::write(tmp.path().join("tokenizer_config.json"), "{not json").unwrap();
    let err = ChatTokenizer::from_hf_dir(tmp.path()).unwrap_err();
    assert!(err.to_string().contains("tokenizer_config.json"), "{err}");
    // No template: `model` cannot resolve.
    let bare = ChatTokenizer::from_tokenizer_json(dir.join("tokenizer.json")).unwrap();
    assert!(matches!(
        ChatTemplate::resolve("model", &bare),
        Err(ChatError::Template(_))
    ));
    assert!(ChatTemplate::resolve("chatml", &bare).is_ok());
}

#[test]
fn parallel_encoding_equals_sequential() {
    let tok = tiny();
    let t = ChatTemplate::named("vicuna_v1.1").unwrap();
    let mut rng = XorShift(42);
    let mut convs: Vec<Vec<Message>> = (0..40).map(|_| random_conversation(&mut rng)).collect();
    convs.push(vec![Message::assistant("bad order")]);
    let parallel = t.encode_many_with_mask(&tok, &convs, 3);
    assert_eq!(parallel.len(), convs.len());
    for (conv, got) in convs.iter().zip(&parallel) {
        match (t.encode_with_mask(&tok, conv), got) {
            (Ok(a), Ok(b)) => assert_eq!(&a, b),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            (a, b) => panic!("sequential {a:?} vs parallel {b:?}"),
        }
    }
    assert!(parallel.last().unwrap().is_err());
}

#[test]
fn saved_hf_dir_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tiny();
    tok.save_hf_dir(tmp.path()).unwrap();
    let back = ChatTokenizer::from_hf_dir(tmp.path()).unwrap();
    assert_eq!(back.bos(), tok.bos());
    assert_eq!(back.eos(), tok.eos());
    assert_eq!(back.chat_template(), tok.chat_template());
    let r = reference();
    for s in strings(&r) {
        assert_eq!(
            back.encode(&s, true).unwrap(),
            tok.encode(&s, true).unwrap(),
            "{s:?}"
        );
    }
    let file = smollm2();
    let tok = ChatTokenizer::from_gguf(&file).unwrap();
    let dir = tmp.path().join("smollm2");
    tok.save_hf_dir(&dir).unwrap();
    let back = ChatTokenizer::from_hf_dir(&dir).unwrap();
    assert_eq!(
        (back.bos(), back.eos(), back.pad(), back.unk()),
        (tok.bos(), tok.eos(), tok.pad(), tok.unk())
    );
    for (i, s) in strings(&r).iter().enumerate() {
        assert_eq!(
            back.encode(s, true).unwrap(),
            ids(&r["smollm2_llamacpp"][i]),
            "{s:?}"
        );
    }
    let conv = &multi_turn()[1];
    let a = ChatTemplate::from_tokenizer(&tok)
        .unwrap()
        .encode_with_mask(&tok, conv)
        .unwrap();
    let b = ChatTemplate::from_tokenizer(&back)
        .unwrap()
        .encode_with_mask(&back, conv)
        .unwrap();
    assert_eq!(a, b);
}
