//! Flask's tagged JSON (`flask.json.tag`), mapped to plain JSON that serde
//! types read, and back.
//!
//! Flask marks Python types JSON lacks with one-key objects. Reading, each
//! becomes the JSON a Rust type deserializes from:
//!
//! | tag | Python | plain JSON here | Rust type |
//! | --- | --- | --- | --- |
//! | `" t"` | `tuple` | array | `Vec<T>`, `(A, B)` |
//! | `" b"` | `bytes` (base64) | array of numbers | `Vec<u8>` |
//! | `" m"` | `Markup` | string | `String` |
//! | `" u"` | `UUID` (hex) | hyphenated string | `uuid::Uuid`, `String` |
//! | `" d"` | `datetime` (HTTP date) | RFC 3339 string, UTC | `time::OffsetDateTime` (rfc3339), `chrono::DateTime<Utc>` |
//! | `" di"` | a dict whose only key looks like a tag | that dict | a map |
//!
//! Writing, a value read from Flask and left unchanged is written back with
//! its original tags, byte for byte; a changed value keeps its Python type
//! when it still fits it (a tuple stays a tuple while it is an array, a
//! datetime while it is an RFC 3339 string, ...), except `Markup`; new values
//! are plain JSON (lists, dicts, strings) in Python. A one-key object whose
//! key looks like a tag is escaped with `" di"`, as Flask does, so it reads
//! back as written.

use std::collections::BTreeMap;
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const TAGS: [&str; 6] = [" di", " t", " b", " m", " u", " d"];

/// A tagged value Flask's `_untag_scan` would reject with an exception.
#[derive(Debug)]
pub(super) struct BadTag;

/// The original tagged JSON of each top-level key whose value carried
/// tags, beside its plain form, so an unchanged value is written back as
/// Flask wrote it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Tags {
    originals: BTreeMap<String, (Value, Value)>,
}

/// Turns a Flask session (tagged) into plain data, remembering the tags.
pub(super) fn untag_session(
    tagged: Map<String, Value>,
) -> Result<(Map<String, Value>, Tags), BadTag> {
    let mut tags = Tags::default();
    let mut plain = Map::new();
    for (key, value) in tagged {
        let untagged = untag(value.clone())?;
        if untagged != value {
            tags.originals
                .insert(key.clone(), (value, untagged.clone()));
        }
        plain.insert(key, untagged);
    }
    Ok((plain, tags))
}

/// Turns plain session data into Flask's tagged JSON.
pub(super) fn tag_session(plain: &Map<String, Value>, tags: Option<&Tags>) -> Map<String, Value> {
    plain
        .iter()
        .map(|(key, value)| {
            let original = tags.and_then(|t| t.originals.get(key));
            let tagged = match original {
                Some((tagged, was)) if was == value => tagged.clone(),
                Some((tagged, _)) => retag_like(tagged, value).unwrap_or_else(|| tag(value)),
                None => tag(value),
            };
            (key.clone(), tagged)
        })
        .collect()
}

/// Flask's `TaggedJSONSerializer._untag_scan`: children first, then the
/// object itself if it is a one-key object whose key is a tag.
fn untag(value: Value) -> Result<Value, BadTag> {
    match value {
        Value::Array(items) => items
            .into_iter()
            .map(untag)
            .collect::<Result<_, _>>()
            .map(Value::Array),
        Value::Object(map) => {
            let map = map
                .into_iter()
                .map(|(k, v)| untag(v).map(|v| (k, v)))
                .collect::<Result<Map<_, _>, _>>()?;
            match single_tag(&map) {
                Some(_) => {
                    let (key, inner) = map.into_iter().next().expect("one entry");
                    from_tag(&key, inner)
                }
                None => Ok(Value::Object(map)),
            }
        }
        other => Ok(other),
    }
}

/// The tag of a one-key object whose key is a tag.
fn single_tag(map: &Map<String, Value>) -> Option<&'static str> {
    if map.len() != 1 {
        return None;
    }
    let key = map.keys().next()?;
    TAGS.into_iter().find(|tag| tag == key)
}

