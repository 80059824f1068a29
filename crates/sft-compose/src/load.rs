//! Loaders: every supported format and container into [`Record`]s, with validation.
//!
//! JSONL is streamed line by line (with a maximum line length checked before parsing);
//! JSON arrays are read whole; Parquet is read batch by batch. Each record is deserialized into
//! a typed row for its format, so a missing field or a wrong type is reported precisely.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{io_err, Error, IssueKind, Location, Result};
use crate::format::{Container, SourceFormat};
use sft_record::{Message, Record, Role};

/// How to load a source.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LoadOptions {
    /// The format; `None` detects it from the first record's fields.
    pub format: Option<SourceFormat>,
    /// The container; `None` detects it from the extension or the first bytes.
    pub container: Option<Container>,
    /// Skip bad records and count them per kind instead of failing on the first one.
    pub lenient: bool,
    /// Drop exact duplicates (same messages) after the first copy. They are counted either way.
    pub dedup: bool,
    /// Lines longer than this are refused before parsing (default 64 MiB).
    pub max_line_bytes: usize,
    /// Show an indicatif progress bar (on stderr, hidden when it is not a terminal).
    pub progress: bool,
}

impl LoadOptions {
    /// Strict loading with detection of format and container, no dedup, no progress bar.
    pub fn strict() -> Self {
        LoadOptions {
            format: None,
            container: None,
            lenient: false,
            dedup: false,
            max_line_bytes: 64 << 20,
            progress: false,
        }
    }

    /// Like [`LoadOptions::strict`] but lenient.
    pub fn lenient() -> Self {
        LoadOptions {
            lenient: true,
            ..LoadOptions::strict()
        }
    }
}

/// What happened while loading one source.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LoadReport {
    /// Records found in the file, good or bad.
    pub records_seen: usize,
    /// Records kept.
    pub loaded: usize,
    /// Records skipped, per kind: any kind in lenient mode; `empty_conversation` always.
    pub skipped: BTreeMap<IssueKind, usize>,
    /// Exact duplicates found (same messages as an earlier record).
    pub duplicates: usize,
    /// Duplicates dropped (only with `dedup`).
    pub duplicates_dropped: usize,
    /// ShareGPT conversations whose leading assistant turn(s) were dropped.
    pub leading_assistant_dropped: usize,
    /// Consecutive same-role turns merged into the previous one.
    pub merged_turns: usize,
    /// Messages with empty (or whitespace-only) content, kept as they are.
    pub empty_messages: usize,
    /// The first few problems, as `path:line: kind: detail` lines.
    pub first_issues: Vec<String>,
    /// Set when a JSON array file was cut off before its closing `]` and loaded leniently
    /// (strict mode refuses such a file with [`Error::TruncatedArray`]). Absent otherwise, so
    /// manifests of complete files are unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<Truncation>,
}

/// Where a JSON array file was cut off, and what was lost (see [`LoadReport::truncated`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truncation {
    /// The byte offset where the file ends (its size in bytes).
    pub cut_at_byte: u64,
    /// The byte offset where the lost partial record starts; `None` when the file ends between
    /// records.
    pub partial_record_start_byte: Option<u64>,
    /// Partial records lost: 1 when the cut is inside a record, else 0. The lost record is also
    /// counted in [`LoadReport::skipped`] as `truncated_line`.
    pub partial_records_lost: usize,
    /// Complete records before the cut (all of them are read; bad ones are counted as usual).
    pub complete_records: usize,
}

impl LoadReport {
    /// Total records skipped.
    pub fn skipped_total(&self) -> usize {
        self.skipped.values().sum()
    }
}

/// One loaded source.
#[derive(Debug, Clone)]
pub struct LoadedSource {
    /// The source name (the prefix of every record id).
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// The format used.
    pub format: SourceFormat,
    /// The container used.
    pub container: Container,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
    /// File size in bytes.
    pub bytes: u64,
    /// The records, in file order.
    pub records: Vec<Record>,
    /// Validation counts.
    pub report: LoadReport,
}

