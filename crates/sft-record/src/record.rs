//! The one record model: roles, messages, and a conversation with a stable id.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ParseRoleError;

/// Who speaks a message.
///
/// Serialized as its lowercase name ([`Role::as_str`]); deserialized through [`FromStr`], which
/// accepts exactly `system`, `user` and `assistant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
            "human" => Some(Role::User),
            "gpt" | "chatgpt" | "bard" | "bing" | "model" => Some(Role::Assistant),
            canonical => canonical.parse().ok(),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ParseRoleError;

    /// `system`, `user` or `assistant` (exactly, as written by [`Role::as_str`]).
    fn from_str(s: &str) -> Result<Role, ParseRoleError> {
        match s {
            "system" => Ok(Role::System),
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            other => Err(ParseRoleError {
                found: other.to_string(),
            }),
        }
    }
}

impl Serialize for Role {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Role {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Role, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Role;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a role: system, user or assistant")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Role, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// One turn of a conversation, serialized as `{"role", "content"}`.
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

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Message::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Message::new(Role::User, content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Message::new(Role::Assistant, content)
    }
}

/// One training example: a conversation from a named source.
///
/// Serialized (JSONL and Parquet) as `{"id", "source", "messages": [{"role", "content"}], "tags"}`,
/// plus `"metadata"` when it is not empty. Reading ignores other fields; `tags` and `metadata`
/// may be absent.
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

    /// The source's own id (`metadata.orig_id`, e.g. the ShareGPT id), as text.
    pub fn orig_id(&self) -> Option<String> {
        self.metadata.get("orig_id").map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
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
