//! Session ids: 256 random bits, and the signed cookie that carries one.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::Mac;

use crate::key::{HmacSha256, Keyring};

/// Random bytes in an id.
const ID_BYTES: usize = 32;
/// Characters of its base64url form.
const ID_LEN: usize = 43;
/// Bytes of the MAC the cookie carries after the id: 128 bits, beyond
/// any online guessing.
const TAG_BYTES: usize = 16;

/// A session id: 256 bits from the operating system's CSPRNG, written as
/// 43 characters of unpadded base64url.
///
/// An id can only be made by [`generate`](Self::generate) or by
/// [`parse`](Self::parse), which accepts exactly that shape, so a store
/// never builds a key or a file name from unchecked input. An id is a
/// bearer secret: `Debug` prints `SessionId(REDACTED)`, and there is no
/// `Display`, so it never lands in a log line by accident
/// ([`as_str`](Self::as_str) is the deliberate way to the text).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(Box<str>);

impl SessionId {
    /// A fresh random id.
    ///
    /// # Panics
    /// When the operating system cannot provide random bytes.
    pub fn generate() -> Self {
        let mut bytes = [0u8; ID_BYTES];
        getrandom::fill(&mut bytes).expect("the OS random number generator failed");
        Self(URL_SAFE_NO_PAD.encode(bytes).into())
    }

    /// The id written as `text`, if it has exactly the shape of one: 43
    /// characters of canonical unpadded base64url.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != ID_LEN
            || !text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
        // Canonical: the two unused trailing bits are zero, so one id has
        // exactly one spelling.
        URL_SAFE_NO_PAD.decode(text).ok()?;
        Some(Self(text.into()))
    }

    /// The id as text: safe as a key in any store and as a file name on a
    /// case-sensitive file system.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id's 32 bytes as 64 lowercase hex digits: safe as a file name
    /// on any file system, case-insensitive ones included.
    pub fn to_hex(&self) -> String {
        self.to_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The id whose [`to_hex`](Self::to_hex) is `hex`: 64 lowercase hex
    /// digits, nothing else (a store reading back a name it wrote).
    #[cfg(feature = "file-store")]
    pub(crate) fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 2 * ID_BYTES || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        let mut bytes = [0u8; ID_BYTES];
        for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Self(URL_SAFE_NO_PAD.encode(bytes).into()))
    }

    /// The id whose [`to_bytes`](Self::to_bytes) are `bytes` (a store
    /// that keeps ids in their compact form).
    #[cfg(feature = "memory-store")]
    pub(crate) fn from_bytes(bytes: [u8; ID_BYTES]) -> Self {
        Self(URL_SAFE_NO_PAD.encode(bytes).into())
    }

    /// The id's 32 bytes: a compact key for stores that hold ids in memory.
    pub(crate) fn to_bytes(&self) -> [u8; ID_BYTES] {
        URL_SAFE_NO_PAD
            .decode(&*self.0)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .expect("validated at construction")
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(REDACTED)")
    }
}

/// The cookie value carrying `id`: `id "." base64url(tag)`, the tag being
/// HMAC-SHA256 under the keyring's id key over the cookie name and the id,
/// cut to 128 bits; then `"." stamp` when the store stamps writes (the
/// stamp of the session's last write, a cache hint outside the tag: a
/// client that changes it only makes its own requests miss the cache).
pub(crate) fn sign(keys: &Keyring, name: &str, id: &SessionId, stamp: Option<&str>) -> String {
    let tag = tag(keys.current().id_signing(), name, id);
    let mut value = String::with_capacity(ID_LEN + 1 + 22 + 1 + STAMP_LEN);
    value.push_str(id.as_str());
    value.push('.');
    URL_SAFE_NO_PAD.encode_string(&tag[..TAG_BYTES], &mut value);
    if let Some(stamp) = stamp {
        value.push('.');
        value.push_str(stamp);
    }
    value
}

