//! Private cookies: the session encrypted and authenticated with
//! XChaCha20-Poly1305, so the client can neither read nor change it. The
//! byte layout is specified in `docs/cookie-format.md`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::{AeadInOut, Tag, XNonce};

use super::{CONTENT_HEADER_LEN, Content, DecodeError, Decoded, read_content};
use crate::data::SessionData;
use crate::key::Keyring;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// issued-at + flags, at the start of the plaintext.
const INNER_HEADER_LEN: usize = CONTENT_HEADER_LEN;

/// Private cookies: like [`SignedCodec`](super::SignedCodec), but the
/// contents are encrypted, so the client cannot read them either.
///
/// Each write draws a fresh 192-bit nonce from the OS CSPRNG (safe at any
/// volume with XChaCha20's nonce size); the cookie name is associated data,
/// so a value cannot be moved to another cookie; the issue time is inside
/// the ciphertext and the maximum age is enforced from it.
///
/// ```
/// use session_layer::{Key, codec::PrivateCodec};
/// let codec = PrivateCodec::new(Key::generate().into());
/// let mut data = serde_json::Map::new();
/// data.insert("secret".into(), "only the server reads this".into());
/// let value = codec.encode("session", &data, false, 1_700_000_000);
/// assert!(!value.contains("secret"));
/// let decoded = codec.decode("session", &value, 1_700_000_001, 3600).unwrap();
/// assert_eq!(decoded.data, data);
/// ```
#[derive(Debug, Clone)]
pub struct PrivateCodec {
    keys: Keyring,
}

impl PrivateCodec {
    /// A codec that encrypts with the current key of `keys` and decrypts
    /// with any of them.
    pub fn new(keys: Keyring) -> Self {
        Self { keys }
    }

    /// Encrypts `data` as the value of the cookie `name`, issued at `now`.
    ///
    /// # Panics
    /// When the operating system cannot provide random bytes for the
    /// nonce: writing without a fresh nonce would be unsafe.
    pub fn encode(&self, name: &str, data: &SessionData, permanent: bool, now: u64) -> String {
        let content = Content::new(data, permanent, now);
        self.seal(name, &content)
    }

    /// The envelope around `content`, for the cookie `name`.
    pub(crate) fn seal(&self, name: &str, content: &Content<'_>) -> String {
        let mut bytes = Vec::with_capacity(1 + NONCE_LEN + INNER_HEADER_LEN + 64 + TAG_LEN);
        bytes.push(VERSION);
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the OS random number generator failed");
        bytes.extend_from_slice(&nonce);
        let plaintext_start = bytes.len();
        content.write(&mut bytes);
        let tag = self
            .keys
            .current()
            .encryption()
            .encrypt_inout_detached(
                &XNonce::from(nonce),
                &associated_data(name),
                InOutBuf::from(&mut bytes[plaintext_start..]),
            )
            .expect("session cookies are far below XChaCha20's message limit");
        bytes.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Decrypts and checks the value of the cookie `name`.
    ///
    /// # Errors
    /// A [`DecodeError`] saying why the value was refused; the layer treats
    /// every one as "no session".
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
        if bytes.len() < 1 + NONCE_LEN + INNER_HEADER_LEN + TAG_LEN {
            return Err(DecodeError::Truncated);
        }
        if bytes[0] != VERSION {
            return Err(DecodeError::UnknownVersion);
        }
        let nonce = XNonce::try_from(&bytes[1..1 + NONCE_LEN]).expect("24 bytes");
        let (ciphertext, tag) =
            bytes[1 + NONCE_LEN..].split_at(bytes.len() - 1 - NONCE_LEN - TAG_LEN);
        let tag = Tag::try_from(tag).expect("16 bytes");
        let aad = associated_data(name);
        let mut plaintext = vec![0u8; ciphertext.len()];
        let by_fallback_key = self
            .keys
            .verify(|key| {
                let buffer = InOutBuf::new(ciphertext, &mut plaintext).expect("equal lengths");
                key.encryption()
                    .decrypt_inout_detached(&nonce, &aad, buffer, &tag)
                    .is_ok()
            })
            .ok_or(DecodeError::BadSignature)?;
        read_content(&plaintext, now, max_age, by_fallback_key)
    }
}

