//! Flask's session cookie, byte for byte: itsdangerous 2.x
//! `URLSafeTimedSerializer` with salt `cookie-session`, HMAC-SHA1 keys
//! derived by HMAC, zlib when it saves space, and Flask's tagged JSON.
//! Verified against Flask 3.1 and itsdangerous 2.2 by the interop tests.

mod json;
mod tag;

use std::cell::RefCell;
use std::io::Read;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flate2::read::ZlibDecoder;
use flate2::{Compress, Compression, FlushCompress, Status};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha1::Sha1;

pub(super) use tag::Tags;

use super::{Content, DecodeError, Decoded};
use crate::data::SessionData;
use crate::error::{Error, ErrorKind};
use crate::key::verifying;

type HmacSha1 = Hmac<Sha1>;

/// Flask's `SecureCookieSessionInterface.salt`.
const SALT: &[u8] = b"cookie-session";

/// The key Flask marks permanent sessions with.
const PERMANENT_KEY: &str = "_permanent";

/// The most a compressed payload may inflate to. Only authentic payloads
/// are inflated, but a cap costs nothing and bounds a key holder's mistake.
const MAX_INFLATED: u64 = 1 << 20;

/// Flask's session cookie format, so a Flask app and a Rust app sharing
/// `SECRET_KEY` read and write each other's sessions.
///
/// ```
/// use session_layer::codec::FlaskCodec;
/// let codec = FlaskCodec::new("the Flask app's SECRET_KEY").unwrap();
/// let mut data = serde_json::Map::new();
/// data.insert("user_id".into(), 42.into());
/// let cookie = codec.encode(&data, false, 1_700_000_000);
/// // What Flask 3.1 writes for session["user_id"] = 42 at that time:
/// assert_eq!(cookie, "eyJ1c2VyX2lkIjo0Mn0.ZVPxAA.mL8c90GFLDa5amwGqnx4QxgB4vs");
/// ```
///
/// Differences from Flask, all on the safe side: a validly signed payload
/// that Flask would answer with a 500 (bad tagged JSON) is an empty session
/// here, as is a value in non-canonical base64 (padded, or with trailing
/// bits set), which itsdangerous reads but never writes; and cookies up to
/// 60 seconds in the future are accepted (clock skew between servers), where
/// itsdangerous refuses any.
///
/// The format does not bind the cookie name (Flask's does not), and signs
/// with HMAC-SHA1: fine for a MAC, but prefer the signed or private codec
/// once Flask no longer needs to read the sessions.
#[derive(Clone)]
pub struct FlaskCodec {
    /// Derived signing keys, current first.
    keys: Arc<[HmacSha1]>,
}

impl FlaskCodec {
    /// A codec signing with Flask's `SECRET_KEY` (as its UTF-8 bytes, the
    /// way Flask uses a `str` key).
    ///
    /// Flask keys are often shorter than the 32 bytes the other codecs
    /// require; a short one is accepted, with a `tracing` warning.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`] for an empty secret, with which Flask
    /// itself refuses to sign sessions.
    pub fn new(secret_key: impl AsRef<[u8]>) -> Result<Self, Error> {
        Ok(Self {
            keys: Arc::from([derive(secret_key.as_ref(), SALT)?]),
        })
    }

    /// Adds a key that still verifies, as Flask's `SECRET_KEY_FALLBACKS`;
    /// fallbacks are tried in the order added, after the current key.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`] for an empty secret.
    pub fn fallback(self, secret_key: impl AsRef<[u8]>) -> Result<Self, Error> {
        let mut keys = self.keys.to_vec();
        keys.push(derive(secret_key.as_ref(), SALT)?);
        Ok(Self {
            keys: Arc::from(keys),
        })
    }

    /// The cookie value Flask would write for `data` at `now`; a permanent
    /// session carries `"_permanent": true`, as in Flask.
    pub fn encode(&self, data: &SessionData, permanent: bool, now: u64) -> String {
        let content = Content::new(data, permanent, now);
        self.encode_tagged(&content, None)
    }

