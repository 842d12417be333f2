//! Flask-Session 0.8's server-side record (the format `FlaskSessionStore`
//! keeps on each server; no I/O here): `dict(session)` as msgspec MessagePack (or
//! msgspec JSON), the permanent flag kept in the dict under `_permanent`.
//!
//! Reading, each MessagePack type becomes the JSON a Rust type
//! deserializes from, as the flask codec does for Flask's tagged JSON:
//!
//! | MessagePack (Python) | plain JSON here | Rust type |
//! | --- | --- | --- |
//! | bin (`bytes`) | array of numbers | `Vec<u8>` |
//! | ext -1 (aware `datetime`) | RFC 3339 string, UTC | `time::OffsetDateTime` (rfc3339), `chrono::DateTime<Utc>` |
//! | array (`list`, `tuple`, `set`) | array | `Vec<T>` |
//! | map with non-string keys | object, keys as decimal text | `HashMap<u64, T>` |
//!
//! Writing, a top-level value left unchanged goes back exactly as it was
//! read; a changed one keeps its MessagePack type where it still fits it
//! (bytes stay bin while they are an array of bytes, a datetime stays a
//! timestamp while it is an RFC 3339 string), element by element; new
//! values are plain (lists, dicts, strings in Python).

use std::collections::BTreeMap;

use rmpv::Value as Mp;
use serde_json::value::RawValue;
use serde_json::{Number, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::data::SessionData;

/// The key Flask-Session marks permanent sessions with.
pub(crate) const PERMANENT_KEY: &str = "_permanent";

/// The deepest nesting a record may have.
const MAX_DEPTH: usize = 128;

/// MessagePack's timestamp extension type.
const TIMESTAMP: i8 = -1;

/// The most a record may hold: far above what a session needs, and a bound
/// on what a hostile or corrupt record can make a server allocate.
pub(crate) const MAX_RECORD: usize = 1 << 20;

/// How records are serialized (Flask-Session's
/// `SESSION_SERIALIZATION_FORMAT`). Either way both are read, as
/// Flask-Session reads both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Serialization {
    /// msgspec MessagePack, Flask-Session's default.
    #[default]
    Msgpack,
    /// msgspec JSON.
    Json,
}

/// A record read back: its data without `_permanent`, the flag, and each
/// top-level value as it was stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Decoded {
    pub(crate) data: SessionData,
    pub(crate) permanent: bool,
    originals: BTreeMap<String, (Original, Value)>,
}

/// A top-level entry as stored: its key (msgspec writes a dict's integer
/// keys as integers) and its value, so that what a request leaves alone is
/// written back exactly (the plain JSON of a value can lose what it was:
/// an integer too big for 64 bits reads as a float).
#[derive(Debug, Clone)]
enum Original {
    Msgpack { key: Mp, value: Mp },
    Json(Box<RawValue>),
}

impl PartialEq for Original {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Msgpack { key, value }, Self::Msgpack { key: k, value: v }) => {
                key == k && value == v
            }
            (Self::Json(a), Self::Json(b)) => a.get() == b.get(),
            _ => false,
        }
    }
}

/// Reads a record Flask-Session wrote (or this module did): MessagePack
/// when it starts as a map does, JSON otherwise. `None` for anything else,
/// pickle included: a pickle is never loaded (unpickling runs code), so a
/// record from Flask-Session before 0.7 reads as no session.
pub(crate) fn decode(bytes: &[u8]) -> Option<Decoded> {
    if bytes.len() > MAX_RECORD {
        return None;
    }
    match bytes.first()? {
        0x80..=0x8f | 0xde | 0xdf => decode_msgpack(bytes),
        _ => decode_json(bytes),
    }
}

