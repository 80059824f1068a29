//! The one record model every loader produces: a conversation with a stable id.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Who speaks a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A system prompt; only allowed as the first message.
    System,
    /// The human side.
    User,
    /// The model side; the turns a trainer puts loss on.
    Assistant,
}

impl Role {
    /// The lowercase name used in the chat format.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    /// Maps a ShareGPT/Vicuna `from` value to a role.
    ///
    /// `human`/`user` → user, `gpt`/`chatgpt`/`assistant`/`bard`/`bing`/`model` → assistant,
    /// `system` → system (all case-insensitive). Anything else is `None` (an unknown role).
    pub fn from_sharegpt(from: &str) -> Option<Role> {
        let lower = from.trim().to_ascii_lowercase();
        match lower.as_str() {
            "human" | "user" => Some(Role::User),
            "gpt" | "chatgpt" | "assistant" | "bard" | "bing" | "model" => Some(Role::Assistant),
            "system" => Some(Role::System),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    /// The speaker.
    pub role: Role,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message with the given role and text.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
        }
    }
}

/// One training example: a conversation from a named source.
///
/// Serialized (JSONL and Parquet) as `{"id", "source", "messages": [{"role", "content"}], "tags"}`,
/// plus `"metadata"` when it is not empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// `<source>:<index>`, the index being the 0-based position of the record in its source file.
    pub id: String,
    /// The source name given in the mixture spec (e.g. `math`).
    pub source: String,
    /// The conversation, in order.
    pub messages: Vec<Message>,
    /// Tags from a tag file, a `tags` field, or a tagger; sorted and unique.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Extra information kept from the input (e.g. the original ShareGPT id as `orig_id`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

impl Record {
    /// The id for record `index` of source `source`.
    pub fn make_id(source: &str, index: usize) -> String {
        format!("{source}:{index}")
    }

    /// Adds tags, keeping the list sorted and free of duplicates.
    pub fn add_tags<I, S>(&mut self, tags: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags.extend(tags.into_iter().map(Into::into));
        self.tags.sort();
        self.tags.dedup();
    }

    /// All message texts of one role, joined by a blank line (handy for taggers).
    pub fn text_of(&self, role: Role) -> String {
        let parts: Vec<&str> = self
            .messages
            .iter()
            .filter(|m| m.role == role)
            .map(|m| m.content.as_str())
            .collect();
        parts.join("\n\n")
    }
}