/// The cookie name, length-prefixed, and the envelope version: binds the
/// ciphertext to its cookie and its layout.
fn associated_data(name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(4 + name.len() + 1);
    aad.extend_from_slice(&u32::try_from(name.len()).unwrap_or(u32::MAX).to_be_bytes());
    aad.extend_from_slice(name.as_bytes());
    aad.push(VERSION);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Key;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;
    const DAY: u64 = 86_400;

    fn codec(secret: u8) -> PrivateCodec {
        PrivateCodec::new(Key::from_bytes(&[secret; 32]).unwrap().into())
    }

    fn data() -> SessionData {
        json!({"user": 42, "token": "s3cr3t-t0k3n"})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn round_trips_and_hides_the_contents() {
        let value = codec(1).encode("session", &data(), true, NOW);
        let raw = URL_SAFE_NO_PAD.decode(&value).unwrap();
        assert!(!raw.windows(12).any(|w| w == b"s3cr3t-t0k3n"));
        let decoded = codec(1).decode("session", &value, NOW, DAY).unwrap();
        assert_eq!(decoded.data, data());
        assert!(decoded.permanent);
        assert_eq!(decoded.issued_at, NOW);
    }

    #[test]
    fn every_write_uses_a_fresh_nonce() {
        let a = codec(1).encode("session", &data(), false, NOW);
        let b = codec(1).encode("session", &data(), false, NOW);
        assert_ne!(a, b);
        assert_ne!(a[..33], b[..33], "nonces differ");
    }

    #[test]
    fn wrong_key_name_or_signed_format_is_refused() {
        let value = codec(1).encode("session", &data(), false, NOW);
        assert_eq!(
            codec(2).decode("session", &value, NOW, DAY).unwrap_err(),
            DecodeError::BadSignature
        );
        assert_eq!(
            codec(1).decode("other", &value, NOW, DAY).unwrap_err(),
            DecodeError::BadSignature
        );
        let signed = super::super::SignedCodec::new(Key::from_bytes(&[1; 32]).unwrap().into())
            .encode("session", &data(), false, NOW);
        assert!(codec(1).decode("session", &signed, NOW, DAY).is_err());
    }

    #[test]
    fn fallback_keys_decrypt() {
        let old = Key::from_bytes(&[1; 32]).unwrap();
        let value = PrivateCodec::new(old.clone().into()).encode("session", &data(), false, NOW);
        let ring =
            PrivateCodec::new(Keyring::new(Key::from_bytes(&[2; 32]).unwrap()).fallback(old));
        let decoded = ring.decode("session", &value, NOW, DAY).unwrap();
        assert!(decoded.by_fallback_key);
    }

    #[test]
    fn age_is_enforced_from_the_encrypted_time() {
        let value = codec(1).encode("session", &data(), false, NOW);
        assert_eq!(
            codec(1)
                .decode("session", &value, NOW + DAY + 1, DAY)
                .unwrap_err(),
            DecodeError::Expired
        );
        assert_eq!(
            codec(1)
                .decode("session", &value, NOW - 61, DAY)
                .unwrap_err(),
            DecodeError::FromTheFuture
        );
    }

    #[test]
    fn every_single_bit_flip_is_refused() {
        let value = codec(1).encode("session", &data(), false, NOW);
        let mut bytes = URL_SAFE_NO_PAD.decode(&value).unwrap();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                bytes[i] ^= 1 << bit;
                let forged = URL_SAFE_NO_PAD.encode(&bytes);
                assert!(
                    codec(1).decode("session", &forged, NOW, DAY).is_err(),
                    "byte {i}"
                );
                bytes[i] ^= 1 << bit;
            }
        }
    }

    #[test]
    fn truncated_values_are_refused() {
        let value = codec(1).encode("session", &data(), false, NOW);
        for cut in 0..value.len() {
            assert!(codec(1).decode("session", &value[..cut], NOW, DAY).is_err());
        }
    }
}