/// Loads `path` as source `name`.
pub fn load_source(name: &str, path: &Path, options: &LoadOptions) -> Result<LoadedSource> {
    let container = match options.container {
        Some(c) => c,
        None => Container::detect(path)?,
    };
    let span = tracing::info_span!("load", source = name, path = %path.display());
    let _guard = span.enter();
    let mut sink = Sink::new(name, path, options);
    let (sha256, bytes) = match container {
        Container::Jsonl => read_jsonl(path, options, &mut sink)?,
        Container::JsonArray => read_json_array(path, options, &mut sink)?,
        Container::Parquet => crate::parquet_io::read_parquet(path, &mut sink)?,
    };
    let format = match sink.format {
        Some(f) => f,
        None => {
            return Err(Error::EmptySource {
                path: path.to_path_buf(),
                detail: if sink.report.records_seen == 0 {
                    "no records".into()
                } else {
                    format!("none of the {} records is valid", sink.report.records_seen)
                },
            })
        }
    };
    if sink.records.is_empty() {
        return Err(Error::EmptySource {
            path: path.to_path_buf(),
            detail: format!("none of the {} records is valid", sink.report.records_seen),
        });
    }
    let mut report = sink.report;
    report.loaded = sink.records.len();
    tracing::info!(
        records = report.loaded,
        skipped = report.skipped_total(),
        duplicates = report.duplicates,
        %format,
        %container,
        "loaded"
    );
    Ok(LoadedSource {
        name: name.to_string(),
        path: path.to_path_buf(),
        format,
        container,
        sha256,
        bytes,
        records: sink.records,
        report,
    })
}

/// A `Read` that hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

pub(crate) fn progress_bar(len: u64, enabled: bool, what: &str) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

/// Reads one line into `buf` (without the newline). Returns (bytes consumed, too long, ended with newline).
fn read_line_limited<R: BufRead>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<(usize, bool, bool)> {
    buf.clear();
    let mut consumed = 0;
    let mut too_long = false;
    loop {
        let available = r.fill_buf()?;
        if available.is_empty() {
            return Ok((consumed, too_long, false));
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if !too_long {
            if buf.len() + chunk.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        let used = done.unwrap_or(available.len());
        r.consume(used);
        consumed += used;
        if done.is_some() {
            return Ok((consumed, too_long, true));
        }
    }
}

fn read_jsonl(path: &Path, options: &LoadOptions, sink: &mut Sink) -> Result<(String, u64)> {
    let file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = progress_bar(len, options.progress, sink.name);
    let mut reader = BufReader::with_capacity(
        1 << 20,
        HashingReader {
            inner: file,
            hasher: Sha256::new(),
            bytes: 0,
        },
    );
    let mut line = Vec::with_capacity(1 << 16);
    let mut line_no: u64 = 0;
    let mut index = 0usize;
    let mut since_tick = 0usize;
    loop {
        let (consumed, too_long, newline) =
            read_line_limited(&mut reader, &mut line, options.max_line_bytes)
                .map_err(io_err(path))?;
        if consumed == 0 {
            break;
        }
        line_no += 1;
        since_tick += consumed;
        if since_tick >= 1 << 20 {
            bar.inc(since_tick as u64);
            since_tick = 0;
        }
        let loc = Location::Line(line_no);
        if too_long {
            sink.issue(
                loc,
                index,
                IssueKind::LineTooLong,
                format!("line longer than {} bytes", options.max_line_bytes),
            )?;
            index += 1;
            continue;
        }
        let mut bytes = &line[..];
        if line_no == 1 && bytes.starts_with(b"\xEF\xBB\xBF") {
            bytes = &bytes[3..];
        }
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                sink.issue(
                    loc,
                    index,
                    IssueKind::BadUtf8,
                    format!("invalid UTF-8 at column {}", e.valid_up_to() + 1),
                )?;
                index += 1;
                continue;
            }
        };
        sink.push_text(text, loc, index, !newline)?;
        index += 1;
    }
    bar.inc(since_tick as u64);
    bar.finish_and_clear();
    let inner = reader.into_inner();
    Ok((hex::encode(inner.hasher.finalize()), inner.bytes))
}

