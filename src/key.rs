//! Secret keys, the keyring that rotates them, and the per-purpose keys
//! derived from each.

use std::fmt;
use std::sync::Arc;

use chacha20poly1305::XChaCha20Poly1305;
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit};
use sha2::Sha256;

use crate::error::{Error, ErrorKind};

/// HMAC-SHA256 keyed once per key; cloning the keyed state per request skips
/// the key schedule (two SHA-256 blocks) on the hot path.
pub(crate) type HmacSha256 = Hmac<Sha256>;

/// The shortest secret accepted: 256 bits, the strength of HMAC-SHA256.
pub const MIN_KEY_LEN: usize = 32;

/// HKDF salt: fixed, so the same secret always derives the same keys, and
/// specific to this crate, so its keys never equal another library's
/// derived from the same secret.
const HKDF_SALT: &[u8] = b"session-layer";

/// A secret key. Every cryptographic key the layer uses is derived from it
/// with HKDF-SHA256 and a distinct purpose label, so a cookie signature can
/// never be replayed as, say, a session-id signature.
///
/// `Debug` prints `Key(REDACTED)`; the secret is never logged.
#[derive(Clone)]
pub struct Key {
    inner: Arc<KeyInner>,
}

struct KeyInner {
    signing: HmacSha256,
    encryption: XChaCha20Poly1305,
    id_signing: HmacSha256,
    /// Session handles: the id encrypted under a nonce derived from it.
    handle_encryption: XChaCha20Poly1305,
    handle_nonce: HmacSha256,
}

impl Key {
    /// A key from secret bytes (at least [`MIN_KEY_LEN`] of them).
    ///
    /// Use the raw bytes of a long random string, e.g. the output of
    /// `openssl rand -base64 48`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`] when `secret` is shorter than 32 bytes.
    pub fn from_bytes(secret: &[u8]) -> Result<Self, Error> {
        if secret.len() < MIN_KEY_LEN {
            return Err(Error::with_message(
                ErrorKind::InvalidKey,
                format!(
                    "the secret is {} bytes long; at least {MIN_KEY_LEN} are required",
                    secret.len()
                ),
            ));
        }
        let hkdf = Hkdf::<Sha256>::new(Some(HKDF_SALT), secret);
        let signing = derive_mac(&hkdf, b"signed-cookie v1");
        let encryption = XChaCha20Poly1305::new(&derive(&hkdf, b"private-cookie v1").into());
        let id_signing = derive_mac(&hkdf, b"session-id v1");
        let handle_encryption = XChaCha20Poly1305::new(&derive(&hkdf, b"session-handle v1").into());
        let handle_nonce = derive_mac(&hkdf, b"session-handle-nonce v1");
        Ok(Self {
            inner: Arc::new(KeyInner {
                signing,
                encryption,
                id_signing,
                handle_encryption,
                handle_nonce,
            }),
        })
    }

    /// A key from the bytes of the environment variable `name`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`] when the variable is unset, not UTF-8, or
    /// shorter than 32 bytes. The message names the variable, never its value.
    pub fn from_env(name: &str) -> Result<Self, Error> {
        let value = std::env::var(name).map_err(|e| {
            Error::with_message(
                ErrorKind::InvalidKey,
                format!("environment variable {name}: {e}"),
            )
        })?;
        Self::from_bytes(value.as_bytes()).map_err(|e| {
            Error::with_message(
                ErrorKind::InvalidKey,
                format!("environment variable {name}: {e}"),
            )
        })
    }

    /// A fresh random 64-byte key from the operating system's CSPRNG.
    ///
    /// Sessions signed with it do not survive a restart; use it for tests
    /// and local development, and a configured key in production.
    ///
    /// # Panics
    /// When the operating system cannot provide random bytes, which leaves
    /// no safe way to continue.
    pub fn generate() -> Self {
        let mut secret = [0u8; 64];
        getrandom::fill(&mut secret).expect("the OS random number generator failed");
        Self::from_bytes(&secret).expect("64 bytes is a valid key length")
    }

    pub(crate) fn signing(&self) -> &HmacSha256 {
        &self.inner.signing
    }

    pub(crate) fn encryption(&self) -> &XChaCha20Poly1305 {
        &self.inner.encryption
    }

    pub(crate) fn id_signing(&self) -> &HmacSha256 {
        &self.inner.id_signing
    }

    pub(crate) fn handle_encryption(&self) -> &XChaCha20Poly1305 {
        &self.inner.handle_encryption
    }

    pub(crate) fn handle_nonce(&self) -> &HmacSha256 {
        &self.inner.handle_nonce
    }
}

