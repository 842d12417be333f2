//! Splitting a cookie value too large for one cookie over several, and
//! joining them back. Codecs never see chunks: they sign or encrypt the
//! whole joined value, so chunks cannot be mixed or reordered without the
//! check failing.
//!
//! Layout (`docs/cookie-format.md`): a value that fits is stored as is
//! under the cookie name. One that does not is cut into `N` pieces (2 to
//! [`MAX_CHUNKS`]); the first is stored under the name itself prefixed by
//! `!N!`, piece `i` under `name.i` (`session.1` ... `session.N-1`), so the
//! reader knows exactly which cookies to expect and orders them by number,
//! not by string.

use std::borrow::Cow;

use super::MAX_COOKIE_LEN;
use crate::codec::DecodeError;

/// The most chunks a layer may be configured to write.
pub const MAX_CHUNKS: usize = 64;

/// The marker that opens the first cookie of a chunked value. Chosen
/// outside every codec's alphabet (base64url and Flask's `.`), so an
/// unchunked value never starts with it.
const MARK: u8 = b'!';

/// The name of chunk `index` (1 or more) of cookie `name`.
pub(crate) fn chunk_name(name: &str, index: usize) -> String {
    format!("{name}.{index}")
}

/// The chunk index in `cookie`'s name if it is `name.<index>` with a
/// canonical decimal index (no sign, no leading zero) from 1 to
/// `MAX_CHUNKS - 1`.
pub(crate) fn chunk_index(cookie: &[u8], name: &str) -> Option<usize> {
    let digits = cookie.strip_prefix(name.as_bytes())?.strip_prefix(b".")?;
    parse_count(digits).filter(|&i| (1..MAX_CHUNKS).contains(&i))
}

fn parse_count(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 2 || digits[0] == b'0' {
        return None;
    }
    digits.iter().try_fold(0usize, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + usize::from(d - b'0'))
    })
}

/// Joins the value of the first cookie with the chunks the request
/// carried, as `(index, value)` pairs.
///
/// # Errors
/// [`DecodeError::BadChunks`] when the first cookie announces a count out
/// of range, a chunk it announces is missing, sent twice or longer than a
/// cookie can be, or a chunk beyond the count is present.
pub(crate) fn join<'a>(
    first: &'a [u8],
    chunks: &[(usize, &[u8])],
    max_chunks: usize,
) -> Result<Cow<'a, [u8]>, DecodeError> {
    let Some(rest) = first.strip_prefix(&[MARK]) else {
        return Ok(Cow::Borrowed(first));
    };
    let end = rest
        .iter()
        .position(|&b| b == MARK)
        .ok_or(DecodeError::BadChunks)?;
    let count = parse_count(&rest[..end])
        .filter(|&n| (2..=max_chunks.min(MAX_CHUNKS)).contains(&n))
        .ok_or(DecodeError::BadChunks)?;
    if chunks.iter().any(|&(index, _)| index >= count) {
        return Err(DecodeError::BadChunks);
    }
    let mut joined = rest[end + 1..].to_vec();
    for index in 1..count {
        let mut found = chunks.iter().filter(|&&(i, _)| i == index);
        match (found.next(), found.next()) {
            (Some((_, value)), None) if value.len() <= MAX_COOKIE_LEN => {
                joined.extend_from_slice(value)
            }
            _ => return Err(DecodeError::BadChunks),
        }
    }
    Ok(Cow::Owned(joined))
}

/// Cuts `value` into the cookie values to write, or `None` when it does
/// not fit in `max_chunks` cookies of at most `limit` bytes each.
///
/// `overhead` is the length of the Set-Cookie line of the unchunked
/// cookie without its value (name, `=`, attributes); a chunk's name is
/// longer by its `.index`.
pub(crate) fn split(
    value: &str,
    overhead: usize,
    limit: usize,
    max_chunks: usize,
) -> Option<Vec<String>> {
    debug_assert!(value.is_ascii(), "codecs write ASCII");
    debug_assert!(
        !value.starts_with('!'),
        "no codec output starts with the chunk mark"
    );
    if overhead + value.len() <= limit {
        return Some(vec![value.to_owned()]);
    }
    (2..=max_chunks.min(MAX_CHUNKS)).find_map(|count| {
        let prefix = format!("!{count}!");
        let piece = value.len().div_ceil(count);
        let longest_suffix = 1 + decimal_len(count - 1);
        let fits =
            overhead + prefix.len() + piece <= limit && overhead + longest_suffix + piece <= limit;
        fits.then(|| {
            // Exactly `count` pieces, sizes differing by at most one byte.
            let (base, longer) = (value.len() / count, value.len() % count);
            let mut start = 0;
            (0..count)
                .map(|i| {
                    let end = start + base + usize::from(i < longer);
                    let piece = &value[start..end];
                    start = end;
                    if i == 0 {
                        format!("{prefix}{piece}")
                    } else {
                        piece.to_owned()
                    }
                })
                .collect()
        })
    })
}

