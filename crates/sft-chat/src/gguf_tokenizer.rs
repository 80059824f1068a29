//! Rebuild a GGUF file's byte-level BPE tokenizer (`tokenizer.ggml.model = gpt2`) as a
//! `tokenizers::Tokenizer`.
//!
//! The vocabulary, merges and token types come from the file; how text is split before BPE
//! (the pre-tokenizer) is only named, by `tokenizer.ggml.pre`. Two readings of that name exist:
//!
//! * [`GgufPreTokenizer::LlamaCpp`] (default) uses the split llama.cpp applies for the name
//!   (`llama-vocab.cpp`), which equals the model's original `tokenizer.json`. For `smollm`
//!   (and `starcoder`, `refact`, `codeshell`, `command-r`, `exaone`, `minerva`) that is digits
//!   isolated one by one, then GPT-2's regex; in HF terms
//!   `Sequence[Digits(individual_digits), ByteLevel]`.
//! * [`GgufPreTokenizer::Transformers`] reproduces transformers' `convert_gguf_tokenizer`
//!   (`integrations/gguf/gguf_tokenizer_mapping.py`): a regex for the names it lists, plain
//!   `ByteLevel` for all others (including `smollm`). Use it to compare with transformers.
//!
//! The two differ only on text where whitespace is followed by a digit (e.g. `"x  1"`): llama.cpp
//! keeps `"  "` one token, transformers splits `" "` `" 1"`. Token types: control tokens (3)
//! become special added tokens, user-defined (4) plain added tokens, as transformers does.

use std::collections::HashSet;
use std::str::FromStr;

use serde_json::{json, Map, Value as Json};
use sft_gguf::GgufFile;
use tokenizers::Tokenizer;

use crate::{ChatError, ChatTokenizer, Result};

/// How to split text before BPE for a GGUF `tokenizer.ggml.pre` name (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GgufPreTokenizer {
    /// What llama.cpp does, which matches the model's original HF tokenizer.
    #[default]
    LlamaCpp,
    /// What transformers' GGUF loader builds (`AutoTokenizer.from_pretrained(..., gguf_file=...)`).
    Transformers,
}

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const TEKKEN_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*",
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

const GPT4O_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex transformers uses for a `pre` name (`GGUF_PRE_TOKENIZER_SPLITS`).
fn transformers_split(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

fn byte_level() -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
}

fn split_then_bytes(regex: &str) -> Json {
    json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
    ]})
}

fn pre_tokenizer(pre: &str, flavour: GgufPreTokenizer) -> Option<Json> {
    match flavour {
        GgufPreTokenizer::Transformers => {
            Some(transformers_split(pre).map_or_else(byte_level, split_then_bytes))
        }
        GgufPreTokenizer::LlamaCpp => match pre {
            "default" | "gpt-2" | "gpt2" | "mpt" | "olmo" | "jais" | "trillion" => {
                Some(byte_level())
            }
            "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" | "exaone"
            | "minerva" => Some(json!({
                "type": "Sequence",
                "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level()],
            })),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "dbrx" | "smaug-bpe" => {
                Some(split_then_bytes(LLAMA3_SPLIT))
            }
            "qwen2" | "deepseek-r1-qwen" | "megrez" => Some(split_then_bytes(QWEN2_SPLIT)),
            "tekken" => Some(split_then_bytes(TEKKEN_SPLIT)),
            "gpt-4o" | "llama4" => Some(split_then_bytes(GPT4O_SPLIT)),
            _ => None,
        },
    }
}

/// GPT-2's byte → printable-char table (`bytes_to_unicode`).
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u32 {
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            let c = char::from_u32(256 + n).unwrap_or('\0');
            n += 1;
            c
        };
    }
    table
}

const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