/// The 32-byte key for `purpose`.
fn derive(hkdf: &Hkdf<Sha256>, purpose: &[u8]) -> [u8; 32] {
    let mut okm = [0u8; 32];
    hkdf.expand(purpose, &mut okm)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    okm
}

fn derive_mac(hkdf: &Hkdf<Sha256>, purpose: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(&derive(hkdf, purpose)).expect("HMAC takes keys of any length")
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(REDACTED)")
    }
}

/// One current key that signs, plus fallback keys that still verify.
///
/// To rotate: make the new key current and the old one a fallback. Cookies
/// signed with a fallback keep working and are re-signed with the current
/// key on the next response that touches the session; once every live
/// session has been re-signed (at most the session lifetime), drop the
/// fallback.
///
/// ```
/// use session_layer::{Key, Keyring};
/// let old = Key::generate();
/// let new = Key::generate();
/// let ring = Keyring::new(new).fallback(old);
/// assert_eq!(ring.len(), 2);
/// ```
#[derive(Clone)]
pub struct Keyring {
    keys: Arc<[Key]>,
}

/// The first of `keys` (the current one first) for which `verifies` holds:
/// `Some(true)` when it was a fallback key. Every decoder that tries a
/// keyring (the codecs, signed ids) asks it the same way.
pub(crate) fn verifying<K>(keys: &[K], verifies: impl FnMut(&K) -> bool) -> Option<bool> {
    keys.iter().position(verifies).map(|index| index > 0)
}

impl Keyring {
    /// A keyring whose only key is `current`.
    pub fn new(current: Key) -> Self {
        Self {
            keys: Arc::from([current]),
        }
    }

    /// Adds a fallback key, tried after the current key and after the
    /// fallbacks added before it.
    #[must_use]
    pub fn fallback(self, key: Key) -> Self {
        let mut keys = self.keys.to_vec();
        keys.push(key);
        Self {
            keys: Arc::from(keys),
        }
    }

    /// The key that signs.
    pub fn current(&self) -> &Key {
        &self.keys[0]
    }

    /// Which key verifies a value, tried current first: `Some(false)` for
    /// the current key, `Some(true)` for a fallback (the caller re-signs),
    /// `None` for none.
    pub(crate) fn verify(&self, verifies: impl FnMut(&Key) -> bool) -> Option<bool> {
        verifying(&self.keys, verifies)
    }

    /// How many keys, current and fallbacks.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a keyring holds at least its current key.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl From<Key> for Keyring {
    fn from(key: Key) -> Self {
        Self::new(key)
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keyring(REDACTED, {} keys)", self.keys.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::Mac;

    #[test]
    fn short_keys_are_refused() {
        let err = Key::from_bytes(&[7; 31]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidKey);
        assert!(err.to_string().contains("31 bytes"), "{err}");
        assert!(Key::from_bytes(&[7; 32]).is_ok());
    }

    #[test]
    fn from_env_names_the_variable_not_the_value() {
        let err = Key::from_env("SESSION_LAYER_TEST_UNSET_VARIABLE").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidKey);
        assert!(
            err.to_string()
                .contains("SESSION_LAYER_TEST_UNSET_VARIABLE")
        );
    }

    #[test]
    fn debug_never_prints_key_material() {
        let secret = b"a-secret-that-must-never-be-printed-anywhere";
        let key = Key::from_bytes(secret).unwrap();
        let ring = Keyring::new(key.clone()).fallback(Key::generate());
        for text in [format!("{key:?}"), format!("{ring:?}"), format!("{key:#?}")] {
            assert!(text.contains("REDACTED"), "{text}");
            assert!(!text.contains("secret"), "{text}");
        }
    }

    #[test]
    fn same_secret_derives_the_same_key_and_others_differ() {
        let tag = |key: &Key| {
            let mut mac = key.signing().clone();
            mac.update(b"message");
            mac.finalize().into_bytes()
        };
        let a = Key::from_bytes(&[1; 32]).unwrap();
        let b = Key::from_bytes(&[1; 32]).unwrap();
        let c = Key::from_bytes(&[2; 32]).unwrap();
        assert_eq!(tag(&a), tag(&b));
        assert_ne!(tag(&a), tag(&c));
        assert_ne!(tag(&Key::generate()), tag(&Key::generate()));
    }

    #[test]
    fn keyring_tries_current_first() {
        let current = Key::from_bytes(&[1; 32]).unwrap();
        let ring = Keyring::new(current).fallback(Key::from_bytes(&[2; 32]).unwrap());
        assert_eq!(ring.len(), 2);
        assert!(Arc::ptr_eq(&ring.current().inner, &ring.keys[0].inner));
    }
}
