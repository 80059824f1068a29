//! Input formats (what the fields mean) and containers (how records are stored), and their detection.

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{io_err, Error, Result};

/// What the fields of a record mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum SourceFormat {
    /// GSM8K: `{"question", "answer"}` → user question, assistant answer (kept verbatim,
    /// calculator annotations and the final `#### N` included).
    Gsm8k,
    /// GSM8K-RFT (gsm8k-ScRel): `{"query", "response"}` → user, assistant.
    Rft,
    /// Alpaca and Code Alpaca: `{"instruction", "input", "output"}`. The user turn is the
    /// instruction, then a blank line and the input when the input is not empty
    /// (`""`, and `noinput` spelled any way such as `<noinput>` or `< noinput >`, count as empty).
    Alpaca,
    /// ShareGPT / Vicuna: `{"id", "conversations": [{"from", "value"}]}` with human/gpt/system.
    ShareGpt,
    /// This crate's chat format: `{"id", "source", "messages": [{"role", "content"}], "tags", "metadata"}`.
    Chat,
}

impl SourceFormat {
    /// All formats, in detection order.
    pub const ALL: [SourceFormat; 5] = [
        SourceFormat::Chat,
        SourceFormat::ShareGpt,
        SourceFormat::Alpaca,
        SourceFormat::Gsm8k,
        SourceFormat::Rft,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceFormat::Gsm8k => "gsm8k",
            SourceFormat::Rft => "rft",
            SourceFormat::Alpaca => "alpaca",
            SourceFormat::ShareGpt => "sharegpt",
            SourceFormat::Chat => "chat",
        }
    }

    /// The format whose required fields are all among `keys` (checked in [`SourceFormat::ALL`] order).
    pub fn from_keys<'a>(keys: impl IntoIterator<Item = &'a str> + Clone) -> Option<SourceFormat> {
        let has = |k: &str| keys.clone().into_iter().any(|x| x == k);
        if has("messages") {
            Some(SourceFormat::Chat)
        } else if has("conversations") {
            Some(SourceFormat::ShareGpt)
        } else if has("instruction") && has("output") {
            Some(SourceFormat::Alpaca)
        } else if has("question") && has("answer") {
            Some(SourceFormat::Gsm8k)
        } else if has("query") && has("response") {
            Some(SourceFormat::Rft)
        } else {
            None
        }
    }
}

impl fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SourceFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "gsm8k" => Ok(SourceFormat::Gsm8k),
            "rft" | "gsm8k_rft" => Ok(SourceFormat::Rft),
            "alpaca" | "code_alpaca" | "codealpaca" => Ok(SourceFormat::Alpaca),
            "sharegpt" | "share_gpt" | "vicuna" => Ok(SourceFormat::ShareGpt),
            "chat" => Ok(SourceFormat::Chat),
            other => Err(format!(
                "unknown format {other:?} (expected gsm8k, rft, alpaca, sharegpt or chat)"
            )),
        }
    }
}

/// How records are stored in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum Container {
    /// One JSON object per line, read as a stream.
    Jsonl,
    /// One JSON array of objects (read whole).
    JsonArray,
    /// An Apache Parquet file.
    Parquet,
}

impl Container {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Container::Jsonl => "jsonl",
            Container::JsonArray => "json",
            Container::Parquet => "parquet",
        }
    }

    /// Detects the container from the extension, looking at the first bytes when the extension
    /// does not decide (`.json` files that start with `{` are JSONL).
    pub fn detect(path: &Path) -> Result<Container> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase());
        match ext.as_deref() {
            Some("jsonl") | Some("ndjson") => return Ok(Container::Jsonl),
            Some("parquet") | Some("pq") => return Ok(Container::Parquet),
            _ => {}
        }
        let mut head = [0u8; 4096];
        let mut file = std::fs::File::open(path).map_err(io_err(path))?;
        let mut filled = 0;
        while filled < head.len() {
            let n = file.read(&mut head[filled..]).map_err(io_err(path))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        let head = &head[..filled];
        if head.starts_with(b"PAR1") {
            return Ok(Container::Parquet);
        }
        let first = head
            .iter()
            .copied()
            .find(|b| !(b.is_ascii_whitespace() || *b == 0xEF || *b == 0xBB || *b == 0xBF));
        match first {
            Some(b'[') => Ok(Container::JsonArray),
            Some(b'{') => Ok(Container::Jsonl),
            None => Err(Error::EmptySource { path: path.to_path_buf(), detail: "the file is empty or blank".into() }),
            Some(other) => Err(Error::Format {
                path: path.to_path_buf(),
                detail: format!(
                    "cannot tell the container: first byte {:?} is neither '[' (JSON array) nor '{{' (JSONL), and the extension is not .jsonl/.json/.parquet",
                    other as char
                ),
            }),
        }
    }
}

impl fmt::Display for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Container {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "jsonl" | "ndjson" => Ok(Container::Jsonl),
            "json" | "json_array" | "array" => Ok(Container::JsonArray),
            "parquet" => Ok(Container::Parquet),
            other => Err(format!(
                "unknown container {other:?} (expected jsonl, json or parquet)"
            )),
        }
    }
}

impl TryFrom<String> for SourceFormat {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<SourceFormat> for &'static str {
    fn from(f: SourceFormat) -> &'static str {
        f.as_str()
    }
}

impl TryFrom<String> for Container {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<Container> for &'static str {
    fn from(c: Container) -> &'static str {
        c.as_str()
    }
}
