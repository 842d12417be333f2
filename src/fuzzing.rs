//! Entry points for the cargo-fuzz targets in `fuzz/`: the internal
//! decoders that see attacker bytes. Compiled only under `cfg(fuzzing)`,
//! never part of the public API.

use http::{HeaderMap, HeaderValue, header::COOKIE};

use crate::cookie::chunk;
use crate::key::Keyring;

/// Splits `header` as the layer splits a request's `Cookie` header and
/// returns the session family it found.
pub fn cookie_family(header: &[u8]) -> Option<(usize, Vec<usize>, bool)> {
    let value = HeaderValue::from_bytes(header).ok()?;
    let mut headers = HeaderMap::new();
    headers.append(COOKIE, value);
    let family = crate::cookie::family(&headers, "session");
    Some((
        family.candidates.len(),
        family.chunk_indices(),
        family.overflow,
    ))
}

/// Joins a first cookie and chunk cookies as the layer does.
pub fn chunk_join(first: &[u8], chunks: &[(usize, &[u8])], max_chunks: usize) -> Option<Vec<u8>> {
    chunk::join(first, chunks, max_chunks)
        .ok()
        .map(|joined| joined.into_owned())
}

/// Verifies a server-side session cookie value.
pub fn verify_id(keys: &Keyring, value: &[u8]) -> bool {
    crate::id::verify(keys, "session", value).is_some()
}

/// Reads a Flask-Session record as `FlaskSessionStore` does; what reads
/// writes back (unchanged, as a save of another key does) to a record that
/// reads the same.
#[cfg(feature = "flask-session")]
pub fn flask_session_record(bytes: &[u8]) {
    use crate::codec::flask_session::{Serialization, decode, encode};
    let Some(decoded) = decode(bytes) else { return };
    for format in [Serialization::Msgpack, Serialization::Json] {
        let written = encode(format, &decoded.data, decoded.permanent, Some(&decoded));
        let again = decode(&written).expect("a record written here reads back");
        assert_eq!(again.data, decoded.data);
        assert_eq!(again.permanent, decoded.permanent);
    }
}
