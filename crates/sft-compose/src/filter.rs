//! Tag-filter expressions: `code|math`, `not (code | /^math(ematics)?$/)`, `"python programming" & !sql`.
//!
//! Grammar (lowest precedence first; `or`/`and`/`not` are case-insensitive keywords):
//!
//! ```text
//! expr    := and (("|" | "or") and)*
//! and     := unary (("&" | "and") unary)*
//! unary   := ("!" | "not") unary | primary
//! primary := "(" expr ")" | WORD | "\"" text "\"" | "/" regex "/"
//! WORD    := one or more of [A-Za-z0-9_.:+#-]
//! ```
//!
//! A WORD or quoted text matches a record when it is a case-insensitive substring of any of its
//! tags (so `code` matches `code generation`); a `/regex/` (case-insensitive; `\/` for a slash)
//! matches when it finds a match in any tag. A filter keeps the records it matches: to drop code
//! and math as the paper's InsTag ablation did, write `not (code|math)`.

use std::fmt;

use regex::{Regex, RegexBuilder};

use crate::error::{Error, Result};

/// A parsed tag filter.
#[derive(Debug, Clone)]
pub enum TagFilter {
    /// Case-insensitive substring of any tag (stored lowercased).
    Keyword(String),
    /// Regex search in any tag (case-insensitive).
    Regex(Regex),
    /// Negation.
    Not(Box<TagFilter>),
    /// All must match.
    And(Vec<TagFilter>),
    /// Any must match.
    Or(Vec<TagFilter>),
}

impl PartialEq for TagFilter {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl TagFilter {
    /// Parses an expression; errors carry the byte offset of the problem.
    pub fn parse(expr: &str) -> Result<TagFilter> {
        let mut p = Parser { src: expr, pos: 0 };
        p.skip_ws();
        if p.pos == expr.len() {
            return Err(p.error("empty filter expression"));
        }
        let f = p.parse_or()?;
        p.skip_ws();
        if p.pos != expr.len() {
            return Err(
                p.error("unexpected input; expected an operator (|, &, or, and) or the end")
            );
        }
        Ok(f)
    }

    /// Does the filter match a record with these tags?
    pub fn matches<S: AsRef<str>>(&self, tags: &[S]) -> bool {
        match self {
            TagFilter::Keyword(k) => tags
                .iter()
                .any(|t| t.as_ref().to_lowercase().contains(k.as_str())),
            TagFilter::Regex(re) => tags.iter().any(|t| re.is_match(t.as_ref())),
            TagFilter::Not(f) => !f.matches(tags),
            TagFilter::And(fs) => fs.iter().all(|f| f.matches(tags)),
            TagFilter::Or(fs) => fs.iter().any(|f| f.matches(tags)),
        }
    }
}

impl fmt::Display for TagFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TagFilter::Keyword(k) => {
                if !k.is_empty() && k.chars().all(is_word_char) && !is_keyword(k) {
                    write!(f, "{k}")
                } else {
                    write!(f, "\"{}\"", k.replace('"', "\\\""))
                }
            }
            TagFilter::Regex(re) => write!(f, "/{}/", re.as_str().replace('/', "\\/")),
            TagFilter::Not(inner) => write!(f, "not {inner}"),
            TagFilter::And(fs) | TagFilter::Or(fs) => {
                let op = if matches!(self, TagFilter::And(_)) {
                    " and "
                } else {
                    " or "
                };
                write!(f, "(")?;
                for (i, x) in fs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(op)?;
                    }
                    write!(f, "{x}")?;
                }
                write!(f, ")")
            }
        }
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | ':' | '+' | '#' | '-')
}