fn decode_msgpack(mut bytes: &[u8]) -> Option<Decoded> {
    // A bound on nesting, as serde_json's 128, so a deeply nested record
    // is refused rather than overflowing the stack (here, in `to_json`,
    // or when the value is dropped).
    let value = rmpv::decode::read_value_with_max_depth(&mut bytes, MAX_DEPTH).ok()?;
    if !bytes.is_empty() {
        return None;
    }
    let Mp::Map(entries) = value else { return None };
    let mut decoded = Decoded::default();
    for (stored, value) in entries {
        let key = map_key(&stored)?;
        if key == PERMANENT_KEY {
            decoded.permanent = truthy_msgpack(&value);
            continue;
        }
        let plain = to_json(&value);
        decoded.data.insert(key.clone(), plain.clone());
        let original = Original::Msgpack { key: stored, value };
        decoded.originals.insert(key, (original, plain));
    }
    Some(decoded)
}

fn decode_json(bytes: &[u8]) -> Option<Decoded> {
    let map: BTreeMap<String, Box<RawValue>> = serde_json::from_slice(bytes).ok()?;
    let mut decoded = Decoded::default();
    for (key, raw) in map {
        let value: Value = serde_json::from_str(raw.get()).ok()?;
        if key == PERMANENT_KEY {
            decoded.permanent = truthy_json(&value);
            continue;
        }
        decoded.data.insert(key.clone(), value.clone());
        decoded.originals.insert(key, (Original::Json(raw), value));
    }
    Some(decoded)
}

/// Writes `data` as Flask-Session would store `dict(session)`, with
/// `_permanent` first when the session is permanent (Flask-Session sets it
/// when it opens a session); values read by `decoded` and unchanged since
/// go back as they were. The flag alone decides `_permanent`: a value a
/// handler put under that key is dropped, since the layer set the cookie's
/// expiry by the flag and the record must say the same.
pub(crate) fn encode(
    format: Serialization,
    data: &SessionData,
    permanent: bool,
    decoded: Option<&Decoded>,
) -> Vec<u8> {
    let original = |key: &str| decoded.and_then(|d| d.originals.get(key));
    match format {
        Serialization::Msgpack => {
            let mut entries = Vec::with_capacity(data.len() + 1);
            if permanent {
                entries.push((Mp::from(PERMANENT_KEY), Mp::Boolean(true)));
            }
            for (key, value) in data.iter().filter(|(key, _)| *key != PERMANENT_KEY) {
                let entry = match original(key) {
                    Some((Original::Msgpack { key, value: stored }, plain)) if plain == value => {
                        (key.clone(), stored.clone())
                    }
                    Some((Original::Msgpack { key, value: stored }, _)) => {
                        (key.clone(), to_msgpack(value, Some(stored)))
                    }
                    _ => (Mp::from(key.as_str()), to_msgpack(value, None)),
                };
                entries.push(entry);
            }
            let mut bytes = Vec::new();
            rmpv::encode::write_value(&mut bytes, &Mp::Map(entries))
                .expect("writing to a Vec cannot fail");
            bytes
        }
        Serialization::Json => {
            let raw = |value: &Value| {
                serde_json::value::to_raw_value(value).expect("JSON values always serialize")
            };
            let mut map = BTreeMap::new();
            if permanent {
                map.insert(PERMANENT_KEY, raw(&Value::Bool(true)));
            }
            for (key, value) in data.iter().filter(|(key, _)| *key != PERMANENT_KEY) {
                let value = match original(key) {
                    Some((Original::Json(stored), plain)) if plain == value => stored.clone(),
                    _ => raw(value),
                };
                map.insert(key.as_str(), value);
            }
            serde_json::to_vec(&map).expect("JSON values always serialize")
        }
    }
}