/// The plain value of the tagged object `{key: inner}`.
fn from_tag(key: &str, inner: Value) -> Result<Value, BadTag> {
    Ok(match key {
        " di" => {
            let Value::Object(map) = inner else {
                return Err(BadTag);
            };
            if map.len() != 1 {
                return Err(BadTag);
            }
            let (k, v) = map.into_iter().next().expect("one entry");
            let k = k.strip_suffix("__").ok_or(BadTag)?.to_owned();
            Value::Object(Map::from_iter([(k, v)]))
        }
        " t" => match inner {
            Value::Array(items) => Value::Array(items),
            _ => return Err(BadTag),
        },
        " b" => {
            let bytes = STANDARD
                .decode(inner.as_str().ok_or(BadTag)?)
                .map_err(|_| BadTag)?;
            Value::Array(bytes.into_iter().map(Value::from).collect())
        }
        " m" => Value::String(inner.as_str().ok_or(BadTag)?.to_owned()),
        " u" => {
            let uuid = uuid::Uuid::try_parse(inner.as_str().ok_or(BadTag)?).map_err(|_| BadTag)?;
            Value::String(uuid.hyphenated().to_string())
        }
        // werkzeug's parse_date answers None for a date it cannot read.
        " d" => inner
            .as_str()
            .and_then(|text| httpdate::parse_http_date(text).ok())
            .map_or(Value::Null, |at| Value::String(rfc3339(at))),
        _ => unreachable!("single_tag only yields known tags"),
    })
}

/// Flask's `TaggedJSONSerializer.tag` for plain JSON: the only Python
/// types plain JSON has are dict, list, str, numbers, bool and None, so the
/// only tag needed is `" di"`, escaping a one-key dict whose key is a tag.
fn tag(value: &Value) -> Value {
    match value {
        Value::Array(items) => Value::Array(items.iter().map(tag).collect()),
        Value::Object(map) => {
            if single_tag(map).is_some() {
                let (key, inner) = map.iter().next().expect("one entry");
                let escaped = Map::from_iter([(format!("{key}__"), tag(inner))]);
                return Value::Object(Map::from_iter([(" di".to_owned(), Value::Object(escaped))]));
            }
            Value::Object(map.iter().map(|(k, v)| (k.clone(), tag(v))).collect())
        }
        other => other.clone(),
    }
}

/// `value` tagged with the Python type `original` had at the top, if it
/// still fits that type.
///
/// Never `Markup`: Jinja renders `Markup` unescaped, so the tag says "this
/// HTML is trusted", which holds for what Flask wrote but not for a new
/// string (say, user input) a handler writes under the same key. The other
/// tags only name a type, and Jinja escapes their text.
fn retag_like(original: &Value, value: &Value) -> Option<Value> {
    let Value::Object(map) = original else {
        return None;
    };
    let tagged = match single_tag(map)? {
        " t" => Value::Array(value.as_array()?.iter().map(tag).collect()),
        " b" => {
            let bytes = value
                .as_array()?
                .iter()
                .map(|n| n.as_u64().and_then(|n| u8::try_from(n).ok()))
                .collect::<Option<Vec<u8>>>()?;
            Value::String(STANDARD.encode(bytes))
        }
        " u" => Value::String(
            uuid::Uuid::try_parse(value.as_str()?)
                .ok()?
                .simple()
                .to_string(),
        ),
        " d" => {
            let at = OffsetDateTime::parse(value.as_str()?, &Rfc3339).ok()?;
            Value::String(httpdate::fmt_http_date(at.into()))
        }
        // " m" as said above; " di" is no Python type, just an escaped dict.
        _ => return None,
    };
    let tag_key = single_tag(map)?.to_owned();
    Some(Value::Object(Map::from_iter([(tag_key, tagged)])))
}

