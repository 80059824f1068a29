//! Parquet reading (any of the formats, one column per field) and writing (the chat format).
//!
//! Written files have the columns `id: utf8`, `source: utf8`,
//! `messages: list<struct<role: utf8, content: utf8>>`, `tags: list<utf8>` and
//! `metadata: utf8` (JSON text, null when empty), Snappy-compressed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, ListArray, RecordBatch, StringArray, StructArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::{io_err, Error, IssueKind, Location, Result};
use crate::load::Sink;
use sft_record::{Message, Record, Role};

fn pq_err(path: &Path) -> impl FnOnce(parquet::errors::ParquetError) -> Error + '_ {
    move |source| Error::Parquet {
        path: path.to_path_buf(),
        source: Box::new(source),
    }
}

fn arrow_err(path: &Path) -> impl FnOnce(arrow::error::ArrowError) -> Error + '_ {
    move |source| Error::Arrow {
        path: path.to_path_buf(),
        source: Box::new(source),
    }
}

fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

/// Reads every row of a Parquet file into the sink. Returns (sha256, bytes).
pub(crate) fn read_parquet(path: &Path, sink: &mut Sink) -> Result<(String, u64)> {
    let (sha, bytes) = hash_file(path)?;
    for_each_parquet_row(path, |value, row| {
        sink.push_value(value, Location::Row(row), row as usize)
    })?;
    Ok((sha, bytes))
}

/// Calls `f(row_as_json_object, row_index)` for every row of a Parquet file, in order (the
/// source loader's path, which accepts every [`crate::SourceFormat`] in Parquet).
fn for_each_parquet_row(path: &Path, mut f: impl FnMut(Value, u64) -> Result<()>) -> Result<()> {
    let file = File::open(path).map_err(io_err(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(pq_err(path))?
        .with_batch_size(4096)
        .build()
        .map_err(pq_err(path))?;
    let mut row_index = 0u64;
    for batch in reader {
        let batch = batch.map_err(arrow_err(path))?;
        let schema = batch.schema();
        for row in 0..batch.num_rows() {
            let mut obj = Map::new();
            for (field, column) in schema.fields().iter().zip(batch.columns()) {
                obj.insert(field.name().clone(), arrow_value(column.as_ref(), row));
            }
            f(Value::Object(obj), row_index)?;
            row_index += 1;
        }
    }
    Ok(())
}

/// Reads the chat Parquet files [`write_parquet`] writes as [`Record`]s, in file order, so other
/// crates read them without depending on Arrow themselves.
///
/// Columns: `id`, `source` (utf8) and `messages` (list of `{role, content}` structs) are required;
/// `tags` (list of utf8) and `metadata` (JSON object text) may be absent or null; other columns
/// are ignored. A role must be `system`, `user` or `assistant`. A bad row is an
/// [`Error::Record`] at [`Location::Row`] (0-based) with the [`IssueKind`] of the problem.
pub fn read_parquet_rows(path: &Path) -> Result<Vec<Record>> {
    let file = File::open(path).map_err(io_err(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(pq_err(path))?
        .with_batch_size(4096)
        .build()
        .map_err(pq_err(path))?;
    let mut out = Vec::new();
    let mut row_index = 0u64;
    for batch in reader {
        let batch = batch.map_err(arrow_err(path))?;
        let column = |name: &str| batch.column_by_name(name).map(|c| c.as_ref());
        let (id, source, messages) = (column("id"), column("source"), column("messages"));
        let (tags, metadata) = (column("tags"), column("metadata"));
        for row in 0..batch.num_rows() {
            let bad = |kind, detail: String| Error::Record {
                path: path.to_path_buf(),
                location: Location::Row(row_index),
                kind,
                detail,
            };
            out.push(
                record_at(id, source, messages, tags, metadata, row)
                    .map_err(|(kind, detail)| bad(kind, detail))?,
            );
            row_index += 1;
        }
    }
    Ok(out)
}

/// A utf8 cell: `Ok(None)` when null, an error naming `what` when of another type.
fn str_cell<'a>(
    array: &'a dyn Array,
    row: usize,
    what: &str,
) -> std::result::Result<Option<&'a str>, (IssueKind, String)> {
    if array.is_null(row) {
        return Ok(None);
    }
    match array.data_type() {
        DataType::Utf8 => Ok(Some(array.as_string::<i32>().value(row))),
        DataType::LargeUtf8 => Ok(Some(array.as_string::<i64>().value(row))),
        DataType::Utf8View => Ok(Some(array.as_string_view().value(row))),
        other => Err((
            IssueKind::WrongType,
            format!("`{what}` must be a string column, not {other}"),
        )),
    }
}

/// A required utf8 cell.
fn required_str<'a>(
    array: Option<&'a dyn Array>,
    row: usize,
    what: &str,
) -> std::result::Result<&'a str, (IssueKind, String)> {
    let array = array.ok_or_else(|| (IssueKind::MissingField, format!("no `{what}` column")))?;
    str_cell(array, row, what)?
        .ok_or_else(|| (IssueKind::MissingField, format!("`{what}` is null")))
}