    /// `content` in Flask's format, each value with the Python type `tags`
    /// remembers for it while it is unchanged.
    pub(crate) fn encode_tagged(&self, content: &Content<'_>, tags: Option<&Tags>) -> String {
        let Content {
            data,
            permanent,
            now,
            ..
        } = *content;
        let mut tagged = tag::tag_session(data, tags);
        if permanent {
            tagged.insert(PERMANENT_KEY.to_owned(), Value::Bool(true));
        }
        let json = json::to_vec(&tagged);
        let mut value = String::with_capacity(json.len() * 4 / 3 + 48);
        let compressed = compress(&json);
        if compressed.len() < json.len() - 1 {
            value.push('.');
            URL_SAFE_NO_PAD.encode_string(&compressed, &mut value);
        } else {
            URL_SAFE_NO_PAD.encode_string(&json, &mut value);
        }
        value.push('.');
        let ts = now.to_be_bytes();
        let first = ts.iter().position(|&b| b != 0).unwrap_or(ts.len());
        URL_SAFE_NO_PAD.encode_string(&ts[first..], &mut value);
        let mut mac = self.keys[0].clone();
        mac.update(value.as_bytes());
        let signature = mac.finalize().into_bytes();
        value.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut value);
        value
    }

    /// Verifies and decodes a Flask session cookie, refusing one issued
    /// more than `max_age` seconds before `now` (Flask's
    /// `PERMANENT_SESSION_LIFETIME`, which it applies to every session).
    ///
    /// # Errors
    /// A [`DecodeError`] saying why the value was refused.
    pub fn decode(&self, value: &str, now: u64, max_age: u64) -> Result<Decoded, DecodeError> {
        let (signed, signature) = value.rsplit_once('.').ok_or(DecodeError::Malformed)?;
        let (payload, ts) = signed.rsplit_once('.').ok_or(DecodeError::Malformed)?;
        let signature = unbase64(signature)?;
        let by_fallback_key = verifying(&self.keys, |key| {
            let mut mac = key.clone();
            mac.update(signed.as_bytes());
            mac.verify_slice(&signature).is_ok()
        })
        .ok_or(DecodeError::BadSignature)?;
        let ts = unbase64(ts)?;
        if ts.len() > 8 {
            return Err(DecodeError::Malformed);
        }
        let issued_at = ts.iter().fold(0u64, |n, &b| n << 8 | u64::from(b));
        super::check_age(issued_at, now, max_age)?;
        let json = match payload.strip_prefix('.') {
            Some(compressed) => inflate(&unbase64(compressed)?)?,
            None => unbase64(payload)?,
        };
        let tagged: SessionData =
            serde_json::from_slice(&json).map_err(|_| DecodeError::Malformed)?;
        let (mut data, tags) = tag::untag_session(tagged).map_err(|_| DecodeError::Malformed)?;
        let permanent = data.remove(PERMANENT_KEY) == Some(Value::Bool(true));
        Ok(Decoded {
            data,
            permanent,
            issued_at,
            created_at: issued_at,
            by_fallback_key,
            memory: super::Memory { tags: Some(tags) },
        })
    }
}

/// Flask-Session's `SESSION_USE_SIGNER` salt.
#[cfg(feature = "flask-session")]
const ID_SALT: &[u8] = b"flask-session";

/// How Flask-Session's cookie carries the session id: as it is (its
/// default), or signed by itsdangerous with the Flask `SECRET_KEY`
/// (`SESSION_USE_SIGNER = True`). Either way the id is the 43 characters
/// `secrets.token_urlsafe(32)` gives (`SESSION_ID_LENGTH = 32`, the
/// default), and a cookie of any other shape is refused before any I/O.
///
/// ```
/// use session_layer::codec::FlaskSessionIds;
/// let ids = FlaskSessionIds::signed("the Flask app's SECRET_KEY").unwrap();
/// let id = "wQZ1yu7sOyzUA0mUCWU8SGHd5PyGb2DMwWbsoYdo_SA";
/// let cookie = ids.encode(id);
/// assert_eq!(ids.decode(&cookie), Some(id));
/// assert_eq!(FlaskSessionIds::unsigned().encode(id), id);
/// ```
///
/// The unsigned form is a bearer token like any session id: 256 random
/// bits, unguessable. The signer adds nothing to that (Flask-Session
/// deprecates it), but a deployment that has it on needs it here too.
#[cfg(feature = "flask-session")]
#[derive(Clone)]
pub struct FlaskSessionIds {
    signer: Option<HmacSha1>,
}

#[cfg(feature = "flask-session")]
impl std::fmt::Debug for FlaskSessionIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlaskSessionIds")
            .field("signed", &self.signer.is_some())
            .finish()
    }
}

#[cfg(feature = "flask-session")]
impl FlaskSessionIds {
    /// The raw id, Flask-Session's default.
    pub fn unsigned() -> Self {
        Self { signer: None }
    }

    /// The id signed with Flask's `SECRET_KEY` (as its UTF-8 bytes), as
    /// `SESSION_USE_SIGNER = True` does: itsdangerous `Signer`, salt
    /// `flask-session`, HMAC-SHA1 keys derived by HMAC.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`] for an empty secret.
    pub fn signed(secret_key: impl AsRef<[u8]>) -> Result<Self, Error> {
        Ok(Self {
            signer: Some(derive(secret_key.as_ref(), ID_SALT)?),
        })
    }

