//! A safe evaluator for the calculator annotations `<<lhs=rhs>>` of GSM8K-style solutions.
//!
//! The RFT paper's script (`collect_rejection_sampling.py` in OFA-Sys/gsm8k-ScRel) runs Python's
//! `eval` on the text before the first `=` and `float` on the text between the first and second
//! `=`. This module accepts the arithmetic subset of that, with Python's semantics, and nothing
//! else: model text is never executed.
//!
//! - **Grammar** (Python precedence): `+`/`-` < `*`/`/` < unary `+`/`-` < `**` (right-associative,
//!   its right operand may be signed): `-2**2` is −4, `2**-1` is 0.5, `2**3**2` is 512.
//! - **Literals** as Python's: `12`, `1_000`, `5.`, `.5`, `1e3`, `0x1F`/`0o7`/`0b1`; a decimal
//!   integer with a leading zero (`05`) is a syntax error, as in Python 3; `00` is 0.
//! - **Values** as Python's: integers are exact (`i128`; beyond that, `f64` as an approximation),
//!   `/` is true division, mixed operations are `f64`, `int ** negative int` is a float.
//! - **Failures** (the span fails the check): anything else (`%`, `//`, names, calls, commas,
//!   comments, `x`, `$`, unbalanced parentheses, more than 200 nested parentheses, more than
//!   1000 chained `**`), division by
//!   zero, `0 ** negative`, a complex result (negative base, fractional exponent), overflow of
//!   `**`, and a result that is not finite.
//! - **Whitespace** as `eval`: spaces, tabs and form feeds anywhere; a line break only inside
//!   parentheses, before the expression or after it (`1\n+2` is a syntax error in Python, so it
//!   fails here), and a backslash-newline continuation.

use std::fmt;

/// Python's nesting limit for parentheses (the tokenizer's `MAXLEVEL`).
const MAX_PAREN_DEPTH: usize = 200;
/// A bound on the parser's recursion (parentheses and chains of `**`).
const MAX_RECURSION: usize = 1000;

/// Why an expression or a calculator annotation fails.
#[derive(Debug, Clone, PartialEq)]
pub enum ArithError {
    /// Not in the accepted arithmetic grammar (byte offset into the expression).
    Syntax {
        /// Byte offset of the offending character or token.
        offset: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// Division (or `0 ** negative`) by zero.
    DivisionByZero,
    /// A negative number raised to a fractional power (Python gives a complex number).
    Complex,
    /// `**` overflowed, or the result is not a finite number.
    NotFinite,
    /// Too deeply nested.
    TooDeep,
}

impl fmt::Display for ArithError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArithError::Syntax { offset, what } => {
                write!(f, "syntax error at byte {offset}: {what}")
            }
            ArithError::DivisionByZero => f.write_str("division by zero"),
            ArithError::Complex => f.write_str("complex result"),
            ArithError::NotFinite => f.write_str("overflow or non-finite result"),
            ArithError::TooDeep => f.write_str("nested too deeply"),
        }
    }
}

impl std::error::Error for ArithError {}

/// A Python number: an exact integer or a float.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    fn to_f64(self) -> f64 {
        match self {
            // Round to nearest, ties to even: Python's float(int).
            Num::Int(i) => i as f64,
            Num::Float(x) => x,
        }
    }

    fn is_zero(self) -> bool {
        match self {
            Num::Int(i) => i == 0,
            Num::Float(x) => x == 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Num(Num),
    Plus,
    Minus,
    Star,
    Slash,
    Pow,
    LParen,
    RParen,
}

fn syntax(offset: usize, what: &'static str) -> ArithError {
    ArithError::Syntax { offset, what }
}

fn tokenize(s: &str) -> Result<Vec<(usize, Tok)>, ArithError> {
    let b = s.as_bytes();
    let mut toks = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | 0x0c => i += 1,
            b'\\' => {
                // Line continuation: a backslash directly before a line break.
                if b.get(i + 1) == Some(&b'\n') {
                    i += 2;
                } else if b.get(i + 1) == Some(&b'\r') {
                    i += if b.get(i + 2) == Some(&b'\n') { 3 } else { 2 };
                } else {
                    return Err(syntax(i, "backslash"));
                }
            }
            b'\n' | b'\r' => {
                if depth > 0 || toks.is_empty() {
                    i += 1;
                } else {
                    // A line break ends the expression: only blank text may follow.
                    if b[i..]
                        .iter()
                        .all(|c| matches!(c, b' ' | b'\t' | 0x0c | b'\n' | b'\r'))
                    {
                        break;
                    }
                    return Err(syntax(i, "line break inside the expression"));
                }
            }
            b'(' => {
                depth += 1;
                if depth > MAX_PAREN_DEPTH {
                    return Err(ArithError::TooDeep);
                }
                toks.push((i, Tok::LParen));
                i += 1;
            }
            b')' => {
                if depth == 0 {
                    return Err(syntax(i, "unmatched ')'"));
                }
                depth -= 1;
                toks.push((i, Tok::RParen));
                i += 1;
            }
            b'+' => {
                toks.push((i, Tok::Plus));
                i += 1;
            }
            b'-' => {
                toks.push((i, Tok::Minus));
                i += 1;
            }
            b'*' => {
                if b.get(i + 1) == Some(&b'*') {
                    toks.push((i, Tok::Pow));
                    i += 2;
                } else {
                    toks.push((i, Tok::Star));
                    i += 1;
                }
            }
            b'/' => {
                if b.get(i + 1) == Some(&b'/') {
                    return Err(syntax(i, "floor division is not accepted"));
                }
                toks.push((i, Tok::Slash));
                i += 1;
            }
            b'0'..=b'9' | b'.' => {
                let (num, end) = lex_number(b, i)?;
                toks.push((i, Tok::Num(num)));
                i = end;
            }
            _ => return Err(syntax(i, "character not accepted in arithmetic")),
        }
    }
    if depth != 0 {
        return Err(syntax(b.len(), "unclosed '('"));
    }
    Ok(toks)
}

