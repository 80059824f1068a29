//! Conversation helpers over [`sft_record::Message`], the workspace's one message type.

use sft_record::{Message, Role};

/// Drop assistant messages that open a conversation (after an optional system message).
///
/// ShareGPT segments often begin with a model turn; FastChat's `preprocess` drops a first message
/// that is not from the human. Everything else about the conversation is left to
/// [`crate::ChatTemplate::render`]'s checks.
pub fn drop_leading_assistant_turns(messages: &[Message]) -> Vec<Message> {
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
            Message::system("s"),
            Message::assistant("a"),
            Message::user("u"),
            Message::assistant("b"),
        ];
        assert_eq!(
            drop_leading_assistant_turns(&conv),
            vec![conv[0].clone(), conv[2].clone(), conv[3].clone()]
        );
        let conv = [Message::assistant("a"), Message::user("u")];
        assert_eq!(drop_leading_assistant_turns(&conv), vec![conv[1].clone()]);
        assert!(drop_leading_assistant_turns(&[]).is_empty());
    }
}