fn decimal_len(n: usize) -> usize {
    n.checked_ilog10().map_or(1, |l| l as usize + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(values: &[String]) -> (Vec<u8>, Vec<(usize, Vec<u8>)>) {
        let first = values[0].clone().into_bytes();
        let rest = values[1..]
            .iter()
            .enumerate()
            .map(|(i, v)| (i + 1, v.clone().into_bytes()))
            .collect();
        (first, rest)
    }

    fn join_owned(
        first: &[u8],
        chunks: &[(usize, Vec<u8>)],
        max: usize,
    ) -> Result<Vec<u8>, DecodeError> {
        let borrowed: Vec<(usize, &[u8])> =
            chunks.iter().map(|(i, v)| (*i, v.as_slice())).collect();
        join(first, &borrowed, max).map(Cow::into_owned)
    }

    #[test]
    fn a_value_that_fits_is_not_chunked() {
        let parts = split("abc", 100, 4096, 10).unwrap();
        assert_eq!(parts, ["abc"]);
        assert_eq!(join_owned(b"abc", &[], 10).unwrap(), b"abc");
    }

    #[test]
    fn split_then_join_is_identity_at_every_size() {
        for len in (0..40_000)
            .step_by(997)
            .chain([4000, 4001, 4095, 4096, 4097])
        {
            let value: String = (0..len)
                .map(|i| char::from(b'A' + (i % 26) as u8))
                .collect();
            let Some(parts) = split(&value, 100, 4096, 10) else {
                assert!(len > 9 * 3990, "{len} bytes should fit in 10 chunks");
                continue;
            };
            for (i, part) in parts.iter().enumerate() {
                let suffix = if i == 0 { 0 } else { 1 + decimal_len(i) };
                assert!(100 + suffix + part.len() <= 4096, "chunk {i} of {len}");
            }
            let (first, chunks) = pairs(&parts);
            assert_eq!(
                join_owned(&first, &chunks, 10).unwrap(),
                value.as_bytes(),
                "{len}"
            );
        }
    }

    #[test]
    fn more_than_nine_chunks_order_by_number() {
        let value: String = (0..60_000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let parts = split(&value, 100, 4096, 20).unwrap();
        assert!(parts.len() > 10, "{}", parts.len());
        let (first, mut chunks) = pairs(&parts);
        // Browsers send cookies in any order; string order puts 10 before 2.
        chunks.sort_by_key(|(i, _)| i.to_string());
        assert_eq!(join_owned(&first, &chunks, 20).unwrap(), value.as_bytes());
    }

    #[test]
    fn over_budget_is_none() {
        let value = "x".repeat(50_000);
        assert!(split(&value, 100, 4096, 10).is_none());
        assert!(split(&value, 100, 4096, 1).is_none());
    }

    #[test]
    fn bad_chunk_sets_are_refused() {
        let value = "y".repeat(12_000);
        let parts = split(&value, 100, 4096, 10).unwrap();
        assert_eq!(parts.len(), 4);
        let (first, chunks) = pairs(&parts);

        let missing: Vec<_> = chunks.iter().filter(|(i, _)| *i != 2).cloned().collect();
        let mut duplicate = chunks.clone();
        duplicate.push(chunks[0].clone());
        let mut extra = chunks.clone();
        extra.push((4, b"zz".to_vec()));
        for (what, set) in [
            ("missing", missing),
            ("duplicate", duplicate),
            ("extra", extra),
        ] {
            assert_eq!(
                join_owned(&first, &set, 10),
                Err(DecodeError::BadChunks),
                "{what}"
            );
        }
        let lies = |head: &str| {
            let mut first = head.as_bytes().to_vec();
            first.extend_from_slice(&parts[0].as_bytes()[3..]);
            join_owned(&first, &chunks, 10)
        };
        assert_eq!(lies("!4!").unwrap(), value.as_bytes());
        for head in [
            "!3!", "!5!", "!1!", "!0!", "!04!", "!11!", "!!", "!x!", "!4",
        ] {
            assert!(lies(head).is_err(), "{head}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// split then join is the identity at every size up to the budget,
        /// for any overhead, whatever order the chunks arrive in.
        #[test]
        fn split_join_identity(
            len in 0usize..40_000,
            overhead in 20usize..400,
            max in 1usize..=MAX_CHUNKS,
            seed in proptest::prelude::any::<u64>(),
        ) {
            // Any cookie-safe ASCII but the chunk mark, which no codec
            // output starts with.
            let value: String = (0..len).map(|i| char::from(b'#' + ((i as u64 ^ seed) % 90) as u8)).collect();
            match split(&value, overhead, 4096, max) {
                None => proptest::prop_assert!(len + overhead > 4096, "a value that fits one cookie was refused"),
                Some(parts) => {
                    proptest::prop_assert!(parts.len() <= max);
                    for (i, part) in parts.iter().enumerate() {
                        let suffix = if i == 0 { 0 } else { 1 + decimal_len(i) };
                        proptest::prop_assert!(overhead + suffix + part.len() <= 4096);
                    }
                    let (first, mut chunks) = pairs(&parts);
                    chunks.reverse();
                    proptest::prop_assert_eq!(join_owned(&first, &chunks, max).unwrap(), value.as_bytes());
                }
            }
        }
    }

    #[test]
    fn chunk_names_are_canonical() {
        assert_eq!(chunk_index(b"session.1", "session"), Some(1));
        assert_eq!(chunk_index(b"session.63", "session"), Some(63));
        for bad in [
            &b"session"[..],
            b"session.",
            b"session.0",
            b"session.01",
            b"session.64",
            b"session.x",
            b"sessionx1",
            b"other.1",
            b"session.-1",
        ] {
            assert_eq!(
                chunk_index(bad, "session"),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