fn is_keyword(w: &str) -> bool {
    matches!(w.to_ascii_lowercase().as_str(), "and" | "or" | "not")
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, message: &str) -> Error {
        Error::FilterSyntax {
            expr: self.src.to_string(),
            offset: self.pos,
            message: message.to_string(),
        }
    }

    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.src.len() - trimmed.len();
    }

    /// Consumes a symbol or a keyword (keywords must not run into a word character).
    fn eat(&mut self, symbol: &str, keyword: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(symbol) {
            self.pos += symbol.len();
            return true;
        }
        let rest = self.rest();
        if rest.len() >= keyword.len() && rest[..keyword.len()].eq_ignore_ascii_case(keyword) {
            let after = rest[keyword.len()..].chars().next();
            if after.is_none_or(|c| !is_word_char(c)) {
                self.pos += keyword.len();
                return true;
            }
        }
        false
    }

    fn parse_or(&mut self) -> Result<TagFilter> {
        let mut items = vec![self.parse_and()?];
        while self.eat("|", "or") {
            items.push(self.parse_and()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            TagFilter::Or(items)
        })
    }

    fn parse_and(&mut self) -> Result<TagFilter> {
        let mut items = vec![self.parse_unary()?];
        while self.eat("&", "and") {
            items.push(self.parse_unary()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            TagFilter::And(items)
        })
    }

    fn parse_unary(&mut self) -> Result<TagFilter> {
        if self.eat("!", "not") {
            return Ok(TagFilter::Not(Box::new(self.parse_unary()?)));
        }
        self.parse_primary()
    }

    fn parse_primary(&mut self) -> Result<TagFilter> {
        self.skip_ws();
        let Some(c) = self.rest().chars().next() else {
            return Err(self.error("unexpected end; expected a tag, \"text\", /regex/, ( or not"));
        };
        match c {
            '(' => {
                let open = self.pos;
                self.pos += 1;
                let inner = self.parse_or()?;
                self.skip_ws();
                if !self.rest().starts_with(')') {
                    let msg = format!("expected ')' to close the '(' at offset {open}");
                    return Err(self.error(&msg));
                }
                self.pos += 1;
                Ok(inner)
            }
            '"' => {
                let start = self.pos;
                let (text, end) = self.delimited('"').ok_or_else(|| Error::FilterSyntax {
                    expr: self.src.to_string(),
                    offset: start,
                    message: "unterminated \"quoted text\"".into(),
                })?;
                self.pos = end;
                if text.is_empty() {
                    return Err(Error::FilterSyntax {
                        expr: self.src.to_string(),
                        offset: start,
                        message: "empty quoted text".into(),
                    });
                }
                Ok(TagFilter::Keyword(text.to_lowercase()))
            }
            '/' => {
                let start = self.pos;
                let (text, end) = self.delimited('/').ok_or_else(|| Error::FilterSyntax {
                    expr: self.src.to_string(),
                    offset: start,
                    message: "unterminated /regex/".into(),
                })?;
                let re = RegexBuilder::new(&text)
                    .case_insensitive(true)
                    .build()
                    .map_err(|e| Error::FilterSyntax {
                        expr: self.src.to_string(),
                        offset: start + 1,
                        message: format!("invalid regex: {e}"),
                    })?;
                self.pos = end;
                Ok(TagFilter::Regex(re))
            }
            c if is_word_char(c) => {
                let start = self.pos;
                let len: usize = self
                    .rest()
                    .chars()
                    .take_while(|&c| is_word_char(c))
                    .map(char::len_utf8)
                    .sum();
                let word = &self.src[start..start + len];
                if is_keyword(word) {
                    return Err(
                        self.error(&format!("expected a tag but found the operator {word:?}"))
                    );
                }
                self.pos += len;
                Ok(TagFilter::Keyword(word.to_lowercase()))
            }
            other => Err(self.error(&format!(
                "unexpected character {other:?}; expected a tag, \"text\", /regex/, ( or not"
            ))),
        }
    }

    /// Reads text between `delim`s starting at `self.pos`, with `\delim` as an escape.
    /// Returns the unescaped text and the offset just after the closing delimiter.
    fn delimited(&self, delim: char) -> Option<(String, usize)> {
        let body = &self.src[self.pos + 1..];
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some((_, n)) if n == delim => out.push(n),
                    Some((_, n)) => {
                        out.push('\\');
                        out.push(n);
                    }
                    None => return None,
                }
            } else if c == delim {
                return Some((out, self.pos + 1 + i + 1));
            } else {
                out.push(c);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(expr: &str, tags: &[&str]) -> bool {
        TagFilter::parse(expr).unwrap().matches(tags)
    }

    #[test]
    fn keywords_are_substrings_and_case_insensitive() {
        assert!(m("code|math", &["Code generation"]));
        assert!(m("code|math", &["mathematics"]));
        assert!(!m("code|math", &["creative writing"]));
        assert!(m("not (code|math)", &["creative writing"]));
        assert!(m("not (code|math)", &[]));
    }

    #[test]
    fn precedence_and_keywords() {
        // not > and > or
        assert!(m("a | b & c", &["a"]));
        assert!(!m("(a | b) & c", &["a"]));
        assert!(m("NOT a AND b", &["b"]));
        assert!(!m("!a & b", &["a", "b"]));
        assert!(m(
            "\"python programming\" and not sql",
            &["Python programming"]
        ));
        // words that merely start with a keyword are tags
        assert!(m("order | android", &["android dev"]));
    }

    #[test]
    fn regexes() {
        assert!(m("/^math(ematics)?$/", &["Mathematics"]));
        assert!(!m("/^math$/", &["mathematics"]));
        assert!(m(r"/a\/b/", &["a/b"]));
    }

    #[test]
    fn errors_carry_offsets() {
        let cases = [
            ("", 0),
            ("code |", 6),
            ("(code", 5),
            ("code math", 5),
            ("/[/", 1),
            ("\"abc", 0),
            ("code & )", 7),
            ("and", 0),
        ];
        for (expr, offset) in cases {
            match TagFilter::parse(expr) {
                Err(Error::FilterSyntax { offset: o, .. }) => assert_eq!(o, offset, "{expr:?}"),
                other => panic!("{expr:?}: expected a syntax error, got {other:?}"),
            }
        }
    }

    #[test]
    fn display_round_trips() {
        for expr in ["code|math", "not (code | /^m.th$/) & \"a b\"", "!x"] {
            let f = TagFilter::parse(expr).unwrap();
            let g = TagFilter::parse(&f.to_string()).unwrap();
            assert_eq!(f, g);
        }
    }
}
