//! The default cookie format: JSON, an issue time and flags, authenticated
//! with HMAC-SHA256. The byte layout is specified in `docs/cookie-format.md`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::Mac;

use super::{CONTENT_HEADER_LEN, Content, DecodeError, Decoded, read_content};
use crate::data::SessionData;
use crate::key::{HmacSha256, Keyring};

/// Envelope version 1; a new layout gets a new number, and this one stays
/// readable so that a format change never logs everyone out.
const VERSION: u8 = 1;
const TAG_LEN: usize = 32;
/// version + issued-at + flags.
const HEADER_LEN: usize = 1 + CONTENT_HEADER_LEN;

/// Signed cookies: readable by the client (the JSON is only base64url'd)
/// but not forgeable without the key. The MAC covers the cookie name, so a
/// value cannot be moved to another cookie, and the issue time, so the
/// server enforces the maximum age whatever the browser keeps.
///
/// ```
/// use session_layer::{Key, codec::SignedCodec};
/// let codec = SignedCodec::new(Key::generate().into());
/// let mut data = serde_json::Map::new();
/// data.insert("user".into(), 42.into());
/// let value = codec.encode("session", &data, false, 1_700_000_000);
/// let decoded = codec.decode("session", &value, 1_700_000_010, 3600).unwrap();
/// assert_eq!(decoded.data, data);
/// assert!(codec.decode("other", &value, 1_700_000_010, 3600).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct SignedCodec {
    keys: Keyring,
}

impl SignedCodec {
    /// A codec that signs with the current key of `keys` and verifies with
    /// any of them.
    pub fn new(keys: Keyring) -> Self {
        Self { keys }
    }

    /// Encodes `data` as the value of the cookie `name`, issued at `now`
    /// (seconds since the Unix epoch).
    pub fn encode(&self, name: &str, data: &SessionData, permanent: bool, now: u64) -> String {
        let content = Content::new(data, permanent, now);
        self.seal(name, &content)
    }

    /// The envelope around `content`, for the cookie `name`.
    pub(crate) fn seal(&self, name: &str, content: &Content<'_>) -> String {
        let mut bytes = Vec::with_capacity(HEADER_LEN + 64 + TAG_LEN);
        bytes.push(VERSION);
        content.write(&mut bytes);
        let tag = mac(self.keys.current().signing(), name, &bytes).finalize();
        bytes.extend_from_slice(&tag.into_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Verifies and decodes the value of the cookie `name`, refusing one
    /// issued more than `max_age` seconds before `now` or dated in the
    /// future beyond a small clock skew.
    ///
    /// # Errors
    /// A [`DecodeError`] saying why the value was refused; the layer treats
    /// every one of them as "no session".
    pub fn decode(
        &self,
        name: &str,
        value: &str,
        now: u64,
        max_age: u64,
    ) -> Result<Decoded, DecodeError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|_| DecodeError::Encoding)?;
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(DecodeError::Truncated);
        }
        let (body, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        if body[0] != VERSION {
            return Err(DecodeError::UnknownVersion);
        }
        let by_fallback_key = self
            .keys
            .verify(|key| mac(key.signing(), name, body).verify_slice(tag).is_ok())
            .ok_or(DecodeError::BadSignature)?;
        read_content(&body[1..], now, max_age, by_fallback_key)
    }
}

