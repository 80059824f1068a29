//! Exact sampling proportions (`1/256`, `0.25`, `3`) and how many records they mean.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// A non-negative rational proportion, kept exact so that `floor(n·r)` never suffers from
/// floating-point rounding (`0.1` is 1/10, not 0.1000000000000000055…).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ratio {
    num: u64,
    den: u64,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a
}

impl Ratio {
    /// The proportion 1 (all records).
    pub const ONE: Ratio = Ratio { num: 1, den: 1 };

    /// `num/den`, reduced. `den` must be positive.
    pub fn new(num: u64, den: u64) -> Result<Ratio> {
        if den == 0 {
            return Err(Error::InvalidRatio {
                text: format!("{num}/{den}"),
                reason: "denominator is zero".into(),
            });
        }
        let g = gcd(num, den).max(1);
        Ok(Ratio {
            num: num / g,
            den: den / g,
        })
    }

    /// Parses `a/b`, a decimal (`0.25`, `1e-2` is not accepted), or an integer (`1`, `3`).
    ///
    /// Decimals are converted exactly: `0.015625` is 1/64.
    pub fn parse(text: &str) -> Result<Ratio> {
        let bad = |reason: &str| Error::InvalidRatio {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let t = text.trim();
        if t.is_empty() {
            return Err(bad("empty"));
        }
        if let Some((a, b)) = t.split_once('/') {
            let num = parse_decimal(a.trim())
                .ok_or_else(|| bad("numerator is not a non-negative number"))?;
            let den = parse_decimal(b.trim())
                .ok_or_else(|| bad("denominator is not a non-negative number"))?;
            if den.num == 0 {
                return Err(bad("denominator is zero"));
            }
            // (a/b) / (c/d) = (a·d) / (b·c)
            let n = (num.num as u128) * (den.den as u128);
            let d = (num.den as u128) * (den.num as u128);
            return Ratio::from_u128(n, d).ok_or_else(|| bad("too large"));
        }
        parse_decimal(t).ok_or_else(|| bad("expected a/b, a decimal such as 0.25, or an integer"))
    }

    fn from_u128(n: u128, d: u128) -> Option<Ratio> {
        let mut a = n;
        let mut b = d;
        while b != 0 {
            let t = a % b;
            a = b;
            b = t;
        }
        let g = a.max(1);
        let (n, d) = (n / g, d / g);
        Some(Ratio {
            num: u64::try_from(n).ok()?,
            den: u64::try_from(d).ok()?,
        })
    }

    /// Converts a finite, non-negative `f64` through its shortest decimal representation
    /// (so `0.25` becomes 1/4 and `0.1` becomes 1/10).
    pub fn from_f64(value: f64) -> Result<Ratio> {
        if !value.is_finite() || value < 0.0 {
            return Err(Error::InvalidRatio {
                text: value.to_string(),
                reason: "must be finite and ≥ 0".into(),
            });
        }
        let text = format!("{value}");
        Ratio::parse(&text)
    }

    /// The numerator (reduced).
    pub fn numer(self) -> u64 {
        self.num
    }

    /// The denominator (reduced).
    pub fn denom(self) -> u64 {
        self.den
    }

    /// Approximate value.
    pub fn as_f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }

    /// Is this exactly zero?
    pub fn is_zero(self) -> bool {
        self.num == 0
    }

    /// How many of `n` records this proportion selects: `floor(n·r)`, but at least 1 when
    /// `r > 0` and `n > 0` (so 1/256 of a 1,011-record source is 3, and of a 100-record source is 1).
    pub fn count_of(self, n: usize) -> usize {
        if self.num == 0 || n == 0 {
            return 0;
        }
        let c = (n as u128) * (self.num as u128) / (self.den as u128);
        usize::try_from(c).unwrap_or(usize::MAX).max(1)
    }

    /// `self · other`, exact.
    pub fn checked_mul(self, other: Ratio) -> Result<Ratio> {
        let n = (self.num as u128) * (other.num as u128);
        let d = (self.den as u128) * (other.den as u128);
        Ratio::from_u128(n, d).ok_or_else(|| Error::InvalidRatio {
            text: format!("{self}·{other}"),
            reason: "too large".into(),
        })
    }

    /// `self · other`, exact; the same as [`Ratio::checked_mul`] (kept because other crates call it).
    #[allow(clippy::should_implement_trait)]
    pub fn mul(self, other: Ratio) -> Result<Ratio> {
        self.checked_mul(other)
    }

    /// `1/self`; an error for zero.
    pub fn recip(self) -> Result<Ratio> {
        Ratio::new(self.den, self.num)
    }
}

/// Parses a plain decimal `123`, `0.25`, `.5` exactly.
fn parse_decimal(t: &str) -> Option<Ratio> {
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let (int, frac) = match t.split_once('.') {
        Some((i, f)) => (i, f),
        None => (t, ""),
    };
    if frac.contains('.') || (int.is_empty() && frac.is_empty()) || frac.len() > 18 {
        return None;
    }
    let digits = format!("{int}{frac}");
    let num: u128 = digits.parse().ok()?;
    let den: u128 = 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?;
    Ratio::from_u128(num, den)
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.den == 1 {
            write!(f, "{}", self.num)
        } else {
            write!(f, "{}/{}", self.num, self.den)
        }
    }
}

impl FromStr for Ratio {
    type Err = Error;
    fn from_str(s: &str) -> Result<Ratio> {
        Ratio::parse(s)
    }
}

impl Serialize for Ratio {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Ratio, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Float(f64),
            Text(String),
        }
        let parsed = match Raw::deserialize(d)? {
            Raw::Int(i) => Ratio::new(i, 1),
            Raw::Float(f) => Ratio::from_f64(f),
            Raw::Text(t) => Ratio::parse(&t),
        };
        parsed.map_err(serde::de::Error::custom)
    }
}

/// How much of a source to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Take {
    /// A proportion of the available records: `floor(n·r)` (at least 1 when r > 0).
    /// Above 1 it upsamples: whole repeats plus a seeded remainder.
    Ratio(Ratio),
    /// An exact number of records; above the available count it upsamples like a ratio.
    Count(u64),
}

impl Take {
    /// All records once.
    pub const ALL: Take = Take::Ratio(Ratio::ONE);

    /// The number of records selected from `available`.
    pub fn count_of(self, available: usize) -> usize {
        match self {
            Take::Ratio(r) => r.count_of(available),
            Take::Count(c) => {
                if available == 0 {
                    0
                } else {
                    usize::try_from(c).unwrap_or(usize::MAX)
                }
            }
        }
    }
}

impl fmt::Display for Take {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Take::Ratio(r) => write!(f, "ratio {r}"),
            Take::Count(c) => write!(f, "count {c}"),
        }
    }
}
