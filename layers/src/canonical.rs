//! The one serializer for JSON that kiln gives a digest to (configs,
//! manifests, indexes): compact, object keys sorted by their UTF-8 bytes, so
//! the same value always has the same bytes, whatever map types produced it
//! (serde_json's `preserve_order` feature could otherwise leak insertion order).

use serde::Serialize;
use serde_json::Value;

/// Serializes `value` canonically.
pub fn to_canonical_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let value = serde_json::to_value(value)?;
    let mut out = Vec::with_capacity(512);
    write_value(&value, &mut out)?;
    Ok(out)
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key)?;
                out.push(b':');
                if let Some(v) = map.get(*key) {
                    write_value(v, out)?;
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn keys_are_sorted_at_every_depth() {
        let mut inner = HashMap::new();
        for k in ["zeta", "alpha", "Mid", "beta"] {
            inner.insert(k.to_string(), vec![1, 2]);
        }
        let mut outer = HashMap::new();
        outer.insert("b", serde_json::to_value(&inner).unwrap());
        outer.insert("a", Value::String("x\"y".into()));
        let bytes = to_canonical_json(&outer).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"a":"x\"y","b":{"Mid":[1,2],"alpha":[1,2],"beta":[1,2],"zeta":[1,2]}}"#
        );
    }
}