fn line_of(text: &str, offset: usize, from: usize, from_line: u64) -> u64 {
    from_line
        + text.as_bytes()[from..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64
}

fn read_json_array(path: &Path, options: &LoadOptions, sink: &mut Sink) -> Result<(String, u64)> {
    let data = std::fs::read(path).map_err(io_err(path))?;
    let sha = hex::encode(Sha256::digest(&data));
    let bytes = data.len() as u64;
    let bar = progress_bar(bytes, options.progress, sink.name);
    let mut cut_char = false;
    let text = match std::str::from_utf8(&data) {
        Ok(t) => t,
        // The file ends inside a multi-byte character: a cut-off file. Parse the valid prefix, so
        // that the truncation is reported below like any other.
        Err(e) if e.error_len().is_none() => {
            cut_char = true;
            std::str::from_utf8(&data[..e.valid_up_to()])
                .expect("the prefix up to valid_up_to is valid UTF-8")
        }
        Err(e) => {
            let line = 1 + data[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count() as u64;
            return Err(Error::Record {
                path: path.to_path_buf(),
                location: Location::Line(line),
                kind: IssueKind::BadUtf8,
                detail: "invalid UTF-8 (a JSON array cannot be read leniently past it)".into(),
            });
        }
    };
    let bom = if text.starts_with('\u{FEFF}') { 3 } else { 0 };
    let text = &text[bom..];
    if text.trim().is_empty() {
        return Err(Error::EmptySource {
            path: path.to_path_buf(),
            detail: "the file is empty or blank".into(),
        });
    }
    let elements: Vec<&serde_json::value::RawValue> = match serde_json::from_str(text) {
        Ok(_) if cut_char => {
            return Err(Error::Record {
                path: path.to_path_buf(),
                location: Location::Line(line_of(text, text.len(), 0, 1)),
                kind: IssueKind::BadUtf8,
                detail: format!(
                    "the file ends with an incomplete UTF-8 character at byte {}",
                    text.len() + bom
                ),
            })
        }
        Ok(elements) => elements,
        Err(e)
            if e.classify() == serde_json::error::Category::Eof
                && text.trim_start().starts_with('[') =>
        {
            let cut = truncated_array(text).map_err(|e| Error::Record {
                path: path.to_path_buf(),
                location: Location::Line(e.line() as u64),
                kind: classify(&e).0,
                detail: classify(&e).1,
            })?;
            let complete = cut.elements.len();
            let partial_start = cut.partial_start.map(|o| (o + bom) as u64);
            if !options.lenient {
                return Err(Error::TruncatedArray {
                    path: path.to_path_buf(),
                    cut_at: bytes,
                    partial_record_start: partial_start,
                    complete_records: complete,
                });
            }
            tracing::warn!(
                path = %path.display(),
                cut_at_byte = bytes,
                partial_record_start_byte = ?partial_start,
                complete_records = complete,
                "JSON array truncated: keeping the complete records, {} partial record lost",
                usize::from(partial_start.is_some())
            );
            sink.report.truncated = Some(Truncation {
                cut_at_byte: bytes,
                partial_record_start_byte: partial_start,
                partial_records_lost: usize::from(partial_start.is_some()),
                complete_records: complete,
            });
            let (elements, partial) = (cut.elements, cut.partial_start);
            push_array_elements(text, &elements, sink, &bar)?;
            if let Some(start) = partial {
                let line = line_of(text, start, 0, 1);
                sink.issue(
                    Location::Line(line),
                    complete,
                    IssueKind::TruncatedLine,
                    format!(
                        "JSON array truncated at byte {bytes}: the file ends inside this record \
                         (it starts at byte {}); the {complete} complete records before it are kept",
                        start + bom
                    ),
                )?;
            }
            bar.finish_and_clear();
            return Ok((sha, bytes));
        }
        Err(e) => {
            let (kind, detail) = classify(&e);
            return Err(Error::Record {
                path: path.to_path_buf(),
                location: Location::Line(e.line() as u64),
                kind,
                detail,
            });
        }
    };
    push_array_elements(text, &elements, sink, &bar)?;
    bar.finish_and_clear();
    Ok((sha, bytes))
}

/// The complete elements of a JSON array that ends early, and where the partial one starts.
struct CutArray<'a> {
    elements: Vec<&'a serde_json::value::RawValue>,
    /// Byte offset (in `text`) of the element the text ends inside, if any.
    partial_start: Option<usize>,
}

/// Reads `text` (a JSON array without its end) element by element. A syntax error before the
/// end is returned as such; reaching the end of the text is the expected outcome.
fn truncated_array(text: &str) -> std::result::Result<CutArray<'_>, serde_json::Error> {
    use serde::Deserialize as _;
    let skip_ws = |mut i: usize| {
        while i < text.len() && text.as_bytes()[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    // The caller checked that the first non-blank character is `[`.
    let mut pos = skip_ws(0) + 1;
    let mut elements = Vec::new();
    loop {
        pos = skip_ws(pos);
        if pos >= text.len() {
            return Ok(CutArray {
                elements,
                partial_start: None,
            });
        }
        let mut stream = serde_json::Deserializer::from_str(&text[pos..])
            .into_iter::<&serde_json::value::RawValue>();
        match stream.next() {
            Some(Ok(raw)) => {
                elements.push(raw);
                pos += stream.byte_offset();
            }
            Some(Err(e)) if e.classify() == serde_json::error::Category::Eof => {
                return Ok(CutArray {
                    elements,
                    partial_start: Some(pos),
                });
            }
            Some(Err(e)) => {
                // Re-run on the whole text so that the error carries the absolute line.
                let mut de = serde_json::Deserializer::from_str(text);
                return Err(Vec::<&serde_json::value::RawValue>::deserialize(&mut de)
                    .err()
                    .unwrap_or(e));
            }
            None => {
                return Ok(CutArray {
                    elements,
                    partial_start: None,
                })
            }
        }
        pos = skip_ws(pos);
        match text.as_bytes().get(pos) {
            Some(b',') => pos += 1,
            None => {
                return Ok(CutArray {
                    elements,
                    partial_start: None,
                })
            }
            // `]` cannot come here: the whole text would have parsed. Anything else is a syntax
            // error that the whole-text parse reports with its line.
            Some(_) => {
                let mut de = serde_json::Deserializer::from_str(text);
                return Err(Vec::<&serde_json::value::RawValue>::deserialize(&mut de)
                    .err()
                    .unwrap_or_else(|| {
                        <serde_json::Error as serde::de::Error>::custom(format!(
                            "expected `,` or `]` after an array element at byte {pos}"
                        ))
                    }));
            }
        }
    }
}

fn push_array_elements(
    text: &str,
    elements: &[&serde_json::value::RawValue],
    sink: &mut Sink,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let base = text.as_ptr() as usize;
    let mut last_offset = 0usize;
    let mut last_line = 1u64;
    for (index, raw) in elements.iter().enumerate() {
        let s = raw.get();
        let offset = s.as_ptr() as usize - base;
        last_line = line_of(text, offset, last_offset, last_line);
        last_offset = offset;
        sink.push_text(s, Location::Line(last_line), index, false)?;
        if index % 4096 == 0 {
            bar.set_position(offset as u64);
        }
    }
    Ok(())
}

/// Maps a serde_json error to an issue kind and a message without serde's own "at line … column …".
pub(crate) fn classify(e: &serde_json::Error) -> (IssueKind, String) {
    use serde_json::error::Category;
    let full = e.to_string();
    let msg = match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full.clone(),
    };
    let msg = if e.line() > 0 {
        format!("{msg} (column {})", e.column())
    } else {
        msg
    };
    let kind = match e.classify() {
        Category::Eof => IssueKind::TruncatedLine,
        Category::Syntax | Category::Io => IssueKind::InvalidJson,
        Category::Data => {
            if msg.starts_with("missing field") {
                IssueKind::MissingField
            } else if msg.starts_with("unknown role") {
                IssueKind::UnknownRole
            } else {
                IssueKind::WrongType
            }
        }
    };
    (kind, msg)
}

/// Receives raw records from a container reader and turns them into [`Record`]s.
pub(crate) struct Sink<'a> {
    name: &'a str,
    path: &'a Path,
    lenient: bool,
    dedup: bool,
    pub(crate) format: Option<SourceFormat>,
    pub(crate) records: Vec<Record>,
    pub(crate) report: LoadReport,
    seen: HashMap<u64, Vec<usize>>,
}