/// A map key as text: strings as they are, integers in decimal (msgspec
/// writes `dict[int, ...]` keys as integers); any other key makes the
/// record unreadable here.
fn map_key(key: &Mp) -> Option<String> {
    match key {
        Mp::String(text) => text.as_str().map(str::to_owned),
        Mp::Integer(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Python's truth of a stored `_permanent`, which Flask and Flask-Session
/// test as it is: zero, empty text, bytes and containers are false.
fn truthy_msgpack(value: &Mp) -> bool {
    match value {
        Mp::Nil => false,
        Mp::Boolean(b) => *b,
        Mp::Integer(n) => n.as_i64() != Some(0),
        Mp::F32(f) => *f != 0.0,
        Mp::F64(f) => *f != 0.0,
        Mp::String(text) => !text.as_bytes().is_empty(),
        Mp::Binary(bytes) => !bytes.is_empty(),
        Mp::Array(items) => !items.is_empty(),
        Mp::Map(entries) => !entries.is_empty(),
        Mp::Ext(..) => true,
    }
}

fn truthy_json(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(text) => !text.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
    }
}

/// The plain JSON of a MessagePack value (see the module's table).
fn to_json(value: &Mp) -> Value {
    match value {
        Mp::Nil => Value::Null,
        Mp::Boolean(b) => Value::Bool(*b),
        Mp::Integer(n) => n
            .as_u64()
            .map(Value::from)
            .or_else(|| n.as_i64().map(Value::from))
            .unwrap_or(Value::Null),
        Mp::F32(f) => Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
        Mp::F64(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Mp::String(text) => match text.as_str() {
            Some(text) => Value::String(text.to_owned()),
            // msgspec writes only valid UTF-8. Other bytes in a text are
            // bytes to Rust, as rmpv writes them back (bin), so a record
            // reads the same after a save of another key.
            None => bytes_json(text.as_bytes()),
        },
        Mp::Binary(bytes) => bytes_json(bytes),
        Mp::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Mp::Map(entries) => Value::Object(
            entries
                .iter()
                .filter_map(|(k, v)| Some((map_key(k)?, to_json(v))))
                .collect(),
        ),
        Mp::Ext(TIMESTAMP, bytes) => timestamp(bytes)
            .and_then(|at| at.format(&Rfc3339).ok())
            .map_or(Value::Null, Value::String),
        // Extension types of an application's own encoder hooks: there is
        // no JSON for them (an unchanged value still goes back as stored).
        Mp::Ext(..) => Value::Null,
    }
}

/// Bytes as plain JSON: an array of numbers (`Vec<u8>`).
fn bytes_json(bytes: &[u8]) -> Value {
    Value::Array(bytes.iter().map(|b| Value::from(*b)).collect())
}

/// The MessagePack of `value`, keeping the type of `like` (the value it
/// replaces) where it still fits.
fn to_msgpack(value: &Value, like: Option<&Mp>) -> Mp {
    match (like, value) {
        (Some(Mp::Binary(_)), Value::Array(items)) => {
            if let Some(bytes) = items
                .iter()
                .map(|n| n.as_u64().and_then(|n| u8::try_from(n).ok()))
                .collect::<Option<Vec<u8>>>()
            {
                return Mp::Binary(bytes);
            }
        }
        (Some(Mp::Ext(TIMESTAMP, _)), Value::String(text)) => {
            if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
                return Mp::Ext(TIMESTAMP, timestamp_bytes(at));
            }
        }
        _ => {}
    }
    match value {
        Value::Null => Mp::Nil,
        Value::Bool(b) => Mp::Boolean(*b),
        Value::Number(n) => n
            .as_u64()
            .map(Mp::from)
            .or_else(|| n.as_i64().map(Mp::from))
            .unwrap_or_else(|| Mp::F64(n.as_f64().unwrap_or(f64::NAN))),
        Value::String(text) => Mp::from(text.as_str()),
        Value::Array(items) => {
            let likes = match like {
                Some(Mp::Array(likes)) => likes.as_slice(),
                _ => &[],
            };
            Mp::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| to_msgpack(item, likes.get(i)))
                    .collect(),
            )
        }
        Value::Object(map) => {
            // The entry a key replaces: its key keeps its type (an integer
            // key reads as decimal text) and its value lends its own.
            let likes: BTreeMap<String, &(Mp, Mp)> = match like {
                Some(Mp::Map(entries)) => entries
                    .iter()
                    .filter_map(|entry| Some((map_key(&entry.0)?, entry)))
                    .collect(),
                _ => BTreeMap::new(),
            };
            Mp::Map(
                map.iter()
                    .map(|(k, v)| match likes.get(k) {
                        Some((stored, like)) => (stored.clone(), to_msgpack(v, Some(like))),
                        None => (Mp::from(k.as_str()), to_msgpack(v, None)),
                    })
                    .collect(),
            )
        }
    }
}

