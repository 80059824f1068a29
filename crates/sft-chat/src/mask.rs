//! Token ids and the assistant-only loss mask for a conversation.

use crate::{AssistantSpan, ChatError, ChatTemplate, ChatTokenizer, Result};
use sft_record::Message;

/// A conversation tokenized for training.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedChat {
    /// Token ids (with BOS where the template/tokenizer adds it).
    pub ids: Vec<u32>,
    /// `true` where the token is assistant content or its end-of-turn marker (trained on).
    pub labels_mask: Vec<bool>,
    /// The rendered text.
    pub text: String,
    /// Byte spans of assistant content in `text`.
    pub spans: Vec<AssistantSpan>,
    /// For each span, the token index range it maps to.
    pub token_spans: Vec<std::ops::Range<usize>>,
}

impl EncodedChat {
    /// Number of tokens trained on.
    pub fn n_target_tokens(&self) -> usize {
        self.labels_mask.iter().filter(|&&m| m).count()
    }

    /// The rendered text with every trained span wrapped in `open` … `close`, for eyeballing
    /// masks (e.g. in a batch dump).
    pub fn annotated_text(&self, open: &str, close: &str) -> String {
        let mut out =
            String::with_capacity(self.text.len() + self.spans.len() * (open.len() + close.len()));
        let mut at = 0;
        for span in &self.spans {
            out.push_str(&self.text[at..span.range.start]);
            out.push_str(open);
            out.push_str(&self.text[span.range.clone()]);
            out.push_str(close);
            at = span.range.end;
        }
        out.push_str(&self.text[at..]);
        out
    }

    /// Labels in the HF convention: the id where trained on, `-100` elsewhere.
    pub fn labels(&self) -> Vec<i64> {
        self.ids
            .iter()
            .zip(&self.labels_mask)
            .map(|(&id, &m)| if m { i64::from(id) } else { -100 })
            .collect()
    }
}

impl ChatTemplate {
    /// Render `messages`, tokenize, and mark the tokens of every assistant span.
    ///
    /// A token lies in a span if its byte range is inside it. A token that starts before a span
    /// counts as inside when the bytes before the span are whitespace only (a space the
    /// tokenizer merged into the first content token). Any other token crossing a span boundary is an
    /// [`ChatError::AmbiguousBoundary`] error, and so is a span some of whose bytes no token
    /// covers: a sample is never trained with a guessed mask.
    pub fn encode_with_mask(
        &self,
        tokenizer: &ChatTokenizer,
        messages: &[Message],
    ) -> Result<EncodedChat> {
        let rendered = self.render(messages)?;
        let (ids, offsets) =
            tokenizer.encode_with_offsets(&rendered.text, self.adds_special_tokens())?;
        let text = rendered.text;
        let mut labels_mask = vec![false; ids.len()];
        let mut token_spans = Vec::with_capacity(rendered.assistant_spans.len());
        for span in &rendered.assistant_spans {
            let (ss, se) = (span.range.start, span.range.end);
            let mut first = None;
            let mut last = 0;
            let mut covered = ss;
            for (t, &(s, e)) in offsets.iter().enumerate() {
                if s >= e || e <= ss || s >= se {
                    continue;
                }
                let starts_ok = s >= ss || text[s..ss].chars().all(char::is_whitespace);
                if !starts_ok || e > se {
                    return Err(ChatError::AmbiguousBoundary {
                        message_index: span.message_index,
                        token_index: t,
                        token: text.get(s..e).unwrap_or("").to_string(),
                        start: s,
                        end: e,
                        span_start: ss,
                        span_end: se,
                    });
                }
                if s.max(ss) > covered {
                    break;
                }
                covered = covered.max(e);
                labels_mask[t] = true;
                first.get_or_insert(t);
                last = t;
            }
            if covered < se {
                return Err(ChatError::SpanNotFound {
                    index: span.message_index,
                    message: format!(
                        "tokens cover bytes {ss}..{covered} of the span {ss}..{se} only"
                    ),
                });
            }
            token_spans.push(first.unwrap_or(0)..last + 1);
        }
        Ok(EncodedChat {
            ids,
            labels_mask,
            text,
            spans: rendered.assistant_spans,
            token_spans,
        })
    }

    /// [`ChatTemplate::encode_with_mask`] for many conversations on `threads` OS threads
    /// (`0` = all available cores), results in input order. Tokenizing a fine-tuning mix is
    /// CPU-bound and embarrassingly parallel; one thread does about 0.3 M tokens/s.
    pub fn encode_many_with_mask<C: AsRef<[Message]> + Sync>(
        &self,
        tokenizer: &ChatTokenizer,
        conversations: &[C],
        threads: usize,
    ) -> Vec<Result<EncodedChat>> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let chunk = conversations.len().div_ceil(threads.max(1)).max(1);
        std::thread::scope(|scope| {
            let handles: Vec<_> = conversations
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|c| self.encode_with_mask(tokenizer, c.as_ref()))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| match h.join() {
                    Ok(results) => results,
                    Err(panic) => std::panic::resume_unwind(panic),
                })
                .collect()
        })
    }

    /// Token ids of a generation prompt ([`ChatTemplate::render_prompt`], tokenized as
    /// [`ChatTemplate::encode_with_mask`] tokenizes).
    pub fn encode_prompt(
        &self,
        tokenizer: &ChatTokenizer,
        messages: &[Message],
    ) -> Result<Vec<u32>> {
        let text = self.render_prompt(messages)?;
        tokenizer.encode(&text, self.adds_special_tokens())
    }
}