/// The list in a list cell: `Ok(None)` when null.
fn list_cell(
    array: &dyn Array,
    row: usize,
    what: &str,
) -> std::result::Result<Option<ArrayRef>, (IssueKind, String)> {
    if array.is_null(row) {
        return Ok(None);
    }
    match array.data_type() {
        DataType::List(_) => Ok(Some(array.as_list::<i32>().value(row))),
        DataType::LargeList(_) => Ok(Some(array.as_list::<i64>().value(row))),
        other => Err((
            IssueKind::WrongType,
            format!("`{what}` must be a list column, not {other}"),
        )),
    }
}

fn record_at(
    id: Option<&dyn Array>,
    source: Option<&dyn Array>,
    messages: Option<&dyn Array>,
    tags: Option<&dyn Array>,
    metadata: Option<&dyn Array>,
    row: usize,
) -> std::result::Result<Record, (IssueKind, String)> {
    let id = required_str(id, row, "id")?.to_string();
    let source = required_str(source, row, "source")?.to_string();
    let messages =
        messages.ok_or_else(|| (IssueKind::MissingField, "no `messages` column".into()))?;
    let list = list_cell(messages, row, "messages")?
        .ok_or_else(|| (IssueKind::MissingField, "`messages` is null".to_string()))?;
    let DataType::Struct(_) = list.data_type() else {
        return Err((
            IssueKind::WrongType,
            format!(
                "`messages` must hold {{role, content}} structs, not {}",
                list.data_type()
            ),
        ));
    };
    let structs = list.as_struct();
    let roles = structs.column_by_name("role");
    let contents = structs.column_by_name("content");
    let mut out_messages = Vec::with_capacity(structs.len());
    for i in 0..structs.len() {
        let role = required_str(roles.map(|c| c.as_ref()), i, "role")?;
        let role: Role = role.parse().map_err(|e: sft_record::ParseRoleError| {
            (IssueKind::UnknownRole, format!("message {i}: {e}"))
        })?;
        let content = required_str(contents.map(|c| c.as_ref()), i, "content")?;
        out_messages.push(Message::new(role, content));
    }
    let mut out_tags = Vec::new();
    if let Some(tags) = tags {
        if let Some(list) = list_cell(tags, row, "tags")? {
            for i in 0..list.len() {
                if let Some(tag) = str_cell(list.as_ref(), i, "tags")? {
                    out_tags.push(tag.to_string());
                }
            }
        }
    }
    let out_metadata = match metadata {
        None => BTreeMap::new(),
        Some(col) => match str_cell(col, row, "metadata")? {
            None | Some("") => BTreeMap::new(),
            Some(text) => serde_json::from_str(text).map_err(|e| {
                (
                    IssueKind::WrongType,
                    format!("`metadata` must be a JSON object: {e}"),
                )
            })?,
        },
    };
    Ok(Record {
        id,
        source,
        messages: out_messages,
        tags: out_tags,
        metadata: out_metadata,
    })
}

/// Converts one cell to JSON. Unsupported types become a string describing the type, which then
/// fails typed deserialization with a clear "wrong type" error.
fn arrow_value(array: &dyn Array, row: usize) -> Value {
    use arrow::datatypes as t;
    if array.is_null(row) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Null => Value::Null,
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(row).to_string()),
        DataType::LargeUtf8 => Value::String(array.as_string::<i64>().value(row).to_string()),
        DataType::Utf8View => Value::String(array.as_string_view().value(row).to_string()),
        DataType::Int8 => Value::from(array.as_primitive::<t::Int8Type>().value(row)),
        DataType::Int16 => Value::from(array.as_primitive::<t::Int16Type>().value(row)),
        DataType::Int32 => Value::from(array.as_primitive::<t::Int32Type>().value(row)),
        DataType::Int64 => Value::from(array.as_primitive::<t::Int64Type>().value(row)),
        DataType::UInt8 => Value::from(array.as_primitive::<t::UInt8Type>().value(row)),
        DataType::UInt16 => Value::from(array.as_primitive::<t::UInt16Type>().value(row)),
        DataType::UInt32 => Value::from(array.as_primitive::<t::UInt32Type>().value(row)),
        DataType::UInt64 => Value::from(array.as_primitive::<t::UInt64Type>().value(row)),
        DataType::Float32 => Value::from(array.as_primitive::<t::Float32Type>().value(row) as f64),
        DataType::Float64 => Value::from(array.as_primitive::<t::Float64Type>().value(row)),
        DataType::List(_) => {
            let inner = array.as_list::<i32>().value(row);
            Value::Array(
                (0..inner.len())
                    .map(|i| arrow_value(inner.as_ref(), i))
                    .collect(),
            )
        }
        DataType::LargeList(_) => {
            let inner = array.as_list::<i64>().value(row);
            Value::Array(
                (0..inner.len())
                    .map(|i| arrow_value(inner.as_ref(), i))
                    .collect(),
            )
        }
        DataType::Struct(fields) => {
            let s = array.as_struct();
            let mut obj = Map::new();
            for (f, col) in fields.iter().zip(s.columns()) {
                obj.insert(f.name().clone(), arrow_value(col.as_ref(), row));
            }
            Value::Object(obj)
        }
        other => Value::String(format!("<unsupported arrow type {other}>")),
    }
}

