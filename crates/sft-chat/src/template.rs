//! Chat templates: FastChat's `vicuna_v1.1`, `chatml`, and the model's own Jinja template, each
//! rendering a conversation to text plus the byte spans of assistant content.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use minijinja::{Environment, ErrorKind};
use serde::Serialize;

use crate::{ChatError, ChatTokenizer, Result};
use sft_record::{Message, Role};

/// FastChat's `vicuna_v1.1` system prompt.
pub const VICUNA_SYSTEM: &str = "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.";

/// One assistant message's place in the rendered text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssistantSpan {
    /// Index of the message in the conversation.
    pub message_index: usize,
    /// Bytes the model is trained on: the content (as the template wrote it) and the
    /// end-of-turn marker after it (`</s>`, `<|im_end|>`), starting earlier by the whitespace
    /// that separates the end of the generation prompt from the content (vicuna's space after
    /// `ASSISTANT:`), since the model generates that too.
    pub range: Range<usize>,
    /// The content alone (no end marker).
    pub content: Range<usize>,
}

/// A rendered conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The text to tokenize.
    pub text: String,
    /// Assistant spans, in order.
    pub assistant_spans: Vec<AssistantSpan>,
}

/// A chat template.
#[derive(Debug, Clone)]
pub enum ChatTemplate {
    /// FastChat's `vicuna_v1.1` (separator style ADD_COLON_TWO): `"{system} USER: {q} ASSISTANT: {a}</s>USER: …"`.
    /// A leading system message replaces the default [`VICUNA_SYSTEM`]. `sep2` is FastChat's
    /// literal `"</s>"`; a model whose end-of-sequence token differs (SmolLM2's is `<|im_end|>`)
    /// sees `</s>` as plain text and must be stopped on the string `"</s>"` when generating.
    VicunaV11 {
        /// The end-of-turn text after each assistant message (FastChat: `"</s>"`).
        sep2: String,
    },
    /// ChatML (FastChat's CHATML separator style): `"<|im_start|>{role}\n{content}<|im_end|>\n"`
    /// per message, no default system prompt; the assistant span ends with `<|im_end|>`.
    ChatMl,
    /// A Hugging Face Jinja `chat_template`.
    Jinja(JinjaTemplate),
}

/// Per-template rendering flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderOptions {
    /// Append the header that opens an assistant turn (for generation).
    pub add_generation_prompt: bool,
}

impl ChatTemplate {
    /// A built-in template by name: `vicuna_v1.1` (alias `vicuna`) or `chatml`.
    pub fn named(name: &str) -> Result<Self> {
        match name {
            "vicuna_v1.1" | "vicuna" => Ok(Self::VicunaV11 {
                sep2: "</s>".into(),
            }),
            "chatml" => Ok(Self::ChatMl),
            _ => Err(ChatError::UnknownTemplate {
                name: name.to_string(),
            }),
        }
    }

    /// A template by name, where `model` (or `jinja`) means the tokenizer's own Jinja template
    /// and `vicuna_v1.1+eos` is `vicuna_v1.1` with the tokenizer's EOS text as `sep2` (for models
    /// whose EOS is not `</s>`, e.g. SmolLM2's `<|im_end|>`, so generation stops on the EOS id).
    pub fn resolve(name: &str, tokenizer: &ChatTokenizer) -> Result<Self> {
        match name {
            "model" | "jinja" => Self::from_tokenizer(tokenizer),
            "vicuna_v1.1+eos" | "vicuna+eos" => {
                let eos = tokenizer.eos().ok_or_else(|| {
                    ChatError::Template("vicuna_v1.1+eos: the tokenizer has no eos token".into())
                })?;
                Ok(Self::VicunaV11 {
                    sep2: eos.text.clone(),
                })
            }
            other => Self::named(other),
        }
    }

    /// The tokenizer's own Jinja template (from `tokenizer_config.json` or GGUF metadata), with
    /// its `bos_token`/`eos_token`.
    pub fn from_tokenizer(tokenizer: &ChatTokenizer) -> Result<Self> {
        let source = tokenizer
            .chat_template()
            .ok_or_else(|| ChatError::Template("the tokenizer has no chat_template".into()))?;
        Ok(Self::Jinja(JinjaTemplate::new(
            source,
            tokenizer.bos().map(|t| t.text.clone()).unwrap_or_default(),
            tokenizer.eos().map(|t| t.text.clone()).unwrap_or_default(),
        )?))
    }