impl<'a> Sink<'a> {
    fn new(name: &'a str, path: &'a Path, options: &LoadOptions) -> Self {
        Sink {
            name,
            path,
            lenient: options.lenient,
            dedup: options.dedup,
            format: options.format,
            records: Vec::new(),
            report: LoadReport::default(),
            seen: HashMap::new(),
        }
    }

    /// Records a bad record: an error in strict mode, a count in lenient mode.
    pub(crate) fn issue(
        &mut self,
        location: Location,
        _index: usize,
        kind: IssueKind,
        detail: String,
    ) -> Result<()> {
        self.report.records_seen += 1;
        let err = Error::Record {
            path: self.path.to_path_buf(),
            location,
            kind,
            detail,
        };
        // Empty conversations are dropped and counted even in strict mode: the ShareGPT V3 split
        // has assistant-only segments (9 of the 1,011 sample) that the clean-up policy empties.
        if !self.lenient && kind != IssueKind::EmptyConversation {
            return Err(err);
        }
        *self.report.skipped.entry(kind).or_insert(0) += 1;
        if self.report.first_issues.len() < 10 {
            tracing::warn!("skipped: {err}");
            self.report.first_issues.push(err.to_string());
        }
        Ok(())
    }

    fn detect(&mut self, text: &str) -> Option<SourceFormat> {
        if self.format.is_none() {
            if let Ok(map) =
                serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
            {
                self.format = SourceFormat::from_keys(map.keys().map(String::as_str));
            }
        }
        self.format
    }