pub(crate) fn build(file: &GgufFile, flavour: GgufPreTokenizer) -> Result<ChatTokenizer> {
    let path = file.path().to_path_buf();
    let model = file.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(ChatError::UnsupportedTokenizer {
            path,
            message: format!("tokenizer.ggml.model is {model:?}; only byte-level BPE (\"gpt2\") GGUF tokenizers can be rebuilt (use the model's tokenizer.json instead)"),
        });
    }
    let pre = match file.get("tokenizer.ggml.pre") {
        Some(_) => file.get_str("tokenizer.ggml.pre")?,
        None => "default",
    };
    let pre_json = pre_tokenizer(pre, flavour).ok_or_else(|| ChatError::UnsupportedTokenizer {
        path: path.clone(),
        message: format!("tokenizer.ggml.pre = {pre:?} has no known llama.cpp split; pass GgufPreTokenizer::Transformers to use transformers' fallback (plain ByteLevel) or load the model's tokenizer.json"),
    })?;
    let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
    let merges = file.get_str_array("tokenizer.ggml.merges")?;
    let types = match file.get("tokenizer.ggml.token_type") {
        Some(_) => file.get_int_array("tokenizer.ggml.token_type")?,
        None => Vec::new(),
    };

    let spelling = bytes_to_unicode();
    let alphabet: HashSet<char> = spelling.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab = Map::with_capacity(tokens.len());
    for (id, tok) in tokens.iter().enumerate() {
        let key = if in_alphabet(tok) {
            tok.to_string()
        } else {
            tok.bytes().map(|b| spelling[b as usize]).collect()
        };
        vocab.insert(key, json!(id));
    }
    let mut merge_pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        let (a, b) = m
            .split_once(' ')
            .ok_or_else(|| ChatError::UnsupportedTokenizer {
                path: path.clone(),
                message: format!(
                    "tokenizer.ggml.merges[{i}] = {m:?} is not two tokens separated by a space"
                ),
            })?;
        merge_pairs.push(json!([a, b]));
    }

    let mut added = Vec::new();
    for (id, (tok, &ty)) in tokens.iter().zip(&types).enumerate() {
        let special = if ty == CONTROL && in_alphabet(tok) {
            true
        } else if ty == USER_DEFINED && vocab.contains_key(*tok) {
            false
        } else {
            continue;
        };
        added.push(json!({"id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": special}));
    }

    let token_id = |key: &str| -> Result<Option<u32>> {
        match file.get(key) {
            None => Ok(None),
            Some(_) => Ok(Some(file.get_u64(key)? as u32)),
        }
    };
    let token_text = |id: Option<u32>, key: &str| -> Result<Option<String>> {
        match id {
            None => Ok(None),
            Some(id) => tokens
                .get(id as usize)
                .map(|t| Some(t.to_string()))
                .ok_or_else(|| ChatError::UnsupportedTokenizer {
                    path: path.clone(),
                    message: format!(
                        "{key} = {id} is outside the vocabulary of {} tokens",
                        tokens.len()
                    ),
                }),
        }
    };
    let bos_id = token_id("tokenizer.ggml.bos_token_id")?;
    let eos_id = token_id("tokenizer.ggml.eos_token_id")?;
    let bos = token_text(bos_id, "tokenizer.ggml.bos_token_id")?;
    let eos = token_text(eos_id, "tokenizer.ggml.eos_token_id")?;
    let pad = token_text(
        token_id("tokenizer.ggml.padding_token_id")?,
        "tokenizer.ggml.padding_token_id",
    )?;
    let unk = token_text(
        token_id("tokenizer.ggml.unknown_token_id")?,
        "tokenizer.ggml.unknown_token_id",
    )?;
    let flag = |key: &str| file.get(key).and_then(|v| v.as_bool()).unwrap_or(false);
    let (add_bos, add_eos) = (
        flag("tokenizer.ggml.add_bos_token"),
        flag("tokenizer.ggml.add_eos_token"),
    );

    let post_processor = if add_bos || add_eos {
        let mut single = Vec::new();
        let mut special_tokens = Map::new();
        for (on, id, text) in [(add_bos, bos_id, &bos), (add_eos, eos_id, &eos)] {
            if !on {
                continue;
            }
            let (Some(id), Some(text)) = (id, text) else {
                return Err(ChatError::UnsupportedTokenizer {
                    path: path.clone(),
                    message: "add_bos/add_eos is set but the token id is missing".into(),
                });
            };
            special_tokens.insert(
                text.clone(),
                json!({"id": text, "ids": [id], "tokens": [text]}),
            );
            single.push(json!({"SpecialToken": {"id": text, "type_id": 0}}));
        }
        let a = json!({"Sequence": {"id": "A", "type_id": 0}});
        let mut seq = Vec::new();
        if add_bos {
            seq.push(single[0].clone());
        }
        seq.push(a);
        if add_eos {
            seq.push(single[single.len() - 1].clone());
        }
        let mut pair = seq.clone();
        pair.push(json!({"Sequence": {"id": "B", "type_id": 1}}));
        json!({"type": "TemplateProcessing", "single": seq, "pair": pair, "special_tokens": special_tokens})
    } else {
        Json::Null
    };

    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_json,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merge_pairs,
        },
    });
    let inner = Tokenizer::from_str(&tokenizer_json.to_string()).map_err(|e| {
        ChatError::UnsupportedTokenizer {
            path: path.clone(),
            message: format!("building the tokenizer failed: {e}"),
        }
    })?;
    let chat_template = match file.get("tokenizer.chat_template") {
        Some(_) => Some(file.get_str("tokenizer.chat_template")?.to_string()),
        None => None,
    };
    tracing::debug!(path = %path.display(), pre, ?flavour, vocab = tokens.len(), "built tokenizer from GGUF metadata");
    ChatTokenizer::new(
        inner,
        bos.as_deref(),
        eos.as_deref(),
        pad.as_deref(),
        unk.as_deref(),
        chat_template,
    )
}
