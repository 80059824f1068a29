//! An offline keyword/regex tagger that recognises code and math content.
//!
//! InsTag's tagger model cannot be run here, so the ShareGPT code/math ablation is approximated
//! with these rules. Each rule is a case-insensitive regex searched in the user turns
//! ([`Scope::User`]) or in every turn ([`Scope::Any`]):
//!
//! | rule | tag | scope | looks for |
//! | --- | --- | --- | --- |
//! | `code_fence` | code | any | a Markdown code fence (three backticks) |
//! | `code_syntax` | code | any | source-code shapes: `def f(`, `function f(`, `#include <`, `public static void`, `console.log(`, `SELECT … FROM`, `fn f(`, `import x.y;`, HTML tags, `=> {` |
//! | `code_words` | code | user | programming words: a language name (python, javascript, typescript, java, c++, c#, golang, rust, sql, php, ruby, kotlin, swift, bash, html, css), code, coding, program(ming), script, debug, compile, algorithm, regex, function/class/method *in code*, api endpoint |
//! | `math_latex` | math | any | LaTeX math: `\frac`, `\sqrt`, `\sum`, `\int`, `\cdot`, `\times`, `\pi`, `\le`/`\ge`, or `$…$` holding a LaTeX command, `^` or `_{` (plain `$10 … $20` prices do not count) |
//! | `math_equation` | math | any | an arithmetic equation `12 * 3 = 36` (number, operator, number, `=`), or GSM8K's `<<…=…>>` / `#### N` |
//! | `math_words` | math | user | math words: math(s), mathematics, equation, algebra, geometry, calculus, integral, derivative, probability, theorem, arithmetic, solve for, calculate, percent(age) |
//!
//! The rules favour recall on the user's intention (as InsTag tags queries) over precision;
//! the per-rule counts in [`crate::TaggingStats`] show what each one caught.

use regex::{Regex, RegexBuilder};

use super::base::{TagHit, Tagger};
use sft_record::{Record, Role};

/// Which turns a rule reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only user turns (the query, as InsTag tags intentions).
    User,
    /// Every turn.
    Any,
}

/// One keyword/regex rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule's name, reported in per-rule counts.
    pub name: String,
    /// The tag it gives.
    pub tag: String,
    /// Which turns it reads.
    pub scope: Scope,
    /// The pattern (case-insensitive, multi-line).
    pub pattern: Regex,
}

impl Rule {
    /// A rule from a pattern string; an invalid pattern is a regex error.
    pub fn new(name: &str, tag: &str, scope: Scope, pattern: &str) -> Result<Rule, regex::Error> {
        let pattern = RegexBuilder::new(pattern)
            .case_insensitive(true)
            .multi_line(true)
            .build()?;
        Ok(Rule {
            name: name.to_string(),
            tag: tag.to_string(),
            scope,
            pattern,
        })
    }
}

/// The documented code/math rules (see the module docs), or your own.
#[derive(Debug, Clone)]
pub struct HeuristicTagger {
    name: String,
    rules: Vec<Rule>,
}

const DEFAULT_RULES: [(&str, &str, Scope, &str); 6] = [
    ("code_fence", "code", Scope::Any, r"```"),
    (
        "code_syntax",
        "code",
        Scope::Any,
        r"(\bdef\s+\w+\s*\(|\bfunction\s*\w*\s*\([^)]*\)\s*\{|#include\s*<|\bpublic\s+static\s+void\b|\bconsole\.log\(|\bselect\b[^;\n]{1,200}\bfrom\s+\w+|\bfn\s+\w+\s*\(|^\s*import\s+[\w.]+\s*;?\s*$|</?(div|span|html|body|script|table)\b[^>]*>|=>\s*\{)",
    ),
    (
        "code_words",
        "code",
        Scope::User,
        r"\b(python|javascript|typescript|java|c\+\+|c#|golang|rust lang|rustlang|sql|php|ruby|kotlin|swift ?ui|bash|html|css|code|coding|programm?ing|program|script|debug|compile|compiler|algorithm|regex|api endpoint|function in|class in|method in)\b",
    ),
    (
        "math_latex",
        "math",
        Scope::Any,
        r"(\\(frac|sqrt|sum|int|cdot|times|pi|le|ge|leq|geq)\b|\$[^$\n]*(\\[a-zA-Z]+|\^|_\{)[^$\n]*\$)",
    ),
    (
        "math_equation",
        "math",
        Scope::Any,
        r"(\d+(\.\d+)?\s*[-+*/×÷^]\s*\d+(\.\d+)?\s*(=|equals)|<<[^<>\n]*=[^<>\n]*>>|^####\s*-?[\d,.]+\s*$)",
    ),
    (
        "math_words",
        "math",
        Scope::User,
        r"\b(maths?|mathematics|mathematical|equations?|algebra|geometry|calculus|integral|derivative|probability|theorem|arithmetic|solve for|calculate|percent|percentage)\b",
    ),
];

