//! Reading the request's `Cookie` headers.
//!
//! Only the cookies named after the session are looked at, byte by byte:
//! a header that is not valid UTF-8, or an unrelated cookie with odd bytes,
//! must not cost a user their session.

use http::HeaderMap;
use http::header::COOKIE;

/// The largest cookie value the layer tries to decode: browsers store at
/// most 4096 bytes of name, value and attributes per cookie.
pub(crate) const MAX_COOKIE_LEN: usize = 4096;

/// How many cookies of the session's name are tried, in the order the
/// browser sent them (more specific Path first), before giving up: two are
/// common when a Domain or Path changed, more are an attack.
pub(crate) const MAX_CANDIDATES: usize = 4;

/// The values of the cookies called `name`, in the order sent, across every
/// `Cookie` header (HTTP/2 may split one into several).
pub(crate) fn find<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|header| pairs(header.as_bytes()))
        .filter(move |(n, _)| *n == name.as_bytes())
        .map(|(_, value)| value)
        .take(MAX_CANDIDATES)
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

    #[test]
    fn finds_the_named_cookie_among_others() {
        let map = headers(&[b"a=1; session=abc ;b=2", b"session=\"def\""]);
        let found: Vec<_> = find(&map, "session").collect();
        assert_eq!(found, [b"abc".as_slice(), b"def".as_slice()]);
        assert_eq!(find(&map, "sess").count(), 0);
        assert_eq!(find(&map, "b").next(), Some(b"2".as_slice()));
    }

    #[test]
    fn tolerates_junk_and_non_utf8_neighbours() {
        let map = headers(&[b"\xff\xfe=\x80; noequals; =v; session=ok; ;;"]);
        assert_eq!(find(&map, "session").next(), Some(b"ok".as_slice()));
    }

    #[test]
    fn values_may_contain_equals() {
        let map = headers(&[b"session=a=b=="]);
        assert_eq!(find(&map, "session").next(), Some(b"a=b==".as_slice()));
    }

    #[test]
    fn candidates_are_capped() {
        let line = "session=x; ".repeat(100);
        let map = headers(&[line.as_bytes()]);
        assert_eq!(find(&map, "session").count(), MAX_CANDIDATES);
    }
}