/// Reads `digit (['_'] digit)*` in `radix` from `i`; returns the digits without underscores.
fn digit_part(b: &[u8], mut i: usize, radix: u32, out: &mut String) -> Result<usize, ArithError> {
    let is_digit = |c: u8| (c as char).is_digit(radix);
    if !b.get(i).is_some_and(|&c| is_digit(c)) {
        return Err(syntax(i, "digit expected"));
    }
    loop {
        match b.get(i) {
            Some(&c) if is_digit(c) => {
                out.push(c as char);
                i += 1;
            }
            Some(b'_') => {
                if b.get(i + 1).is_some_and(|&c| is_digit(c)) {
                    i += 1;
                } else {
                    return Err(syntax(i, "'_' must be between digits"));
                }
            }
            _ => return Ok(i),
        }
    }
}

/// Lexes a Python numeric literal starting at `start` (a digit, or `.` followed by a digit).
fn lex_number(b: &[u8], start: usize) -> Result<(Num, usize), ArithError> {
    let mut i = start;
    // 0x / 0o / 0b integers.
    if b[i] == b'0' {
        let radix = match b.get(i + 1) {
            Some(b'x' | b'X') => Some(16),
            Some(b'o' | b'O') => Some(8),
            Some(b'b' | b'B') => Some(2),
            _ => None,
        };
        if let Some(radix) = radix {
            i += 2;
            if b.get(i) == Some(&b'_') {
                i += 1; // Python allows one underscore after the prefix: 0x_1f.
            }
            let mut digits = String::new();
            let end = digit_part(b, i, radix, &mut digits)?;
            check_literal_end(b, end)?;
            let num = match i128::from_str_radix(&digits, radix) {
                Ok(v) => Num::Int(v),
                Err(_) => Num::Float(f64::INFINITY), // far beyond any finite comparison
            };
            return Ok((num, end));
        }
    }
    let mut int_part = String::new();
    let mut frac_part = String::new();
    let mut exp_part = String::new();
    let mut is_float = false;
    if b[i] != b'.' {
        i = digit_part(b, i, 10, &mut int_part)?;
    }
    if b.get(i) == Some(&b'.') {
        is_float = true;
        i += 1;
        if b.get(i).is_some_and(u8::is_ascii_digit) {
            i = digit_part(b, i, 10, &mut frac_part)?;
        } else if int_part.is_empty() {
            return Err(syntax(i, "digit expected after '.'"));
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        is_float = true;
        i += 1;
        if let Some(&s @ (b'+' | b'-')) = b.get(i) {
            exp_part.push(s as char);
            i += 1;
        }
        i = digit_part(b, i, 10, &mut exp_part)?;
    }
    check_literal_end(b, i)?;
    if is_float {
        let text = format!(
            "{}.{}e{}",
            if int_part.is_empty() { "0" } else { &int_part },
            if frac_part.is_empty() {
                "0"
            } else {
                &frac_part
            },
            if exp_part.is_empty() { "0" } else { &exp_part },
        );
        let x: f64 = text
            .parse()
            .map_err(|_| syntax(start, "malformed number"))?;
        return Ok((Num::Float(x), i));
    }
    if int_part.len() > 1 && int_part.starts_with('0') && int_part.bytes().any(|c| c != b'0') {
        return Err(syntax(
            start,
            "leading zeros in a decimal integer (Python 3 refuses them)",
        ));
    }
    let num = match int_part.parse::<i128>() {
        Ok(v) => Num::Int(v),
        // Beyond i128: the correctly rounded float of the exact integer.
        Err(_) => Num::Float(
            int_part
                .parse::<f64>()
                .map_err(|_| syntax(start, "malformed number"))?,
        ),
    };
    Ok((num, i))
}

fn check_literal_end(b: &[u8], i: usize) -> Result<(), ArithError> {
    match b.get(i) {
        Some(&c) if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' => {
            Err(syntax(i, "malformed number"))
        }
        _ => Ok(()),
    }
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    len: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<Tok> {
        self.toks.get(self.pos).map(|t| t.1)
    }

    fn offset(&self) -> usize {
        self.toks.get(self.pos).map_or(self.len, |t| t.0)
    }

    fn enter(&mut self) -> Result<(), ArithError> {
        self.depth += 1;
        if self.depth > MAX_RECURSION {
            return Err(ArithError::TooDeep);
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Num, ArithError> {
        let mut acc = self.term()?;
        while let Some(op @ (Tok::Plus | Tok::Minus)) = self.peek() {
            self.pos += 1;
            let rhs = self.term()?;
            acc = if op == Tok::Plus {
                add(acc, rhs)
            } else {
                sub(acc, rhs)
            };
        }
        Ok(acc)
    }

    fn term(&mut self) -> Result<Num, ArithError> {
        let mut acc = self.factor()?;
        while let Some(op @ (Tok::Star | Tok::Slash)) = self.peek() {
            self.pos += 1;
            let rhs = self.factor()?;
            acc = if op == Tok::Star {
                mul(acc, rhs)
            } else {
                div(acc, rhs)?
            };
        }
        Ok(acc)
    }

    fn factor(&mut self) -> Result<Num, ArithError> {
        // Unary signs bind looser than `**` (`-2**2` is -4); a chain of them is read in a loop.
        let mut negate = false;
        while let Some(op @ (Tok::Plus | Tok::Minus)) = self.peek() {
            negate ^= op == Tok::Minus;
            self.pos += 1;
        }
        let v = self.power()?;
        Ok(if negate { neg(v) } else { v })
    }

    fn power(&mut self) -> Result<Num, ArithError> {
        let base = self.atom()?;
        if self.peek() == Some(Tok::Pow) {
            self.pos += 1;
            self.enter()?;
            let exp = self.factor()?;
            self.depth -= 1;
            return pow(base, exp);
        }
        Ok(base)
    }

    fn atom(&mut self) -> Result<Num, ArithError> {
        match self.peek() {
            Some(Tok::Num(n)) => {
                self.pos += 1;
                Ok(n)
            }
            Some(Tok::LParen) => {
                self.enter()?;
                self.pos += 1;
                let v = self.expr()?;
                if self.peek() != Some(Tok::RParen) {
                    return Err(syntax(self.offset(), "')' expected"));
                }
                self.pos += 1;
                self.depth -= 1;
                Ok(v)
            }
            None => Err(syntax(self.offset(), "unexpected end of expression")),
            Some(_) => Err(syntax(self.offset(), "number or '(' expected")),
        }
    }
}

fn add(a: Num, b: Num) -> Num {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => x
            .checked_add(y)
            .map_or(Num::Float(x as f64 + y as f64), Num::Int),
        _ => Num::Float(a.to_f64() + b.to_f64()),
    }
}

fn sub(a: Num, b: Num) -> Num {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => x
            .checked_sub(y)
            .map_or(Num::Float(x as f64 - y as f64), Num::Int),
        _ => Num::Float(a.to_f64() - b.to_f64()),
    }
}