    /// The template's name for logs and manifests.
    pub fn name(&self) -> &str {
        match self {
            Self::VicunaV11 { sep2 } if sep2 == "</s>" => "vicuna_v1.1",
            Self::VicunaV11 { .. } => "vicuna_v1.1+eos",
            Self::ChatMl => "chatml",
            Self::Jinja(_) => "jinja",
        }
    }

    /// Whether the rendered text is tokenized with the tokenizer's special tokens (BOS) added:
    /// true for the built-in templates (as FastChat tokenizes), false for Jinja templates (as
    /// transformers' `apply_chat_template`, since such templates write `bos_token` themselves).
    pub fn adds_special_tokens(&self) -> bool {
        !matches!(self, Self::Jinja(_))
    }

    /// Render a whole conversation for training, with assistant spans.
    pub fn render(&self, messages: &[Message]) -> Result<Rendered> {
        validate(messages)?;
        for (i, m) in messages.iter().enumerate() {
            if m.role == Role::Assistant && m.content.is_empty() {
                return Err(ChatError::Conversation {
                    index: i,
                    message: "empty assistant message: nothing to train on".into(),
                });
            }
        }
        match self {
            Self::VicunaV11 { sep2 } => Ok(vicuna(messages, sep2, false)),
            Self::ChatMl => Ok(chatml(messages, false)),
            Self::Jinja(t) => t.render_with_spans(messages),
        }
    }

    /// Render a prompt for generation (`add_generation_prompt = true`); the conversation
    /// normally ends with a user message.
    pub fn render_prompt(&self, messages: &[Message]) -> Result<String> {
        self.render_with(
            messages,
            RenderOptions {
                add_generation_prompt: true,
            },
        )
    }

    /// Render with explicit options (no spans).
    pub fn render_with(&self, messages: &[Message], options: RenderOptions) -> Result<String> {
        validate(messages)?;
        match self {
            Self::VicunaV11 { sep2 } => {
                Ok(vicuna(messages, sep2, options.add_generation_prompt).text)
            }
            Self::ChatMl => Ok(chatml(messages, options.add_generation_prompt).text),
            Self::Jinja(t) => t.render_raw(&to_values(messages), options.add_generation_prompt),
        }
    }
}

/// Optional leading system message, then user/assistant alternating from user (FastChat asserts the same).
fn validate(messages: &[Message]) -> Result<()> {
    if messages.is_empty() {
        return Err(ChatError::Conversation {
            index: 0,
            message: "empty conversation".into(),
        });
    }
    let start = usize::from(messages[0].role == Role::System);
    for (i, m) in messages.iter().enumerate().skip(start) {
        let expected = if (i - start) % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        if m.role != expected {
            return Err(ChatError::Conversation {
                index: i,
                message: format!("expected a {} message (optional system first, then user and assistant alternating), found {}", expected.as_str(), m.role.as_str()),
            });
        }
    }
    Ok(())
}

fn vicuna(messages: &[Message], sep2: &str, add_generation_prompt: bool) -> Rendered {
    let (system, rest) = match messages.first() {
        Some(m) if m.role == Role::System => (m.content.as_str(), &messages[1..]),
        _ => (VICUNA_SYSTEM, messages),
    };
    let offset = messages.len() - rest.len();
    let mut text = format!("{system} ");
    let mut spans = Vec::new();
    for (i, m) in rest.iter().enumerate() {
        let role = if m.role == Role::User {
            "USER"
        } else {
            "ASSISTANT"
        };
        if m.content.is_empty() {
            text.push_str(role);
            text.push(':');
            continue;
        }
        text.push_str(role);
        text.push(':');
        // The generation prompt ends at "ASSISTANT:", so the model must produce the space too:
        // the trained range starts there.
        let sep_start = text.len();
        text.push(' ');
        let start = text.len();
        text.push_str(&m.content);
        let content_end = text.len();
        text.push_str(if i % 2 == 0 { " " } else { sep2 });
        if m.role == Role::Assistant {
            spans.push(AssistantSpan {
                message_index: i + offset,
                range: sep_start..text.len(),
                content: start..content_end,
            });
        }
    }
    if add_generation_prompt {
        text.push_str("ASSISTANT:");
    }
    Rendered {
        text,
        assistant_spans: spans,
    }
}

