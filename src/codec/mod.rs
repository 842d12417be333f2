//! Cookie formats. Each codec turns a session's data into one cookie value
//! and back; it knows nothing of HTTP or stores.

#[cfg(feature = "flask")]
mod flask;
// Read and written by `FlaskSessionStore`, which needs a store's feature
// beside `flask-session` (the fuzz target builds it without one).
#[cfg(feature = "flask-session")]
#[cfg_attr(
    not(any(
        feature = "redis-store",
        feature = "memcached-store",
        feature = "postgres-store",
        feature = "mysql-store",
        feature = "sqlite-store",
        feature = "mongodb-store"
    )),
    allow(dead_code, unreachable_pub)
)]
pub(crate) mod flask_session;
mod private;
mod signed;

use std::fmt;

#[cfg(feature = "flask")]
pub use flask::FlaskCodec;
#[cfg(feature = "flask-session")]
pub use flask::FlaskSessionIds;
pub use private::PrivateCodec;
pub use signed::SignedCodec;

use crate::data::SessionData;

/// What a codec remembers of a cookie it decoded, to write the session
/// back faithfully: for the flask codec, the Python types of the values;
/// nothing for the others. Opaque outside the codecs: the layer only
/// carries it from a decode to the next encode.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Memory {
    #[cfg(feature = "flask")]
    tags: Option<flask::Tags>,
}

/// How far in the future an issue time may lie before a cookie is refused:
/// enough for clocks of servers behind one load balancer to disagree.
pub const MAX_CLOCK_SKEW: u64 = 60;

/// A cookie value that verified.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Decoded {
    /// The session's data.
    pub data: SessionData,
    /// Whether the session was marked permanent when it was written.
    pub permanent: bool,
    /// When it was written, in seconds since the Unix epoch.
    pub issued_at: u64,
    /// When the session began, in seconds since the Unix epoch: carried by
    /// signed and private cookies of a layer with an absolute timeout;
    /// the issue time where the cookie does not carry it.
    pub created_at: u64,
    /// Whether a fallback key, not the current one, verified it; the layer
    /// then re-signs it with the current key.
    pub by_fallback_key: bool,
    /// What the codec needs to write the session back as it came.
    pub(crate) memory: Memory,
}

/// Why a cookie value was refused. The layer treats each as "no session"
/// and logs it at debug level; none of them is an error of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not valid unpadded base64url.
    Encoding,
    /// Too short to hold an envelope.
    Truncated,
    /// An envelope version this build does not know.
    UnknownVersion,
    /// No key of the keyring verifies it: forged, altered, or signed with a
    /// retired key or for another cookie name.
    BadSignature,
    /// Older than the maximum age.
    Expired,
    /// Issued further in the future than [`MAX_CLOCK_SKEW`] allows.
    FromTheFuture,
    /// Authentic, but the contents are not a session (bad flags or JSON).
    Malformed,
    /// Longer than any cookie the layer writes.
    TooLarge,
    /// A chunked value whose chunks do not add up: a count out of range, a
    /// chunk missing, sent twice, or beyond the count.
    BadChunks,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Encoding => "not base64url",
            Self::Truncated => "truncated",
            Self::UnknownVersion => "unknown envelope version",
            Self::BadSignature => "bad signature",
            Self::Expired => "expired",
            Self::FromTheFuture => "issued in the future",
            Self::Malformed => "malformed contents",
            Self::TooLarge => "too large",
            Self::BadChunks => "chunks missing, repeated or extra",
        })
    }
}

impl std::error::Error for DecodeError {}

/// The part of the signed and private envelopes both share: issue time
/// (u64, big-endian), flags, the creation time (u64, big-endian) when the
/// flags say so, then the JSON object.
const CONTENT_HEADER_LEN: usize = 8 + 1;
const FLAG_PERMANENT: u8 = 0b0000_0001;
const FLAG_CREATED: u8 = 0b0000_0010;