fn mul(a: Num, b: Num) -> Num {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => x
            .checked_mul(y)
            .map_or(Num::Float(x as f64 * y as f64), Num::Int),
        _ => Num::Float(a.to_f64() * b.to_f64()),
    }
}

fn neg(a: Num) -> Num {
    match a {
        Num::Int(x) => x.checked_neg().map_or(Num::Float(-(x as f64)), Num::Int),
        Num::Float(x) => Num::Float(-x),
    }
}

fn div(a: Num, b: Num) -> Result<Num, ArithError> {
    if b.is_zero() {
        return Err(ArithError::DivisionByZero);
    }
    Ok(match (a, b) {
        // Python's int / int is the correctly rounded quotient: exact when b divides a.
        (Num::Int(x), Num::Int(y)) => match (x.checked_rem(y), x.checked_div(y)) {
            (Some(0), Some(q)) => Num::Float(q as f64),
            _ => Num::Float(x as f64 / y as f64),
        },
        _ => Num::Float(a.to_f64() / b.to_f64()),
    })
}

fn pow(a: Num, b: Num) -> Result<Num, ArithError> {
    if let (Num::Int(x), Num::Int(y)) = (a, b) {
        if y >= 0 {
            let exact = match x {
                0 => Some(if y == 0 { 1 } else { 0 }),
                1 => Some(1),
                -1 => Some(if y % 2 == 0 { 1 } else { -1 }),
                _ => u32::try_from(y).ok().and_then(|e| x.checked_pow(e)),
            };
            if let Some(v) = exact {
                return Ok(Num::Int(v));
            }
            // An exact integer beyond i128: approximate it (a huge one fails anyway).
            let v = (x as f64).powf(y as f64);
            return if v.is_finite() {
                Ok(Num::Float(v))
            } else {
                Err(ArithError::NotFinite)
            };
        }
    }
    // Python's float ** float.
    let (x, y) = (a.to_f64(), b.to_f64());
    if x == 0.0 && y < 0.0 {
        return Err(ArithError::DivisionByZero);
    }
    if x.is_finite() && x < 0.0 && y.is_finite() && y.fract() != 0.0 {
        return Err(ArithError::Complex);
    }
    let v = x.powf(y);
    if x.is_finite() && y.is_finite() && !v.is_finite() {
        return Err(ArithError::NotFinite);
    }
    Ok(Num::Float(v))
}

