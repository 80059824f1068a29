//! `sft-chat`: tokenizers and chat templates that know where the assistant speaks.
//!
//! Supervised fine-tuning trains only on assistant content. FastChat finds it by splitting the
//! rendered string and counting tokens with hard-coded corrections, and silently masks whole
//! samples when its count disagrees ("tokenization mismatch"). This crate instead renders each
//! conversation to text **and** the byte spans of assistant content (including the end-of-turn
//! marker the model must learn to emit), tokenizes with offsets, and maps spans to tokens,
//! failing loudly where a token would straddle a boundary.
//!
//! * [`ChatTokenizer`] loads an HF `tokenizer.json` (+ `tokenizer_config.json`) or rebuilds the
//!   byte-level BPE tokenizer embedded in a GGUF file ([`ChatTokenizer::from_gguf`], see
//!   [`GgufPreTokenizer`] for how `tokenizer.ggml.pre` is read).
//! * [`ChatTemplate`]: FastChat's `vicuna_v1.1`, `chatml`, or the model's Jinja template
//!   ([`JinjaTemplate`], rendered with `minijinja`; how its spans are located is documented
//!   there). [`ChatTemplate::render`] gives text and spans, [`ChatTemplate::render_prompt`] the
//!   generation prompt.
//! * [`ChatTemplate::encode_with_mask`] gives ids and the loss mask ([`EncodedChat`]).
//!
//! Messages are [`sft_record::Message`] `{role, content}`, the workspace's one message type;
//! [`EncodedChat`] is its one encoded-conversation type (the trainer consumes it as is).

#![deny(missing_docs)]

mod error;
mod gguf_tokenizer;
mod mask;
mod message;
mod template;
mod tokenizer;

pub use error::{ChatError, Result};
pub use gguf_tokenizer::GgufPreTokenizer;
pub use mask::EncodedChat;
pub use message::drop_leading_assistant_turns;
pub use template::{
    AssistantSpan, ChatTemplate, JinjaTemplate, RenderOptions, Rendered, VICUNA_SYSTEM,
};
pub use tokenizer::{ByteOffsets, ChatTokenizer, SpecialToken};