/// The MAC input is the length-prefixed cookie name followed by the body,
/// so no (name, body) pair can collide with another.
fn mac(key: &HmacSha256, name: &str, body: &[u8]) -> HmacSha256 {
    let mut mac = key.clone();
    let name_len = u32::try_from(name.len()).unwrap_or(u32::MAX);
    mac.update(&name_len.to_be_bytes());
    mac.update(name.as_bytes());
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Key;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;
    const DAY: u64 = 86_400;

    fn codec(secret: u8) -> SignedCodec {
        SignedCodec::new(Key::from_bytes(&[secret; 32]).unwrap().into())
    }

    fn data() -> SessionData {
        json!({"user": 42, "name": "zoë", "cart": [1, 2, 3]})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn round_trips() {
        let value = codec(1).encode("session", &data(), true, NOW);
        let decoded = codec(1).decode("session", &value, NOW + 5, DAY).unwrap();
        assert_eq!(decoded.data, data());
        assert!(decoded.permanent);
        assert_eq!(decoded.issued_at, NOW);
        assert!(!decoded.by_fallback_key);
    }

    #[test]
    fn value_is_cookie_safe() {
        let value = codec(1).encode("session", &data(), false, NOW);
        assert!(
            value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{value}"
        );
    }

    #[test]
    fn wrong_key_and_wrong_name_are_refused() {
        let value = codec(1).encode("session", &data(), false, NOW);
        assert_eq!(
            codec(2).decode("session", &value, NOW, DAY).unwrap_err(),
            DecodeError::BadSignature
        );
        assert_eq!(
            codec(1).decode("other", &value, NOW, DAY).unwrap_err(),
            DecodeError::BadSignature
        );
    }

    #[test]
    fn fallback_keys_verify_and_say_so() {
        let old = Key::from_bytes(&[1; 32]).unwrap();
        let new = Key::from_bytes(&[2; 32]).unwrap();
        let value = SignedCodec::new(old.clone().into()).encode("session", &data(), false, NOW);
        let ring = SignedCodec::new(Keyring::new(new).fallback(old));
        let decoded = ring.decode("session", &value, NOW, DAY).unwrap();
        assert!(decoded.by_fallback_key);
        assert_eq!(decoded.data, data());
    }

    #[test]
    fn age_is_enforced_from_the_signed_time() {
        let value = codec(1).encode("session", &data(), false, NOW);
        assert!(codec(1).decode("session", &value, NOW + DAY, DAY).is_ok());
        assert_eq!(
            codec(1)
                .decode("session", &value, NOW + DAY + 1, DAY)
                .unwrap_err(),
            DecodeError::Expired
        );
        assert!(codec(1).decode("session", &value, NOW - 60, DAY).is_ok());
        assert_eq!(
            codec(1)
                .decode("session", &value, NOW - 61, DAY)
                .unwrap_err(),
            DecodeError::FromTheFuture
        );
    }

    #[test]
    fn every_single_byte_change_is_refused() {
        let value = codec(1).encode("session", &data(), false, NOW);
        let mut bytes = URL_SAFE_NO_PAD.decode(&value).unwrap();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                bytes[i] ^= 1 << bit;
                let forged = URL_SAFE_NO_PAD.encode(&bytes);
                assert!(
                    codec(1).decode("session", &forged, NOW, DAY).is_err(),
                    "byte {i} bit {bit}"
                );
                bytes[i] ^= 1 << bit;
            }
        }
    }

    #[test]
    fn truncated_and_garbage_values_are_refused() {
        let value = codec(1).encode("session", &data(), false, NOW);
        for cut in [0, 1, 10, 42, value.len() / 2, value.len() - 1] {
            assert!(codec(1).decode("session", &value[..cut], NOW, DAY).is_err());
        }
        for garbage in ["", "!!!!", "a", "====", "é", "YQ", &"A".repeat(5000)] {
            assert!(codec(1).decode("session", garbage, NOW, DAY).is_err());
        }
    }

    #[test]
    fn a_valid_mac_over_a_non_object_is_refused() {
        // Sign a body whose JSON is an array, as a buggy or hostile writer
        // holding the key might: the decoder must still refuse it cleanly.
        let key = Key::from_bytes(&[1; 32]).unwrap();
        let mut body = vec![VERSION];
        body.extend_from_slice(&NOW.to_be_bytes());
        body.push(0);
        body.extend_from_slice(b"[1,2]");
        let tag = mac(key.signing(), "session", &body).finalize().into_bytes();
        body.extend_from_slice(&tag);
        let value = URL_SAFE_NO_PAD.encode(body);
        assert_eq!(
            codec(1).decode("session", &value, NOW, DAY).unwrap_err(),
            DecodeError::Malformed
        );
    }
}