    /// One record given as JSON text. `unterminated` is true for a last line without a newline.
    pub(crate) fn push_text(
        &mut self,
        text: &str,
        location: Location,
        index: usize,
        unterminated: bool,
    ) -> Result<()> {
        let Some(format) = self.detect(text) else {
            let detail = match serde_json::from_str::<serde_json::Value>(text) {
                Err(e) => {
                    let (kind, mut detail) = classify(&e);
                    if unterminated && kind == IssueKind::TruncatedLine {
                        detail.push_str(
                            "; the file does not end with a newline: truncated last line?",
                        );
                    }
                    return self.issue(location, index, kind, detail);
                }
                Ok(v) if !v.is_object() => {
                    return self.issue(
                        location,
                        index,
                        IssueKind::WrongType,
                        "a record must be a JSON object".into(),
                    )
                }
                Ok(v) => format!(
                    "cannot detect the format from the fields {:?}; pass the format explicitly",
                    v.as_object()
                        .map(|m| m.keys().cloned().collect::<Vec<_>>())
                        .unwrap_or_default()
                ),
            };
            return Err(Error::Format {
                path: self.path.to_path_buf(),
                detail: format!("{location}: {detail}"),
            });
        };
        let parsed = match format {
            SourceFormat::Gsm8k => parse_text::<QaRow>(text),
            SourceFormat::Rft => parse_text::<RftRow>(text),
            SourceFormat::Alpaca => parse_text::<AlpacaRow>(text),
            SourceFormat::ShareGpt => parse_text::<ShareGptRow>(text),
            SourceFormat::Chat => parse_text::<ChatRow>(text),
        };
        match parsed {
            Ok(conv) => self.accept(conv, index),
            Err((kind, mut detail)) => {
                if unterminated && kind == IssueKind::TruncatedLine {
                    detail.push_str("; the file does not end with a newline: truncated last line?");
                }
                self.issue(location, index, kind, detail)
            }
        }
    }

    /// One record given as a JSON value (Parquet rows).
    pub(crate) fn push_value(
        &mut self,
        value: serde_json::Value,
        location: Location,
        index: usize,
    ) -> Result<()> {
        if self.format.is_none() {
            if let Some(map) = value.as_object() {
                self.format = SourceFormat::from_keys(map.keys().map(String::as_str));
            }
        }
        let Some(format) = self.format else {
            return Err(Error::Format {
                path: self.path.to_path_buf(),
                detail: format!("{location}: cannot detect the format from the columns; pass the format explicitly"),
            });
        };
        let parsed = match format {
            SourceFormat::Gsm8k => parse_value::<QaRow>(value),
            SourceFormat::Rft => parse_value::<RftRow>(value),
            SourceFormat::Alpaca => parse_value::<AlpacaRow>(value),
            SourceFormat::ShareGpt => parse_value::<ShareGptRow>(value),
            SourceFormat::Chat => parse_value::<ChatRow>(value),
        };
        match parsed {
            Ok(conv) => self.accept(conv, index),
            Err((kind, detail)) => self.issue(location, index, kind, detail),
        }
    }

