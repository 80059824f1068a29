//! Canonical JSON: the byte string that stage keys hash.
//!
//! `serde_json`'s map order depends on a cargo feature (`preserve_order`) that any crate in a
//! build can switch on, so keys are sorted here explicitly rather than trusting the map type.

use serde_json::Value;

/// Serializes `value` with object keys sorted by their UTF-8 bytes and no whitespace.
///
/// Numbers and strings use `serde_json`'s own formatting, which is stable for a given value.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_value(value, &mut out);
    out
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_value(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_at_every_depth() {
        let v = json!({"b": 1, "a": {"y": [2, {"d": null, "c": "x"}], "x": 1.5}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"x":1.5,"y":[2,{"c":"x","d":null}]},"b":1}"#
        );
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(canonical_json(&json!({"k\"": "a\nb"})), r#"{"k\"":"a\nb"}"#);
    }
}
