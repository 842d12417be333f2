//! Reading the request's `Cookie` headers.
//!
//! Only the cookies named after the session are looked at, byte by byte:
//! a header that is not valid UTF-8, or an unrelated cookie with odd bytes,
//! must not cost a user their session.

use http::HeaderMap;
use http::header::COOKIE;

use super::chunk::{self, MAX_CHUNKS};
use crate::config::Config;

/// How many cookies of the session's name are tried, in the order the
/// browser sent them (more specific Path first), before giving up: two are
/// common when a Domain or Path changed, more are an attack.
pub(crate) const MAX_CANDIDATES: usize = 4;

/// The most chunk cookies looked at; a request with more is refused whole.
const MAX_CHUNK_COOKIES: usize = 2 * MAX_CHUNKS;

/// The cookies of one session's name family in a request: those called
/// `name` and the chunks `name.1`, `name.2`, ...
#[derive(Debug, Default)]
pub(crate) struct Family<'a> {
    /// Values of the cookies called `name`, in the order sent.
    pub(crate) candidates: Vec<&'a [u8]>,
    /// `(index, value)` of every chunk cookie, in the order sent.
    pub(crate) chunks: Vec<(usize, &'a [u8])>,
    /// More chunk cookies than any valid session has.
    pub(crate) overflow: bool,
}

impl Family<'_> {
    /// The chunk indices present, each once, ascending.
    pub(crate) fn chunk_indices(&self) -> Vec<usize> {
        let mut indices: Vec<usize> = self.chunks.iter().map(|&(i, _)| i).collect();
        indices.sort_unstable();
        indices.dedup();
        indices
    }
}

/// How a request carried its session token, and so how it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Via {
    /// No token, from a client that did not say it is a header client:
    /// answered by cookie where the transport has cookies.
    #[default]
    Nothing,
    Cookie,
    /// The transport's header (or `Authorization: Bearer`), possibly
    /// empty: answered by header.
    Header,
}

/// The request's token by the layer's transport: from the header when the
/// transport has one and the request carries it (one candidate, no
/// chunks), from the cookies otherwise (when the transport reads them).
///
/// A request with the header present but empty (or, in the bearer modes,
/// `Authorization: Bearer` with no token, or the response header present)
/// carries no token but says it is a header client: a new session is
/// handed to it in the header, not in a cookie.
pub(crate) fn token<'a>(headers: &'a HeaderMap, config: &Config) -> (Family<'a>, Via) {
    let transport = &config.transport;
    let Some(response_header) = transport.header() else {
        return from_cookies(headers, config);
    };
    let from_header = if transport.bearer() {
        headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| bearer(value.as_bytes()))
    } else {
        headers
            .get(response_header)
            .map(http::HeaderValue::as_bytes)
    };
    match from_header {
        Some(token) if !token.is_empty() => {
            let family = Family {
                candidates: vec![token],
                ..Family::default()
            };
            (family, Via::Header)
        }
        _ if from_header.is_some()
            || headers.contains_key(response_header)
            || !transport.cookies() =>
        {
            (Family::default(), Via::Header)
        }
        _ => from_cookies(headers, config),
    }
}

fn from_cookies<'a>(headers: &'a HeaderMap, config: &Config) -> (Family<'a>, Via) {
    let family = family(headers, &config.name);
    let via = if family.candidates.is_empty() && family.chunks.is_empty() {
        Via::Nothing
    } else {
        Via::Cookie
    };
    (family, via)
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is
/// case-insensitive, RFC 9110 section 11.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
}

/// The session family of cookies across every `Cookie` header (HTTP/2 may
/// split one into several). Other cookies are passed over unread.
pub(crate) fn family<'a>(headers: &'a HeaderMap, name: &str) -> Family<'a> {
    let mut family = Family::default();
    let pairs = headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|header| pairs(header.as_bytes()));
    for (cookie, value) in pairs {
        if !cookie.starts_with(name.as_bytes()) {
            continue;
        }
        if cookie.len() == name.len() {
            if family.candidates.len() < MAX_CANDIDATES {
                family.candidates.push(value);
            }
        } else if let Some(index) = chunk::chunk_index(cookie, name) {
            if family.chunks.len() < MAX_CHUNK_COOKIES {
                family.chunks.push((index, value));
            } else {
                family.overflow = true;
            }
        }
    }
    family
}

/// Splits one `Cookie` header into (name, value) pairs: `;`-separated,
/// whitespace around each trimmed, a value in double quotes unquoted
/// (RFC 6265 section 4.2.1). A pair without `=` is skipped.
pub(crate) fn pairs(header: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    header.split(|&b| b == b';').filter_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        let name = pair[..eq].trim_ascii();
        let mut value = pair[eq + 1..].trim_ascii();
        if value.len() >= 2 && value[0] == b'"' && value[value.len() - 1] == b'"' {
            value = &value[1..value.len() - 1];
        }
        Some((name, value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(COOKIE, HeaderValue::from_bytes(v).unwrap());
        }
        map
    }

    fn candidates<'a>(map: &'a HeaderMap, name: &str) -> Vec<&'a [u8]> {
        family(map, name).candidates
    }

    #[test]
    fn finds_the_named_cookie_among_others() {
        let map = headers(&[b"a=1; session=abc ;b=2", b"session=\"def\""]);
        assert_eq!(
            candidates(&map, "session"),
            [b"abc".as_slice(), b"def".as_slice()]
        );
        assert!(candidates(&map, "sess").is_empty());
        assert_eq!(candidates(&map, "b"), [b"2".as_slice()]);
    }

    #[test]
    fn collects_chunks_and_ignores_lookalikes() {
        let map = headers(&[b"session.2=c; session=!3!a; sessionx=no; session.1=b; session.01=no; session.x=no; session.2=d"]);
        let found = family(&map, "session");
        assert_eq!(found.candidates, [b"!3!a".as_slice()]);
        assert_eq!(
            found.chunks,
            [
                (2, b"c".as_slice()),
                (1, b"b".as_slice()),
                (2, b"d".as_slice())
            ]
        );
        assert_eq!(found.chunk_indices(), [1, 2]);
        assert!(!found.overflow);
    }

    #[test]
    fn tolerates_junk_and_non_utf8_neighbours() {
        let map = headers(&[b"\xff\xfe=\x80; noequals; =v; session=ok; ;;"]);
        assert_eq!(candidates(&map, "session"), [b"ok".as_slice()]);
    }

    #[test]
    fn values_may_contain_equals() {
        let map = headers(&[b"session=a=b=="]);
        assert_eq!(candidates(&map, "session"), [b"a=b==".as_slice()]);
    }

    #[test]
    fn candidates_are_capped() {
        let line = "session=x; session.1=y; ".repeat(200);
        let map = headers(&[line.as_bytes()]);
        let found = family(&map, "session");
        assert_eq!(found.candidates.len(), MAX_CANDIDATES);
        assert_eq!(found.chunks.len(), MAX_CHUNK_COOKIES);
        assert!(found.overflow);
    }
}