    fn accept(&mut self, conv: Conversion, index: usize) -> Result<()> {
        self.report.records_seen += 1;
        self.report.leading_assistant_dropped += usize::from(conv.leading_dropped);
        self.report.merged_turns += conv.merged;
        self.report.empty_messages += conv
            .messages
            .iter()
            .filter(|m| m.content.trim().is_empty())
            .count();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        conv.messages.hash(&mut hasher);
        let key = hasher.finish();
        let bucket = self.seen.entry(key).or_default();
        let duplicate = bucket
            .iter()
            .any(|&i| self.records[i].messages == conv.messages);
        if duplicate {
            self.report.duplicates += 1;
            if self.dedup {
                self.report.duplicates_dropped += 1;
                return Ok(());
            }
        }
        bucket.push(self.records.len());
        let mut record = Record {
            id: Record::make_id(self.name, index),
            source: self.name.to_string(),
            messages: conv.messages,
            tags: Vec::new(),
            metadata: conv.metadata,
        };
        if !conv.tags.is_empty() {
            record.add_tags(conv.tags);
        }
        self.records.push(record);
        Ok(())
    }
}

/// A record converted from its format, before it gets an id.
struct Conversion {
    messages: Vec<Message>,
    tags: Vec<String>,
    metadata: BTreeMap<String, serde_json::Value>,
    leading_dropped: bool,
    merged: usize,
}

impl Conversion {
    fn pair(user: String, assistant: String, tags: Option<TagList>) -> Self {
        Conversion {
            messages: vec![
                Message::new(Role::User, user),
                Message::new(Role::Assistant, assistant),
            ],
            tags: tags.map(TagList::into_tags).unwrap_or_default(),
            metadata: BTreeMap::new(),
            leading_dropped: false,
            merged: 0,
        }
    }
}

type Issue = (IssueKind, String);

trait Row: DeserializeOwned {
    fn convert(self) -> Result<Conversion, Issue>;
}

fn parse_text<T: Row>(text: &str) -> Result<Conversion, Issue> {
    let row: T = serde_json::from_str(text).map_err(|e| classify(&e))?;
    row.convert()
}

fn parse_value<T: Row>(value: serde_json::Value) -> Result<Conversion, Issue> {
    let row: T = serde_json::from_value(value).map_err(|e| classify(&e))?;
    row.convert()
}

/// Tags given in a record field: strings or InsTag-style `{"tag", "explanation"}` objects.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum TagEntry {
    /// A plain tag.
    Plain(String),
    /// An InsTag entry.
    InsTag {
        /// The tag.
        tag: String,
    },
}

#[derive(Deserialize)]
#[serde(transparent)]
pub(crate) struct TagList(pub(crate) Vec<TagEntry>);

