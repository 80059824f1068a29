//! The chat message type.

use serde::{Deserialize, Serialize};

/// Who speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// System prompt (at most one, first).
    System,
    /// The human turn.
    User,
    /// The model turn: the only content trained on.
    Assistant,
}

impl Role {
    /// The lowercase name used by HF chat templates (`system`, `user`, `assistant`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Speaker.
    pub role: Role,
    /// Text.
    pub content: String,
}

impl ChatMessage {
    /// A message.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// Drop assistant messages that open a conversation (after an optional system message).
///
/// ShareGPT segments often begin with a model turn; FastChat's `preprocess` drops a first message
/// that is not from the human. Everything else about the conversation is left to
/// [`crate::ChatTemplate::render`]'s checks.
pub fn drop_leading_assistant_turns(messages: &[ChatMessage]) -> Vec<ChatMessage> {
    let start = usize::from(messages.first().is_some_and(|m| m.role == Role::System));
    let skip = messages[start..]
        .iter()
        .take_while(|m| m.role == Role::Assistant)
        .count();
    messages[..start]
        .iter()
        .chain(&messages[start + skip..])
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_assistant_turns_are_dropped() {
        let conv = [
            ChatMessage::system("s"),
            ChatMessage::assistant("a"),
            ChatMessage::user("u"),
            ChatMessage::assistant("b"),
        ];
        assert_eq!(
            drop_leading_assistant_turns(&conv),
            vec![conv[0].clone(), conv[2].clone(), conv[3].clone()]
        );
        let conv = [ChatMessage::assistant("a"), ChatMessage::user("u")];
        assert_eq!(drop_leading_assistant_turns(&conv), vec![conv[1].clone()]);
        assert!(drop_leading_assistant_turns(&[]).is_empty());
    }
}
