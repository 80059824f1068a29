//! Typed GGUF metadata values.

use std::fmt;

/// One metadata value, with the exact GGUF type it was stored as.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    /// An array; GGUF arrays are homogeneous, so every element has the same variant.
    Array(Vec<Value>),
}

impl Value {
    /// The GGUF type name (`UINT32`, `ARRAY[STRING]`, ...), for messages.
    pub fn type_name(&self) -> String {
        match self {
            Value::U8(_) => "UINT8".into(),
            Value::I8(_) => "INT8".into(),
            Value::U16(_) => "UINT16".into(),
            Value::I16(_) => "INT16".into(),
            Value::U32(_) => "UINT32".into(),
            Value::I32(_) => "INT32".into(),
            Value::U64(_) => "UINT64".into(),
            Value::I64(_) => "INT64".into(),
            Value::F32(_) => "FLOAT32".into(),
            Value::F64(_) => "FLOAT64".into(),
            Value::Bool(_) => "BOOL".into(),
            Value::String(_) => "STRING".into(),
            Value::Array(items) => match items.first() {
                Some(first) => format!("ARRAY[{}]", first.type_name()),
                None => "ARRAY[]".into(),
            },
        }
    }

    /// Any integer type as `i128` (so every GGUF integer fits); `None` for other types.
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// Any numeric type as `f64` (integers converted); `None` for others.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_int().map(|v| v as f64),
        }
    }

    /// The string, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The boolean, if this is a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The value as JSON (arrays become JSON arrays; non-finite floats become `null`).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::F32(v) => serde_json::Number::from_f64(f64::from(*v)).map_or(J::Null, J::Number),
            Value::F64(v) => serde_json::Number::from_f64(*v).map_or(J::Null, J::Number),
            Value::Bool(b) => J::Bool(*b),
            Value::String(s) => J::String(s.clone()),
            Value::Array(items) => J::Array(items.iter().map(Value::to_json).collect()),
            other => match other.as_int() {
                Some(i) if i >= 0 => J::from(i as u64),
                Some(i) => J::from(i as i64),
                None => J::Null,
            },
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::String(s) => write!(f, "{s:?}"),
            Value::Array(items) => write!(f, "[{} × {}]", items.len(), self.type_name()),
            other => write!(f, "{}", other.to_json()),
        }
    }
}