/// What a verified id cookie carries.
pub(crate) struct Verified {
    pub(crate) id: SessionId,
    /// Verified by a fallback key: the cookie is re-signed.
    pub(crate) by_fallback_key: bool,
    /// The stamp of the last write the client was answered for, if any
    /// (and well formed).
    pub(crate) stamp: Option<String>,
}

/// The id in a cookie value if its shape and tag are right (any key of
/// the keyring), checked in constant time.
pub(crate) fn verify(keys: &Keyring, name: &str, value: &[u8]) -> Option<Verified> {
    let value = std::str::from_utf8(value).ok()?;
    let (id, rest) = value.split_once('.')?;
    let (tag, stamp) = match rest.split_once('.') {
        Some((tag, stamp)) => (tag, is_stamp(stamp).then(|| stamp.to_owned())),
        None => (rest, None),
    };
    let id = SessionId::parse(id)?;
    let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
    if tag.len() != TAG_BYTES {
        return None;
    }
    let by_fallback_key = keys.verify(|key| {
        mac(key.id_signing(), name, &id)
            .verify_truncated_left(&tag)
            .is_ok()
    })?;
    Some(Verified {
        id,
        by_fallback_key,
        stamp,
    })
}

/// The bytes of a session handle: a 24-byte nonce, the id's 32 bytes
/// encrypted, a 16-byte tag.
const HANDLE_BYTES: usize = 24 + ID_BYTES + 16;