impl HeuristicTagger {
    /// The documented rules, named `heuristic-v1`.
    pub fn new() -> Self {
        let rules = DEFAULT_RULES
            .iter()
            .filter_map(|(name, tag, scope, pattern)| Rule::new(name, tag, *scope, pattern).ok())
            .collect();
        HeuristicTagger {
            name: "heuristic-v1".to_string(),
            rules,
        }
    }

    /// A tagger with custom rules.
    pub fn with_rules(name: &str, rules: Vec<Rule>) -> Self {
        HeuristicTagger {
            name: name.to_string(),
            rules,
        }
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

impl Default for HeuristicTagger {
    fn default() -> Self {
        HeuristicTagger::new()
    }
}

impl Tagger for HeuristicTagger {
    fn name(&self) -> &str {
        &self.name
    }

    fn tag(&self, record: &Record) -> Vec<TagHit> {
        let mut hits = Vec::new();
        for rule in &self.rules {
            let fired = record.messages.iter().any(|m| {
                (rule.scope == Scope::Any || m.role == Role::User)
                    && rule.pattern.is_match(&m.content)
            });
            if fired {
                hits.push(TagHit {
                    tag: rule.tag.clone(),
                    rule: rule.name.clone(),
                });
            }
        }
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sft_record::Message;

    fn rec(user: &str, assistant: &str) -> Record {
        Record {
            id: "t:0".into(),
            source: "t".into(),
            messages: vec![
                Message::new(Role::User, user),
                Message::new(Role::Assistant, assistant),
            ],
            tags: vec![],
            metadata: Default::default(),
        }
    }

    fn rules_for(user: &str, assistant: &str) -> Vec<String> {
        HeuristicTagger::new()
            .tag(&rec(user, assistant))
            .into_iter()
            .map(|h| h.rule)
            .collect()
    }

    #[test]
    fn all_default_rules_compile() {
        assert_eq!(HeuristicTagger::new().rules().len(), DEFAULT_RULES.len());
    }

    #[test]
    fn recognises_code() {
        assert_eq!(
            rules_for(
                "Write a Python function to reverse a list.",
                "def rev(xs):\n    return xs[::-1]"
            ),
            ["code_syntax", "code_words"]
        );
        assert_eq!(rules_for("hi", "```js\nx\n```"), ["code_fence"]);
        assert!(rules_for("Create a SQL query", "SELECT name FROM users;")
            .contains(&"code_syntax".to_string()));
    }

    #[test]
    fn recognises_math() {
        let r = rules_for(
            "Natalia sold 48 clips. How many?",
            "48/2 = <<48/2=24>>24\n#### 72",
        );
        assert_eq!(r, ["math_equation"]);
        assert_eq!(
            rules_for("Solve the equation x^2 = 4", "x = 2"),
            ["math_words"]
        );
        assert_eq!(
            rules_for("hi", "$x^2 + 1$ and \\frac{1}{2}"),
            ["math_latex"]
        );
        assert!(
            rules_for("hi", "It costs $10 and then $20.").is_empty(),
            "prices are not LaTeX"
        );
    }

    #[test]
    fn leaves_plain_chat_alone() {
        assert!(rules_for("Write a poem about the sea.", "The sea is wide and deep.").is_empty());
        // "program" in the assistant turn only does not make a coding query
        assert!(rules_for("Plan a trip to Rome", "Here is a travel program for you.").is_empty());
    }
}