    /// The cookie value carrying `id`.
    pub fn encode(&self, id: &str) -> String {
        let Some(key) = &self.signer else {
            return id.to_owned();
        };
        let mut mac = key.clone();
        mac.update(id.as_bytes());
        let mut value = String::with_capacity(id.len() + 28);
        value.push_str(id);
        value.push('.');
        URL_SAFE_NO_PAD.encode_string(mac.finalize().into_bytes(), &mut value);
        value
    }

    /// The id a cookie value carries, if it is signed right (checked in
    /// constant time) or unsigned ids are in use; its shape is the
    /// caller's to check.
    pub fn decode<'v>(&self, value: &'v str) -> Option<&'v str> {
        let Some(key) = &self.signer else {
            return Some(value);
        };
        let (id, signature) = value.rsplit_once('.')?;
        let signature = unbase64(signature).ok()?;
        let mut mac = key.clone();
        mac.update(id.as_bytes());
        mac.verify_slice(&signature).ok()?;
        Some(id)
    }
}

/// One part of the cookie, in the unpadded base64url itsdangerous writes
/// (and the other codecs use). itsdangerous also reads padded parts and ones
/// with trailing bits set, which it never writes; refusing them gives each
/// cookie exactly one spelling.
fn unbase64(part: &str) -> Result<Vec<u8>, DecodeError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| DecodeError::Encoding)
}

/// itsdangerous' `key_derivation="hmac"`: HMAC-SHA1(secret, salt).
fn derive(secret: &[u8], salt: &[u8]) -> Result<HmacSha1, Error> {
    if secret.is_empty() {
        return Err(Error::with_message(
            ErrorKind::InvalidKey,
            "the Flask secret key is empty",
        ));
    }
    if secret.len() < crate::MIN_KEY_LEN {
        tracing::warn!(
            length = secret.len(),
            "the Flask secret key is shorter than 32 bytes; use a longer one once Flask allows"
        );
    }
    let mut mac = HmacSha1::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(salt);
    let key = mac.finalize().into_bytes();
    Ok(HmacSha1::new_from_slice(&key).expect("HMAC takes keys of any length"))
}

/// `zlib.compress(data)`: zlib format at the default level 6.
///
/// zlib's compressor state is a quarter of a megabyte to allocate and
/// initialise, which cost more than all the rest of a write; each thread
/// keeps one and resets it (the output is the same as a fresh one's).
fn compress(data: &[u8]) -> Vec<u8> {
    thread_local! {
        static DEFLATE: RefCell<Compress> = RefCell::new(Compress::new(Compression::new(6), true));
    }
    DEFLATE.with_borrow_mut(|deflate| {
        deflate.reset();
        // zlib's worst case (compressBound) plus room for the header.
        let mut out = Vec::with_capacity(data.len() + data.len() / 1000 + 64);
        loop {
            let consumed = usize::try_from(deflate.total_in()).expect("fits in memory");
            let status = deflate
                .compress_vec(&data[consumed..], &mut out, FlushCompress::Finish)
                .expect("deflate of in-memory bytes cannot fail");
            if status == Status::StreamEnd {
                return out;
            }
            out.reserve(out.capacity().max(64));
        }
    })
}

fn inflate(data: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    ZlibDecoder::new(data)
        .take(MAX_INFLATED + 1)
        .read_to_end(&mut out)
        .map_err(|_| DecodeError::Malformed)?;
    if out.len() as u64 > MAX_INFLATED {
        return Err(DecodeError::TooLarge);
    }
    Ok(out)
}