/// Evaluates an arithmetic expression with Python's semantics (see the module docs); returns
/// `float(result)`.
pub fn eval_arith(expr: &str) -> Result<f64, ArithError> {
    let toks = tokenize(expr)?;
    let mut p = Parser {
        toks,
        pos: 0,
        len: expr.len(),
        depth: 0,
    };
    let v = p.expr()?;
    if p.pos != p.toks.len() {
        return Err(syntax(p.offset(), "unexpected token"));
    }
    let x = v.to_f64();
    if !x.is_finite() {
        return Err(ArithError::NotFinite);
    }
    Ok(x)
}

/// Python's `float(text)` for finite decimal numbers: surrounding whitespace, an optional sign,
/// digits with single `_` between them, an optional fraction and exponent. `inf`/`nan` (which can
/// never be within a tolerance) and anything else give `None`.
pub fn parse_python_float(text: &str) -> Option<f64> {
    let t = text.trim_matches(char::is_whitespace).as_bytes();
    let mut i = 0;
    let mut canon = String::new();
    if let Some(&s @ (b'+' | b'-')) = t.first() {
        canon.push(s as char);
        i = 1;
    }
    let mut int_part = String::new();
    let mut frac_part = String::new();
    if t.get(i).is_some_and(u8::is_ascii_digit) {
        i = digit_part(t, i, 10, &mut int_part).ok()?;
    }
    if t.get(i) == Some(&b'.') {
        i += 1;
        if t.get(i).is_some_and(u8::is_ascii_digit) {
            i = digit_part(t, i, 10, &mut frac_part).ok()?;
        }
    }
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    let mut exp_part = String::new();
    if matches!(t.get(i), Some(b'e' | b'E')) {
        i += 1;
        if let Some(&s @ (b'+' | b'-')) = t.get(i) {
            exp_part.push(s as char);
            i += 1;
        }
        i = digit_part(t, i, 10, &mut exp_part).ok()?;
    }
    if i != t.len() {
        return None;
    }
    canon.push_str(if int_part.is_empty() { "0" } else { &int_part });
    canon.push('.');
    canon.push_str(if frac_part.is_empty() {
        "0"
    } else {
        &frac_part
    });
    canon.push('e');
    canon.push_str(if exp_part.is_empty() { "0" } else { &exp_part });
    canon.parse::<f64>().ok().filter(|x| x.is_finite())
}

/// The RFT script's `check_equation`: the span contains `=`, the expression before the first `=`
/// evaluates (see [`eval_arith`]) to within 1e-3 (strictly) of the number between the first and
/// second `=` (Python's `float`; text after a second `=` is ignored).
pub fn check_equation(span: &str) -> bool {
    let mut parts = span.split('=');
    let lhs = parts.next().unwrap_or_default();
    let Some(rhs) = parts.next() else {
        return false;
    };
    match (eval_arith(lhs), parse_python_float(rhs)) {
        (Ok(l), Some(r)) => (l - r).abs() < 1e-3,
        _ => false,
    }
}
