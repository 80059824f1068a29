//! Parquet reading (any of the formats, one column per field) and writing (the chat format).
//!
//! Written files have the columns `id: utf8`, `source: utf8`,
//! `messages: list<struct<role: utf8, content: utf8>>`, `tags: list<utf8>` and
//! `metadata: utf8` (JSON text, null when empty), Snappy-compressed.

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

use crate::error::{io_err, Error, Location, Result};
use crate::load::Sink;
use crate::record::Record;

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

/// Calls `f(row_as_json_object, row_index)` for every row of a Parquet file, in order.
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

/// Every row of a Parquet file as a JSON object (one key per column; lists and structs nest,
/// nulls become `null`), in file order. The row index is the 0-based position, which is what
/// [`Location::Row`] reports; other crates use this to read the chat files [`write_parquet`]
/// writes without depending on Arrow themselves.
pub fn read_parquet_rows(path: &Path) -> Result<Vec<Value>> {
    let mut rows = Vec::new();
    for_each_parquet_row(path, |v, _| {
        rows.push(v);
        Ok(())
    })?;
    Ok(rows)
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