fn message_fields() -> Fields {
    Fields::from(vec![
        Field::new("role", DataType::Utf8, false),
        Field::new("content", DataType::Utf8, false),
    ])
}

/// The Arrow schema of written Parquet files.
pub fn chat_schema() -> Schema {
    Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new(
            "messages",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(message_fields()),
                false,
            ))),
            false,
        ),
        Field::new(
            "tags",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, false))),
            false,
        ),
        Field::new("metadata", DataType::Utf8, true),
    ])
}

fn batch_of(records: &[&Record], schema: &Arc<Schema>, path: &Path) -> Result<RecordBatch> {
    let ids = StringArray::from_iter_values(records.iter().map(|r| r.id.as_str()));
    let sources = StringArray::from_iter_values(records.iter().map(|r| r.source.as_str()));
    // from_iter_values needs exactly sized iterators, which flat_map is not.
    let roles: Vec<&str> = records
        .iter()
        .flat_map(|r| r.messages.iter().map(|m| m.role.as_str()))
        .collect();
    let contents: Vec<&str> = records
        .iter()
        .flat_map(|r| r.messages.iter().map(|m| m.content.as_str()))
        .collect();
    let roles = StringArray::from_iter_values(roles);
    let contents = StringArray::from_iter_values(contents);
    let structs = StructArray::try_new(
        message_fields(),
        vec![Arc::new(roles) as ArrayRef, Arc::new(contents)],
        None,
    )
    .map_err(arrow_err(path))?;
    let messages = ListArray::try_new(
        Arc::new(Field::new(
            "item",
            DataType::Struct(message_fields()),
            false,
        )),
        OffsetBuffer::from_lengths(records.iter().map(|r| r.messages.len())),
        Arc::new(structs),
        None,
    )
    .map_err(arrow_err(path))?;
    let tag_values: Vec<&str> = records
        .iter()
        .flat_map(|r| r.tags.iter().map(String::as_str))
        .collect();
    let tag_values = StringArray::from_iter_values(tag_values);
    let tags = ListArray::try_new(
        Arc::new(Field::new("item", DataType::Utf8, false)),
        OffsetBuffer::from_lengths(records.iter().map(|r| r.tags.len())),
        Arc::new(tag_values),
        None,
    )
    .map_err(arrow_err(path))?;
    let mut metadata = Vec::with_capacity(records.len());
    for r in records {
        if r.metadata.is_empty() {
            metadata.push(None);
        } else {
            let text = serde_json::to_string(&r.metadata).map_err(|source| Error::Json {
                path: path.to_path_buf(),
                source,
            })?;
            metadata.push(Some(text));
        }
    }
    let metadata = StringArray::from(metadata);
    RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(ids),
            Arc::new(sources),
            Arc::new(messages),
            Arc::new(tags),
            Arc::new(metadata),
        ],
    )
    .map_err(arrow_err(path))
}

/// Writes records in the chat format as Parquet (batches of 4,096 rows, Snappy).
pub fn write_parquet<'a>(
    path: &Path,
    records: impl IntoIterator<Item = &'a Record>,
) -> Result<u64> {
    let schema = Arc::new(chat_schema());
    let file = File::create(path).map_err(io_err(path))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer =
        ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(pq_err(path))?;
    let mut chunk: Vec<&Record> = Vec::with_capacity(4096);
    let mut rows = 0u64;
    for record in records {
        chunk.push(record);
        if chunk.len() == 4096 {
            writer
                .write(&batch_of(&chunk, &schema, path)?)
                .map_err(pq_err(path))?;
            rows += chunk.len() as u64;
            chunk.clear();
        }
    }
    if !chunk.is_empty() {
        writer
            .write(&batch_of(&chunk, &schema, path)?)
            .map_err(pq_err(path))?;
        rows += chunk.len() as u64;
    }
    writer.close().map_err(pq_err(path))?;
    Ok(rows)
}