fn chatml(messages: &[Message], add_generation_prompt: bool) -> Rendered {
    let mut text = String::new();
    let mut spans = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        text.push_str("<|im_start|>");
        text.push_str(m.role.as_str());
        text.push('\n');
        let start = text.len();
        text.push_str(&m.content);
        let content_end = text.len();
        text.push_str("<|im_end|>");
        if m.role == Role::Assistant {
            spans.push(AssistantSpan {
                message_index: i,
                range: start..text.len(),
                content: start..content_end,
            });
        }
        text.push('\n');
    }
    if add_generation_prompt {
        text.push_str("<|im_start|>assistant\n");
    }
    Rendered {
        text,
        assistant_spans: spans,
    }
}

#[derive(Serialize)]
struct MessageValue {
    role: &'static str,
    content: String,
}

fn to_values(messages: &[Message]) -> Vec<MessageValue> {
    messages
        .iter()
        .map(|m| MessageValue {
            role: m.role.as_str(),
            content: m.content.clone(),
        })
        .collect()
}

/// A compiled HF Jinja chat template.
///
/// Rendering follows transformers' `apply_chat_template`: `trim_blocks` and `lstrip_blocks` on,
/// loop controls, Python string/dict/list methods (`.strip()`, `.items()`, …) through
/// `minijinja-contrib`'s pycompat, `raise_exception(msg)`, and the variables `messages`,
/// `add_generation_prompt`, `bos_token`, `eos_token`.
///
/// **How assistant spans are found.** The conversation is rendered twice: once as is, and once
/// with each assistant content replaced by a unique sentinel (private-use characters around
/// the message index). Each sentinel must appear exactly once, in order; the text between
/// sentinels is the template's own markup. The real rendering must then equal that markup with
/// the contents put back verbatim (or, for templates that call `strip`/`trim`, with every
/// content trimmed); otherwise rendering fails with [`ChatError::SpanNotFound`]. The end-of-turn
/// marker is what the template writes right after the content of a final assistant message,
/// without trailing whitespace (`<|im_end|>` for SmolLM2), unless set with
/// [`JinjaTemplate::with_end_marker`]; every assistant content must be followed by it. Nothing
/// is guessed: a template that drops, repeats or rewrites assistant content is refused.
#[derive(Clone)]
pub struct JinjaTemplate {
    env: Arc<Environment<'static>>,
    source: Arc<str>,
    bos_token: String,
    eos_token: String,
    end_marker: Option<String>,
    /// The inferred end marker, or the error inferring it (index, message); computed once.
    inferred_marker: Arc<OnceLock<std::result::Result<String, (usize, String)>>>,
}

impl std::fmt::Debug for JinjaTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JinjaTemplate")
            .field("source", &self.source)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("end_marker", &self.end_marker)
            .finish()
    }
}

const TEMPLATE_NAME: &str = "chat_template";
const SENTINEL_OPEN: char = '\u{E000}';
const SENTINEL_CLOSE: char = '\u{E001}';

fn sentinel(k: usize) -> String {
    format!("{SENTINEL_OPEN}sft-chat-{k}{SENTINEL_CLOSE}")
}

fn raise_exception(msg: String) -> std::result::Result<String, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