/// The public handle of the session `id` of the layer whose cookie is
/// `name`: the id encrypted (XChaCha20-Poly1305) under the current key,
/// with a nonce derived from the id (HMAC-SHA256, cut to 24 bytes), so one
/// id always gives one handle under one key; base64url, 96 characters. It names the session without being
/// usable as its cookie, and only this keyring can turn it back.
pub(crate) fn handle(keys: &Keyring, name: &str, id: &SessionId) -> String {
    use chacha20poly1305::aead::inout::InOutBuf;
    use chacha20poly1305::{AeadInOut, XNonce};
    let key = keys.current();
    let mut nonce_mac = key.handle_nonce().clone();
    nonce_mac.update(id.as_str().as_bytes());
    let derived = nonce_mac.finalize().into_bytes();
    let mut bytes = [0u8; HANDLE_BYTES];
    bytes[..24].copy_from_slice(&derived[..24]);
    bytes[24..24 + ID_BYTES].copy_from_slice(&id.to_bytes());
    let nonce = XNonce::try_from(&derived[..24]).expect("24 bytes");
    let tag = key
        .handle_encryption()
        .encrypt_inout_detached(
            &nonce,
            &handle_aad(name),
            InOutBuf::from(&mut bytes[24..24 + ID_BYTES]),
        )
        .expect("32 bytes are far below XChaCha20's message limit");
    bytes[24 + ID_BYTES..].copy_from_slice(&tag);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The id a handle names, if any key of the keyring made it.
pub(crate) fn from_handle(keys: &Keyring, name: &str, handle: &str) -> Option<SessionId> {
    use chacha20poly1305::aead::inout::InOutBuf;
    use chacha20poly1305::{AeadInOut, Tag, XNonce};
    if handle.len() != HANDLE_BYTES.div_ceil(3) * 4 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(handle).ok()?;
    let bytes: [u8; HANDLE_BYTES] = bytes.try_into().ok()?;
    let nonce = XNonce::try_from(&bytes[..24]).expect("24 bytes");
    let tag = Tag::try_from(&bytes[24 + ID_BYTES..]).expect("16 bytes");
    let mut id = [0u8; ID_BYTES];
    let aad = handle_aad(name);
    keys.verify(|key| {
        let buffer = InOutBuf::new(&bytes[24..24 + ID_BYTES], &mut id).expect("equal lengths");
        key.handle_encryption()
            .decrypt_inout_detached(&nonce, &aad, buffer, &tag)
            .is_ok()
    })?;
    SessionId::parse(&URL_SAFE_NO_PAD.encode(id))
}

/// Associated data of handles: a fixed label, so no other ciphertext
/// passes for one, and the cookie name, so a handle ends sessions of its
/// own layer only.
fn handle_aad(name: &str) -> Vec<u8> {
    let mut aad = b"session-layer handle v1 ".to_vec();
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// The length of a write stamp: 64 random bits in base64url.
const STAMP_LEN: usize = 11;

/// A fresh write stamp.
pub(crate) fn stamp() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    URL_SAFE_NO_PAD.encode(bytes)
}

fn is_stamp(text: &str) -> bool {
    text.len() == STAMP_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn tag(key: &HmacSha256, name: &str, id: &SessionId) -> [u8; 32] {
    mac(key, name, id).finalize().into_bytes().into()
}

/// The MAC over the length-prefixed cookie name and the id.
fn mac(key: &HmacSha256, name: &str, id: &SessionId) -> HmacSha256 {
    let mut mac = key.clone();
    mac.update(&u32::try_from(name.len()).unwrap_or(u32::MAX).to_be_bytes());
    mac.update(name.as_bytes());
    mac.update(id.as_str().as_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Key;

    fn keys(n: u8) -> Keyring {
        Key::from_bytes(&[n; 32]).unwrap().into()
    }

    #[test]
    fn ids_are_random_and_well_formed() {
        let a = SessionId::generate();
        let b = SessionId::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 43);
        assert_eq!(SessionId::parse(a.as_str()), Some(a.clone()));
        assert_eq!(a.to_hex().len(), 64);
        assert_eq!(format!("{a:?}"), "SessionId(REDACTED)");
    }

    #[test]
    fn hostile_ids_are_refused() {
        let good = SessionId::generate();
        let mut non_canonical = good.as_str().to_owned();
        non_canonical.pop();
        non_canonical.push('B'); // sets a trailing bit
        for bad in [
            "",
            "../../../../etc/passwd",
            "..%2F..%2F",
            &"a".repeat(42),
            &"a".repeat(44),
            &format!("{}/", &good.as_str()[..42]),
            &format!("{}\0", &good.as_str()[..42]),
            &format!("{}=", &good.as_str()[..42]),
            &format!("{}é", &good.as_str()[..41]),
            &non_canonical,
        ] {
            assert!(SessionId::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[cfg(feature = "file-store")]
    #[test]
    fn hex_names_read_back_as_the_id_and_nothing_else() {
        let id = SessionId::generate();
        assert_eq!(SessionId::from_hex(&id.to_hex()), Some(id.clone()));
        let upper = id.to_hex().to_uppercase();
        let hex = id.to_hex();
        for bad in [
            "",
            &hex[..62],
            &format!("{hex}0"),
            &upper,
            &format!("{}/.", &hex[..62]),
            &format!("{}+f", &hex[..62]),
        ] {
            assert!(SessionId::from_hex(bad).is_none(), "{bad:?}");
        }
    }

    /// The id and whether a fallback key verified it.
    fn verified(keys: &Keyring, name: &str, value: &[u8]) -> Option<(SessionId, bool)> {
        verify(keys, name, value).map(|v| (v.id, v.by_fallback_key))
    }

    #[test]
    fn signed_ids_verify_only_with_the_key_and_name() {
        let id = SessionId::generate();
        let value = sign(&keys(1), "session", &id, None);
        assert_eq!(
            verified(&keys(1), "session", value.as_bytes()),
            Some((id.clone(), false))
        );
        assert!(verify(&keys(2), "session", value.as_bytes()).is_none());
        assert!(verify(&keys(1), "other", value.as_bytes()).is_none());
        let rotated = Keyring::new(Key::from_bytes(&[2; 32]).unwrap())
            .fallback(Key::from_bytes(&[1; 32]).unwrap());
        assert_eq!(
            verified(&rotated, "session", value.as_bytes()),
            Some((id, true))
        );
    }

    #[test]
    fn a_stamp_rides_beside_the_tag_and_only_a_well_formed_one_counts() {
        let id = SessionId::generate();
        let stamp = stamp();
        assert_eq!(stamp.len(), STAMP_LEN);
        let value = sign(&keys(1), "session", &id, Some(&stamp));
        let got = verify(&keys(1), "session", value.as_bytes()).unwrap();
        assert_eq!((got.id, got.stamp), (id.clone(), Some(stamp.clone())));
        // A changed stamp is only a hint gone wrong: the id still verifies.
        let plain = sign(&keys(1), "session", &id, None);
        for bad in ["", "short", "a.b.c.d.e.f", "!!!!!!!!!!!", "AAAAAAAAAAAA"] {
            let value = format!("{plain}.{bad}");
            let got = verify(&keys(1), "session", value.as_bytes());
            assert_eq!(
                got.map(|v| (v.id, v.stamp)),
                Some((id.clone(), None)),
                "{bad:?}"
            );
        }
        // The tag still covers the id.
        let forged = value.replacen(&id.as_str()[..1], "A", 1);
        if forged != value {
            assert!(verify(&keys(1), "session", forged.as_bytes()).is_none());
        }
    }

    #[test]
    fn a_handle_names_one_id_and_only_its_keyring_reads_it() {
        let id = SessionId::generate();
        let handle = handle(&keys(1), "session", &id);
        assert_eq!(handle.len(), 96);
        assert_eq!(handle, super::handle(&keys(1), "session", &id), "stable");
        assert_ne!(
            handle,
            super::handle(&keys(1), "session", &SessionId::generate())
        );
        assert!(!handle.contains(id.as_str()), "the id does not show");
        assert_eq!(from_handle(&keys(1), "session", &handle), Some(id.clone()));
        assert_eq!(
            from_handle(&keys(2), "session", &handle),
            None,
            "another key"
        );
        assert_eq!(
            from_handle(&keys(1), "other", &handle),
            None,
            "another layer"
        );
        let rotated = Keyring::new(Key::from_bytes(&[2; 32]).unwrap())
            .fallback(Key::from_bytes(&[1; 32]).unwrap());
        assert_eq!(
            from_handle(&rotated, "session", &handle),
            Some(id.clone()),
            "a fallback key"
        );
        // A handle is no cookie, and a cookie is no handle.
        let cookie = sign(&keys(1), "session", &id, None);
        assert!(verify(&keys(1), "session", handle.as_bytes()).is_none());
        assert_eq!(from_handle(&keys(1), "session", &cookie), None);
        for i in 0..handle.len() {
            let mut bad = handle.clone().into_bytes();
            bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
            let bad = String::from_utf8(bad).unwrap();
            assert_eq!(from_handle(&keys(1), "session", &bad), None, "position {i}");
        }
        for bad in [
            "",
            "x",
            &handle[..95],
            &format!("{handle}A"),
            &"é".repeat(48),
        ] {
            assert_eq!(from_handle(&keys(1), "session", bad), None, "{bad:?}");
        }
    }

    #[test]
    fn any_change_to_the_cookie_is_refused() {
        let id = SessionId::generate();
        let value = sign(&keys(1), "session", &id, None);
        for i in 0..value.len() {
            let mut bytes = value.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            if bytes == value.as_bytes() {
                continue;
            }
            assert!(
                verify(&keys(1), "session", &bytes).is_none(),
                "position {i}"
            );
        }
        for bad in [
            "",
            ".",
            "x.y",
            &value[..value.len() - 1],
            &format!("{value}A"),
        ] {
            assert!(
                verify(&keys(1), "session", bad.as_bytes()).is_none(),
                "{bad}"
            );
        }
    }
}