/// What a codec writes: the session and its times.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Content<'a> {
    pub(crate) data: &'a SessionData,
    pub(crate) permanent: bool,
    /// The issue time, seconds since the Unix epoch.
    pub(crate) now: u64,
    /// When the session began: only when it began before `now` and the
    /// layer enforces an absolute timeout.
    pub(crate) created_at: Option<u64>,
}

impl<'a> Content<'a> {
    /// `data` issued at `now`, with no creation time.
    pub(crate) fn new(data: &'a SessionData, permanent: bool, now: u64) -> Self {
        Self {
            data,
            permanent,
            now,
            created_at: None,
        }
    }

    /// Appends the content part of the signed and private envelopes.
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.now.to_be_bytes());
        let permanent = if self.permanent { FLAG_PERMANENT } else { 0 };
        let created = if self.created_at.is_some() {
            FLAG_CREATED
        } else {
            0
        };
        out.push(permanent | created);
        if let Some(created_at) = self.created_at {
            out.extend_from_slice(&created_at.to_be_bytes());
        }
        serde_json::to_writer(out, self.data).expect("a JSON map always serializes");
    }
}

/// Reads an authenticated content part: the age checks, the flags, the
/// JSON. `by_fallback_key` is the caller's to know.
fn read_content(
    content: &[u8],
    now: u64,
    max_age: u64,
    by_fallback_key: bool,
) -> Result<Decoded, DecodeError> {
    if content.len() < CONTENT_HEADER_LEN {
        return Err(DecodeError::Truncated);
    }
    let issued_at = u64::from_be_bytes(content[..8].try_into().expect("8 bytes"));
    check_age(issued_at, now, max_age)?;
    let flags = content[8];
    if flags & !(FLAG_PERMANENT | FLAG_CREATED) != 0 {
        return Err(DecodeError::Malformed);
    }
    let mut json = &content[CONTENT_HEADER_LEN..];
    let mut created_at = issued_at;
    if flags & FLAG_CREATED != 0 {
        let (created, rest) = json
            .split_first_chunk::<8>()
            .ok_or(DecodeError::Truncated)?;
        created_at = u64::from_be_bytes(*created);
        if created_at > issued_at {
            return Err(DecodeError::Malformed);
        }
        json = rest;
    }
    let data = serde_json::from_slice(json).map_err(|_| DecodeError::Malformed)?;
    Ok(Decoded {
        data,
        permanent: flags & FLAG_PERMANENT != 0,
        issued_at,
        created_at,
        by_fallback_key,
        memory: Memory::default(),
    })
}

/// Refuses an issue time older than `max_age` or beyond the skew allowance.
fn check_age(issued_at: u64, now: u64, max_age: u64) -> Result<(), DecodeError> {
    if issued_at > now.saturating_add(MAX_CLOCK_SKEW) {
        return Err(DecodeError::FromTheFuture);
    }
    if now.saturating_sub(issued_at) > max_age {
        return Err(DecodeError::Expired);
    }
    Ok(())
}

/// The codec a layer is configured with.
#[derive(Debug, Clone)]
pub(crate) enum Codec {
    Signed(SignedCodec),
    Private(PrivateCodec),
    #[cfg(feature = "flask")]
    Flask(FlaskCodec),
}

impl Codec {
    /// The cookie value for `content` (Flask's format has no place for a
    /// creation time).
    pub(crate) fn encode(&self, name: &str, content: &Content<'_>, memory: &Memory) -> String {
        #[cfg(not(feature = "flask"))]
        let _ = memory;
        match self {
            Self::Signed(codec) => codec.seal(name, content),
            Self::Private(codec) => codec.seal(name, content),
            #[cfg(feature = "flask")]
            Self::Flask(codec) => codec.encode_tagged(content, memory.tags.as_ref()),
        }
    }

    pub(crate) fn decode(
        &self,
        name: &str,
        value: &str,
        now: u64,
        max_age: u64,
    ) -> Result<Decoded, DecodeError> {
        match self {
            Self::Signed(codec) => codec.decode(name, value, now, max_age),
            Self::Private(codec) => codec.decode(name, value, now, max_age),
            #[cfg(feature = "flask")]
            Self::Flask(codec) => codec.decode(value, now, max_age),
        }
    }
}