impl JinjaTemplate {
    /// Compile `source`; `bos_token`/`eos_token` are the texts the template may insert.
    pub fn new(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self> {
        let source: String = source.into();
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE_NAME, source.clone())
            .map_err(|e| ChatError::Template(format!("{e:#}")))?;
        Ok(Self {
            env: Arc::new(env),
            source: source.into(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            end_marker: None,
            inferred_marker: Arc::new(OnceLock::new()),
        })
    }

    /// Use `marker` as the end-of-turn text instead of inferring it.
    pub fn with_end_marker(mut self, marker: impl Into<String>) -> Self {
        self.end_marker = Some(marker.into());
        self
    }

    /// The template source.
    pub fn source(&self) -> &str {
        &self.source
    }

    fn render_raw<M: Serialize>(
        &self,
        messages: &[M],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ChatError::Template(format!("{e:#}")))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| ChatError::Template(format!("{e:#}")))
    }

    /// The end-of-turn marker: explicit, or inferred (once) from a one-turn probe conversation.
    fn end_marker(&self) -> Result<String> {
        if let Some(m) = &self.end_marker {
            return Ok(m.clone());
        }
        self.inferred_marker
            .get_or_init(|| self.infer_end_marker().map_err(|e| (1, e.to_string())))
            .clone()
            .map_err(|(index, message)| ChatError::SpanNotFound { index, message })
    }

    fn infer_end_marker(&self) -> Result<String> {
        let probe = [
            MessageValue {
                role: "user",
                content: "hi".into(),
            },
            MessageValue {
                role: "assistant",
                content: sentinel(0),
            },
        ];
        let text = self.render_raw(&probe, false)?;
        let s = sentinel(0);
        let at = text.find(&s).ok_or_else(|| ChatError::SpanNotFound {
            index: 1,
            message:
                "the template does not write assistant content in a one-turn probe conversation"
                    .into(),
        })?;
        let marker = text[at + s.len()..].trim_end().to_string();
        if marker.is_empty() {
            return Err(ChatError::SpanNotFound {
                index: 1,
                message: "the template writes no end-of-turn marker after assistant content; set one with JinjaTemplate::with_end_marker".into(),
            });
        }
        Ok(marker)
    }

    fn render_with_spans(&self, messages: &[Message]) -> Result<Rendered> {
        let real = self.render_raw(&to_values(messages), false)?;
        let assistants: Vec<usize> = messages
            .iter()
            .enumerate()
            .filter(|(_, m)| m.role == Role::Assistant)
            .map(|(i, _)| i)
            .collect();
        if assistants.is_empty() {
            return Ok(Rendered {
                text: real,
                assistant_spans: Vec::new(),
            });
        }
        for (i, m) in messages.iter().enumerate() {
            if m.content.contains(SENTINEL_OPEN) || m.content.contains(SENTINEL_CLOSE) {
                return Err(ChatError::SpanNotFound { index: i, message: "content contains the private-use characters U+E000/U+E001 used as sentinels".into() });
            }
        }
        let mut probe = to_values(messages);
        for &i in &assistants {
            probe[i].content = sentinel(i);
        }
        let marked = self.render_raw(&probe, false)?;
        // Cut the sentinel rendering into the template's own fragments.
        let mut fragments = Vec::with_capacity(assistants.len() + 1);
        let mut rest = marked.as_str();
        for &i in &assistants {
            let s = sentinel(i);
            let at = rest.find(&s).ok_or_else(|| ChatError::SpanNotFound {
                index: i,
                message: "the template does not write this assistant message (or writes messages out of order)".into(),
            })?;
            fragments.push(&rest[..at]);
            rest = &rest[at + s.len()..];
            if rest.contains(&s) {
                return Err(ChatError::SpanNotFound {
                    index: i,
                    message: "the template writes this assistant message more than once".into(),
                });
            }
        }
        fragments.push(rest);
        let marker = self.end_marker()?;

        // Contents verbatim first, then trimmed (for templates that strip).
        let transforms: [fn(&str) -> &str; 2] = [|s| s, str::trim];
        for transform in transforms {
            let mut text = String::with_capacity(real.len());
            let mut spans = Vec::with_capacity(assistants.len());
            for (k, &i) in assistants.iter().enumerate() {
                text.push_str(fragments[k]);
                let start = text.len();
                text.push_str(transform(&messages[i].content));
                let content_end = text.len();
                spans.push(AssistantSpan {
                    message_index: i,
                    range: start..content_end + marker.len(),
                    content: start..content_end,
                });
            }
            text.push_str(fragments[assistants.len()]);
            if text != real {
                continue;
            }
            for span in &mut spans {
                if !text[span.content.end..].starts_with(&marker) {
                    return Err(ChatError::SpanNotFound {
                        index: span.message_index,
                        message: format!("the assistant content is not followed by the end-of-turn marker {marker:?}"),
                    });
                }
                // Whitespace between the end of the generation prompt and the content (Llama-2's
                // `[/INST] `) is produced by the model, so it is trained on too. Only a prompt that
                // is a true prefix of the text counts; otherwise the span stays at the content.
                let prompt = self.render_raw(&to_values(&messages[..span.message_index]), true)?;
                let p = prompt.len();
                if p < span.content.start
                    && text.starts_with(&prompt)
                    && text[p..span.content.start].chars().all(char::is_whitespace)
                {
                    span.range.start = p;
                }
            }
            return Ok(Rendered {
                text,
                assistant_spans: spans,
            });
        }
        Err(ChatError::SpanNotFound {
            index: assistants[0],
            message: "the template rewrites assistant content (beyond trimming whitespace), so its place in the text is not certain".into(),
        })
    }
}