impl std::fmt::Debug for FlaskCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FlaskCodec(REDACTED, {} keys)", self.keys.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;

    fn codec() -> FlaskCodec {
        FlaskCodec::new("dev").unwrap()
    }

    fn data(value: Value) -> SessionData {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn round_trips_with_and_without_compression() {
        for value in [
            json!({"a": 1}),
            json!({"long": "x".repeat(500), "n": [1, 2, 3]}),
        ] {
            let cookie = codec().encode(&data(value.clone()), true, NOW);
            let decoded = codec().decode(&cookie, NOW, 3600).unwrap();
            assert_eq!(Value::Object(decoded.data), value);
            assert!(decoded.permanent);
        }
        let long = codec().encode(&data(json!({"long": "x".repeat(500)})), false, NOW);
        assert!(long.starts_with('.'), "compressed: {long}");
    }

    #[test]
    fn fallbacks_verify_and_the_current_key_signs() {
        let old = FlaskCodec::new("old secret").unwrap();
        let cookie = old.encode(&data(json!({"a": 1})), false, NOW);
        let rotated = FlaskCodec::new("new secret")
            .unwrap()
            .fallback("old secret")
            .unwrap();
        assert!(rotated.decode(&cookie, NOW, 60).unwrap().by_fallback_key);
        let fresh = rotated.encode(&data(json!({"a": 1})), false, NOW);
        assert!(old.decode(&fresh, NOW, 60).is_err());
    }

    #[test]
    fn expired_future_and_forged_cookies_are_refused() {
        let cookie = codec().encode(&data(json!({"a": 1})), false, NOW);
        assert_eq!(
            codec().decode(&cookie, NOW + 61, 60).unwrap_err(),
            DecodeError::Expired
        );
        assert_eq!(
            codec().decode(&cookie, NOW - 61, 60).unwrap_err(),
            DecodeError::FromTheFuture
        );
        let forged = cookie.replacen("eyJ", "eyK", 1);
        assert_eq!(
            codec().decode(&forged, NOW, 60).unwrap_err(),
            DecodeError::BadSignature
        );
        for bad in ["", ".", "..", "a.b", "a.b.c", "...", &"x".repeat(5000)] {
            assert!(codec().decode(bad, NOW, 60).is_err(), "{bad}");
        }
    }

    /// `unsigned` with the signature the test key gives it.
    fn sign(unsigned: &str) -> String {
        let mut mac = codec().keys[0].clone();
        mac.update(unsigned.as_bytes());
        format!(
            "{unsigned}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    #[test]
    fn only_canonical_base64_is_accepted() {
        use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
        // What itsdangerous reads: padding and trailing bits are ignored.
        let lenient = GeneralPurpose::new(
            &base64::alphabet::URL_SAFE,
            GeneralPurposeConfig::new()
                .with_decode_padding_mode(DecodePaddingMode::Indifferent)
                .with_decode_allow_trailing_bits(true),
        );
        let genuine = codec().encode(&data(json!({"a": 1})), false, NOW);
        assert!(codec().decode(&genuine, NOW, 60).is_ok());
        let (unsigned, signature) = genuine.rsplit_once('.').unwrap();

        // A 20-byte signature leaves 2 bits unused in its last character;
        // setting one names the same bytes.
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let last = alphabet
            .iter()
            .position(|&c| Some(&c) == signature.as_bytes().last())
            .unwrap();
        assert_eq!(last & 0b11, 0, "written canonical");
        let trailing_bits = format!(
            "{}{}",
            &signature[..signature.len() - 1],
            char::from(alphabet[last | 1])
        );
        for other in [trailing_bits, format!("{signature}=")] {
            assert_eq!(
                lenient.decode(&other).unwrap(),
                lenient.decode(signature).unwrap(),
                "{other} names the same bytes"
            );
            assert_eq!(
                codec()
                    .decode(&format!("{unsigned}.{other}"), NOW, 60)
                    .unwrap_err(),
                DecodeError::Encoding,
                "{other}"
            );
        }

        // The signed parts too, even signed with the key.
        let (payload, ts) = unsigned.rsplit_once('.').unwrap();
        for unsigned in [format!("{payload}=.{ts}"), format!("{payload}.{ts}==")] {
            assert_eq!(
                codec().decode(&sign(&unsigned), NOW, 60).unwrap_err(),
                DecodeError::Encoding,
                "{unsigned}"
            );
        }
    }

    #[test]
    fn a_zip_bomb_signed_with_the_key_is_refused() {
        let json = format!("{{\"a\":\"{}\"}}", "x".repeat(2 << 20));
        let compressed = compress(json.as_bytes());
        let mut value = format!(
            ".{}.{}",
            URL_SAFE_NO_PAD.encode(compressed),
            URL_SAFE_NO_PAD.encode([1u8])
        );
        let mut mac = codec().keys[0].clone();
        mac.update(value.as_bytes());
        value = format!(
            "{value}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(
            codec().decode(&value, 1, u64::MAX).unwrap_err(),
            DecodeError::TooLarge
        );
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::btree_map("( t| b| u| d| m| di|\\PC{0,6})", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Any JSON session, tag look-alike keys included, comes back as
        /// it went in, compressed or not.
        #[test]
        fn encode_then_decode_is_identity(
            map in proptest::collection::btree_map("\\PC{1,8}", json_value(), 0..6),
            permanent in proptest::prelude::any::<bool>(),
        ) {
            let data: SessionData = map.into_iter().filter(|(k, _)| k != PERMANENT_KEY).collect();
            let cookie = codec().encode(&data, permanent, NOW);
            let decoded = codec().decode(&cookie, NOW, 60).unwrap();
            proptest::prop_assert_eq!(decoded.data, data);
            proptest::prop_assert_eq!(decoded.permanent, permanent);
        }
    }

    #[test]
    fn empty_secrets_are_refused_and_debug_redacts() {
        assert_eq!(
            FlaskCodec::new("").unwrap_err().kind(),
            ErrorKind::InvalidKey
        );
        let text = format!("{:?}", FlaskCodec::new("hunter2").unwrap());
        assert!(text.contains("REDACTED") && !text.contains("hunter2"));
    }
}