/// The time a MessagePack timestamp (32, 64 or 96 bits) holds.
fn timestamp(bytes: &[u8]) -> Option<OffsetDateTime> {
    let (seconds, nanos) = match bytes.len() {
        4 => (i64::from(u32::from_be_bytes(bytes.try_into().ok()?)), 0),
        8 => {
            let both = u64::from_be_bytes(bytes.try_into().ok()?);
            ((both & 0x3_ffff_ffff) as i64, (both >> 34) as u32)
        }
        12 => (
            i64::from_be_bytes(bytes[4..].try_into().ok()?),
            u32::from_be_bytes(bytes[..4].try_into().ok()?),
        ),
        _ => return None,
    };
    if nanos >= 1_000_000_000 {
        return None;
    }
    let at = OffsetDateTime::from_unix_timestamp(seconds).ok()?;
    Some(at + time::Duration::nanoseconds(i64::from(nanos)))
}

/// The shortest MessagePack timestamp for `at`, as msgspec writes it.
fn timestamp_bytes(at: OffsetDateTime) -> Vec<u8> {
    let seconds = at.unix_timestamp();
    let nanos = at.nanosecond();
    if seconds >= 0 && seconds >> 34 == 0 {
        if nanos == 0 && seconds <= i64::from(u32::MAX) {
            return (seconds as u32).to_be_bytes().to_vec();
        }
        return ((u64::from(nanos) << 34) | seconds as u64)
            .to_be_bytes()
            .to_vec();
    }
    let mut bytes = nanos.to_be_bytes().to_vec();
    bytes.extend_from_slice(&seconds.to_be_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn data(value: Value) -> SessionData {
        let Value::Object(map) = value else {
            panic!("an object")
        };
        map
    }

    /// `{"_permanent": True, "user_id": 42, "name": "Ada"}` as msgspec
    /// writes it (insertion order, shortest forms).
    const FLASK_WRITTEN: &[u8] = b"\x83\xaa_permanent\xc3\xa7user_id\x2a\xa4name\xa3Ada";

    #[test]
    fn a_flask_session_record_reads_as_its_data_and_flag() {
        let decoded = decode(FLASK_WRITTEN).unwrap();
        assert!(decoded.permanent);
        assert_eq!(decoded.data, data(json!({"name": "Ada", "user_id": 42})));
    }

    #[test]
    fn unchanged_records_are_written_back_as_read() {
        let decoded = decode(FLASK_WRITTEN).unwrap();
        let again = encode(Serialization::Msgpack, &decoded.data, true, Some(&decoded));
        // Keys come in the data's (sorted) order, values byte for byte.
        assert_eq!(decode(&again).unwrap(), decoded);
        assert_eq!(
            again,
            b"\x83\xaa_permanent\xc3\xa4name\xa3Ada\xa7user_id\x2a".to_vec()
        );
    }

    #[test]
    fn bytes_and_datetimes_read_as_plain_json_and_keep_their_type() {
        // {"b": b"\x00\xff", "at": datetime(2024, 1, 2, 3, 4, 5, 600000, UTC)}
        let nanos: u64 = 600_000_000;
        let seconds: u64 = 1_704_164_645;
        let mut record = b"\x82\xa1b\xc4\x02\x00\xff\xa2at\xd6\xff".to_vec();
        record.truncate(record.len() - 2);
        record.extend_from_slice(b"\xd7\xff");
        record.extend_from_slice(&((nanos << 34) | seconds).to_be_bytes());
        let decoded = decode(&record).unwrap();
        assert_eq!(
            decoded.data,
            data(json!({"b": [0, 255], "at": "2024-01-02T03:04:05.6Z"}))
        );
        // Changed, each stays what it was in Python.
        let changed = data(json!({"b": [1, 2], "at": "2025-01-01T00:00:00Z"}));
        let written = encode(Serialization::Msgpack, &changed, false, Some(&decoded));
        let value = rmpv::decode::read_value(&mut written.as_slice()).unwrap();
        let entries = value.as_map().unwrap();
        assert_eq!(
            entries[0],
            (
                Mp::from("at"),
                Mp::Ext(-1, 1_735_689_600u32.to_be_bytes().to_vec())
            )
        );
        assert_eq!(entries[1], (Mp::from("b"), Mp::Binary(vec![1, 2])));
        // No longer fitting, they become plain.
        let changed = data(json!({"b": [1, 256], "at": "soon"}));
        let written = encode(Serialization::Msgpack, &changed, false, Some(&decoded));
        let value = rmpv::decode::read_value(&mut written.as_slice()).unwrap();
        assert_eq!(
            value.as_map().unwrap()[1].1,
            Mp::Array(vec![Mp::from(1), Mp::from(256)])
        );
    }

    /// Found by the `flask_session_record` fuzz target: text that is not
    /// UTF-8 (msgspec never writes it) read as lossy text, but rmpv writes
    /// it back as bin, so the record read differently after a save.
    #[test]
    fn text_that_is_not_utf8_reads_as_the_bytes_it_is_written_back_as() {
        let record = b"\x81\xa1k\xa3\xe2\x00\x00";
        let decoded = decode(record).unwrap();
        assert_eq!(decoded.data, data(json!({"k": [226, 0, 0]})));
        let written = encode(Serialization::Msgpack, &decoded.data, false, Some(&decoded));
        assert_eq!(decode(&written).unwrap().data, decoded.data);
    }

    #[test]
    fn timestamps_round_trip_in_every_width() {
        for text in [
            "1970-01-01T00:00:00Z",
            "2106-02-07T06:28:15Z",
            "2106-02-07T06:28:16Z",
            "2024-05-06T07:08:09.123456789Z",
            "2514-05-30T01:53:03.5Z",
            "1900-01-01T00:00:00.25Z",
            "9999-12-31T23:59:59Z",
        ] {
            let at = OffsetDateTime::parse(text, &Rfc3339).unwrap();
            assert_eq!(timestamp(&timestamp_bytes(at)), Some(at), "{text}");
        }
        assert_eq!(timestamp_bytes(OffsetDateTime::UNIX_EPOCH).len(), 4);
        assert_eq!(timestamp(&[0; 5]), None);
    }

    #[test]
    fn json_records_read_and_write_as_json() {
        let decoded = decode(br#"{"_permanent":false,"cart":[1,2],"n":1.5}"#).unwrap();
        assert!(!decoded.permanent);
        assert_eq!(decoded.data, data(json!({"cart": [1, 2], "n": 1.5})));
        let written = encode(Serialization::Json, &decoded.data, true, Some(&decoded));
        assert_eq!(
            written,
            br#"{"_permanent":true,"cart":[1,2],"n":1.5}"#.to_vec()
        );
    }

    #[test]
    fn json_records_write_untouched_values_back_as_read() {
        // msgspec.json writes a Python int of any size as its digits;
        // rewriting a record for a change to another key must not turn it
        // into a float.
        let record = br#"{"_permanent":true,"big":1180591620717411303424,"n":1}"#;
        let decoded = decode(record).unwrap();
        let mut changed = decoded.data.clone();
        changed.insert("n".into(), json!(2));
        let written = encode(Serialization::Json, &changed, true, Some(&decoded));
        assert_eq!(
            String::from_utf8(written).unwrap(),
            r#"{"_permanent":true,"big":1180591620717411303424,"n":2}"#
        );
    }

    #[test]
    fn permanent_is_read_with_python_truth() {
        // Flask-Session and Flask test `session.permanent`, the stored
        // value, for truth: empty strings, containers and 0.0 are false.
        for (record, permanent) in [
            (&b"\x81\xaa_permanent\xa0"[..], false),
            (b"\x81\xaa_permanent\x90", false),
            (b"\x81\xaa_permanent\x80", false),
            (b"\x81\xaa_permanent\xc4\x00", false),
            (
                b"\x81\xaa_permanent\xcb\x00\x00\x00\x00\x00\x00\x00\x00",
                false,
            ),
            (b"\x81\xaa_permanent\xa1x", true),
            (b"\x81\xaa_permanent\x91\x00", true),
            (br#"{"_permanent":""}"#, false),
            (br#"{"_permanent":[]}"#, false),
            (br#"{"_permanent":{}}"#, false),
            (br#"{"_permanent":0.0}"#, false),
            (br#"{"_permanent":"x"}"#, true),
            (br#"{"_permanent":[0]}"#, true),
        ] {
            assert_eq!(decode(record).unwrap().permanent, permanent, "{record:?}");
        }
    }

    #[test]
    fn integer_keys_of_nested_dicts_stay_integers() {
        // {"d": {1: "a", 2: "b"}}, changed to {"1": "z", "2": "b", "3": "c"}.
        let record = b"\x81\xa1d\x82\x01\xa1a\x02\xa1b";
        let decoded = decode(record).unwrap();
        let mut changed = decoded.data.clone();
        changed.insert("d".into(), json!({"1": "z", "2": "b", "3": "c"}));
        let written = encode(Serialization::Msgpack, &changed, false, Some(&decoded));
        assert_eq!(
            written,
            b"\x81\xa1d\x83\x01\xa1z\x02\xa1b\xa13\xa1c".to_vec()
        );
    }

    #[test]
    fn integer_keys_stay_integers() {
        // {1: "a", "b": 2}: msgspec writes a dict's int keys as integers,
        // and Python finds `session[1]` only under an integer key.
        let record = b"\x82\x01\xa1a\xa1b\x02";
        let decoded = decode(record).unwrap();
        assert_eq!(decoded.data, data(json!({"1": "a", "b": 2})));
        let mut changed = decoded.data.clone();
        changed.insert("b".into(), json!(3));
        let written = encode(Serialization::Msgpack, &changed, false, Some(&decoded));
        assert_eq!(written, b"\x82\x01\xa1a\xa1b\x03".to_vec());
        // Changed, an integer key's value still goes under the integer.
        changed.insert("1".into(), json!("z"));
        let written = encode(Serialization::Msgpack, &changed, false, Some(&decoded));
        assert_eq!(written, b"\x82\x01\xa1z\xa1b\x03".to_vec());
    }

    #[test]
    fn the_flag_decides_permanent_whatever_the_data_holds() {
        // A handler's own `_permanent` value cannot contradict the flag the
        // layer set the cookie's expiry by: read back, the session is as
        // permanent as the cookie says.
        for format in [Serialization::Msgpack, Serialization::Json] {
            for permanent in [true, false] {
                let data = data(json!({"_permanent": !permanent, "a": 1}));
                let decoded = decode(&encode(format, &data, permanent, None)).unwrap();
                assert_eq!(decoded.permanent, permanent, "{format:?}");
                assert_eq!(decoded.data, super::tests::data(json!({"a": 1})));
            }
        }
    }

    #[test]
    fn what_is_not_a_record_reads_as_none() {
        // A pickle (protocol 4 of {"a": 1}) is never loaded.
        assert_eq!(
            decode(b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s."),
            None
        );
        for bad in [
            &b""[..],
            b"\x81",
            b"\x81\xa1a",
            b"\x81\xa1a\x01\x01",
            b"\x91\x01",
            b"[1]",
            b"{\"a\":",
            b"\x81\xc0\x01",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
        // Deep nesting is refused, not a stack overflow.
        let mut deep = b"\x81\xa1a".to_vec();
        deep.extend(std::iter::repeat_n(0x91, 100_000));
        deep.push(0x01);
        assert_eq!(decode(&deep), None);
        let mut deep = br#"{"a":"#.to_vec();
        deep.extend(std::iter::repeat_n(b'[', 100_000));
        assert_eq!(decode(&deep), None);
    }
}