/// RFC 3339 in UTC, to the second (HTTP dates carry no more).
fn rfc3339(at: SystemTime) -> String {
    OffsetDateTime::from(at)
        .format(&Rfc3339)
        .expect("HTTP dates lie in RFC 3339's range")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn every_tag_untags_to_plain_json() {
        let tagged = map(json!({
            "t": {" t": [1, "a", {" t": [2]}]},
            "b": {" b": "AAH/"},
            "m": {" m": "<b>hi</b>"},
            "u": {" u": "12345678123456781234567812345678"},
            "d": {" d": "Wed, 21 Oct 2015 07:28:00 GMT"},
            "di": {" di": {" t__": [1, 2]}},
            "plain": {"a": 1, "b": [true, null]},
        }));
        let (plain, _) = untag_session(tagged).unwrap();
        assert_eq!(
            Value::Object(plain),
            json!({
                "t": [1, "a", [2]],
                "b": [0, 1, 255],
                "m": "<b>hi</b>",
                "u": "12345678-1234-5678-1234-567812345678",
                "d": "2015-10-21T07:28:00Z",
                "di": {" t": [1, 2]},
                "plain": {"a": 1, "b": [true, null]},
            })
        );
    }

    #[test]
    fn unchanged_values_are_written_back_as_they_came() {
        let tagged = map(json!({
            "t": {" t": [1, {" b": "AA=="}]},
            "di": {" di": {" u__": "x"}},
            "n": 1,
        }));
        let (plain, tags) = untag_session(tagged.clone()).unwrap();
        assert_eq!(tag_session(&plain, Some(&tags)), tagged);
    }

    #[test]
    fn changed_values_keep_their_python_type_while_they_fit_it() {
        let tagged = map(json!({
            "t": {" t": [1, 2]},
            "b": {" b": "AAE="},
            "u": {" u": "12345678123456781234567812345678"},
            "d": {" d": "Wed, 21 Oct 2015 07:28:00 GMT"},
            "m": {" m": "<i>"},
        }));
        let (_, tags) = untag_session(tagged).unwrap();
        let changed = map(json!({
            "t": [1, 2, 3],
            "b": [255],
            "u": "87654321-4321-8765-4321-876543218765",
            "d": "2020-01-02T03:04:05Z",
            "m": 42,
        }));
        assert_eq!(
            Value::Object(tag_session(&changed, Some(&tags))),
            json!({
                "t": {" t": [1, 2, 3]},
                "b": {" b": "/w=="},
                "u": {" u": "87654321432187654321876543218765"},
                "d": {" d": "Thu, 02 Jan 2020 03:04:05 GMT"},
                "m": 42,
            })
        );
    }

    #[test]
    fn markup_is_kept_only_while_unchanged() {
        let tagged = map(json!({
            "kept": {" m": "<i>hi</i>"},
            "changed": {" m": "<i>hi</i>"},
        }));
        let (_, tags) = untag_session(tagged).unwrap();
        let written = map(json!({
            "kept": "<i>hi</i>",
            "changed": "<script>alert(1)</script>",
        }));
        assert_eq!(
            Value::Object(tag_session(&written, Some(&tags))),
            json!({
                "kept": {" m": "<i>hi</i>"},
                "changed": "<script>alert(1)</script>",
            })
        );
    }

    #[test]
    fn one_key_dicts_that_look_like_tags_are_escaped() {
        let plain =
            map(json!({"x": {" t": [1]}, "y": [{" di": {"a": 1}}], "z": {" t": 1, "other": 2}}));
        let tagged = tag_session(&plain, None);
        assert_eq!(
            Value::Object(tagged.clone()),
            json!({
                "x": {" di": {" t__": [1]}},
                "y": [{" di": {" di__": {"a": 1}}}],
                "z": {" t": 1, "other": 2},
            })
        );
        let (back, _) = untag_session(tagged).unwrap();
        assert_eq!(back, plain);
    }

    #[test]
    fn malformed_tags_are_refused() {
        for bad in [
            json!({"x": {" t": "abc"}}),
            json!({"x": {" b": "not base64!"}}),
            json!({"x": {" u": "nope"}}),
            json!({"x": {" di": {"no_suffix": 1}}}),
            json!({"x": {" di": 5}}),
            json!({"x": {" m": 5}}),
        ] {
            assert!(untag_session(map(bad.clone())).is_err(), "{bad}");
        }
        // An unreadable date is None in Flask, null here.
        let (plain, _) = untag_session(map(json!({"d": {" d": "yesterday"}}))).unwrap();
        assert_eq!(plain["d"], Value::Null);
    }
}