impl TagList {
    pub(crate) fn into_tags(self) -> Vec<String> {
        self.0
            .into_iter()
            .map(|t| match t {
                TagEntry::Plain(s) => s,
                TagEntry::InsTag { tag } => tag,
            })
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

#[derive(Deserialize)]
struct QaRow {
    question: String,
    answer: String,
    #[serde(default)]
    tags: Option<TagList>,
}

impl Row for QaRow {
    fn convert(self) -> Result<Conversion, Issue> {
        Ok(Conversion::pair(self.question, self.answer, self.tags))
    }
}

#[derive(Deserialize)]
struct RftRow {
    query: String,
    response: String,
    #[serde(default)]
    tags: Option<TagList>,
}

impl Row for RftRow {
    fn convert(self) -> Result<Conversion, Issue> {
        Ok(Conversion::pair(self.query, self.response, self.tags))
    }
}

#[derive(Deserialize)]
struct AlpacaRow {
    instruction: String,
    #[serde(default)]
    input: Option<String>,
    output: String,
    #[serde(default)]
    tags: Option<TagList>,
}

/// Is an Alpaca `input` effectively empty (`""`, `<noinput>`, `< noinput >`, `Noinput`, …)?
pub fn alpaca_input_is_empty(input: &str) -> bool {
    let letters: String = input
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect();
    letters.is_empty() || letters == "noinput"
}

/// The user turn for an Alpaca record: the instruction, then a blank line and the input
/// when the input is not empty (see [`alpaca_input_is_empty`]).
pub fn alpaca_user_turn(instruction: &str, input: &str) -> String {
    if alpaca_input_is_empty(input) {
        instruction.to_string()
    } else {
        format!("{instruction}\n\n{input}")
    }
}

impl Row for AlpacaRow {
    fn convert(self) -> Result<Conversion, Issue> {
        let user = alpaca_user_turn(&self.instruction, self.input.as_deref().unwrap_or(""));
        Ok(Conversion::pair(user, self.output, self.tags))
    }
}

#[derive(Deserialize)]
struct ShareGptTurn {
    from: String,
    value: String,
}

#[derive(Deserialize)]
struct ShareGptRow {
    #[serde(default)]
    id: Option<serde_json::Value>,
    conversations: Vec<ShareGptTurn>,
    #[serde(default)]
    tags: Option<TagList>,
}

impl Row for ShareGptRow {
    fn convert(self) -> Result<Conversion, Issue> {
        let turns = self.conversations.into_iter().map(|t| (t.from, t.value));
        let mut conv = normalize_turns(turns, true)?;
        if let Some(id) = self.id {
            conv.metadata.insert("orig_id".into(), id);
        }
        conv.tags = self.tags.map(TagList::into_tags).unwrap_or_default();
        Ok(conv)
    }
}

/// A chat-format input turn as written, before its role is checked: the role goes through
/// [`normalize_turns`] (aliases, issue kinds), so it stays a string here.
#[derive(Deserialize)]
struct RawChatTurn {
    role: String,
    content: String,
}

#[derive(Deserialize)]
struct ChatRow {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    source: Option<String>,
    messages: Vec<RawChatTurn>,
    #[serde(default)]
    tags: Option<TagList>,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

impl Row for ChatRow {
    fn convert(self) -> Result<Conversion, Issue> {
        let turns = self.messages.into_iter().map(|m| (m.role, m.content));
        let mut conv = normalize_turns(turns, false)?;
        match self.metadata {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Object(map)) => conv.metadata.extend(map),
            // Parquet files written by this crate store metadata as JSON text.
            Some(serde_json::Value::String(s)) if s.is_empty() => {}
            Some(serde_json::Value::String(s)) => {
                match serde_json::from_str::<BTreeMap<String, serde_json::Value>>(&s) {
                    Ok(map) => conv.metadata.extend(map),
                    Err(_) => {
                        return Err((IssueKind::WrongType, "`metadata` must be an object".into()))
                    }
                }
            }
            Some(_) => return Err((IssueKind::WrongType, "`metadata` must be an object".into())),
        }
        if let Some(id) = self.id {
            conv.metadata.entry("orig_id".into()).or_insert(id);
        }
        if let Some(source) = self.source {
            conv.metadata
                .entry("orig_source".into())
                .or_insert(serde_json::Value::String(source));
        }
        conv.tags = self.tags.map(TagList::into_tags).unwrap_or_default();
        Ok(conv)
    }
}

/// Turns `(role, text)` pairs into messages.
///
/// Policy (the same for ShareGPT and the chat format, except that `clean_up` is ShareGPT only):
/// - roles map through [`Role::from_sharegpt`]; anything else is [`IssueKind::UnknownRole`];
/// - a system turn is only allowed first; a later one is [`IssueKind::UnknownRole`];
/// - with `clean_up`, assistant turns before the first user turn are dropped (as FastChat's
///   training code does: V3 split segments often start mid-conversation), and consecutive
///   same-role turns are merged into one message joined by a blank line;
/// - no user or assistant message left is [`IssueKind::EmptyConversation`].
fn normalize_turns(
    turns: impl Iterator<Item = (String, String)>,
    clean_up: bool,
) -> Result<Conversion, Issue> {
    let mut messages: Vec<Message> = Vec::new();
    let mut leading_dropped = false;
    let mut merged = 0;
    for (i, (from, text)) in turns.enumerate() {
        let role = Role::from_sharegpt(&from).ok_or_else(|| {
            (
                IssueKind::UnknownRole,
                format!("unknown role {from:?} in turn {i}"),
            )
        })?;
        if role == Role::System && !messages.is_empty() {
            return Err((
                IssueKind::UnknownRole,
                format!("system turn at position {i}; only the first turn may be system"),
            ));
        }
        if clean_up {
            let has_dialogue = messages.iter().any(|m| m.role != Role::System);
            if role == Role::Assistant && !has_dialogue {
                leading_dropped = true;
                continue;
            }
            if let Some(last) = messages.last_mut() {
                if last.role == role {
                    last.content.push_str("\n\n");
                    last.content.push_str(&text);
                    merged += 1;
                    continue;
                }
            }
        }
        messages.push(Message::new(role, text));
    }
    if !messages.iter().any(|m| m.role != Role::System) {
        return Err((
            IssueKind::EmptyConversation,
            "no user or assistant message".into(),
        ));
    }
    Ok(Conversion {
        messages,
        tags: Vec::new(),
        metadata: BTreeMap::new(),
        leading_dropped,
        merged,
    })
}
