//! Writing `Set-Cookie` lines from the layer's cookie policy: one cookie,
//! a chunked value, or the removal of one.

use std::time::Duration;

use cookie::Cookie;
use cookie::time::OffsetDateTime;
use http::HeaderValue;

use super::{MAX_COOKIE_LEN, chunk};
use crate::config::{Config, SameSite};
use crate::error::{Error, ErrorKind};

/// The Set-Cookie lines that carry `value` under the session's name: one
/// cookie when it fits, chunks when it does not, or an error when even
/// the chunk budget is too small (browsers would drop what does not fit).
pub(crate) fn session_cookies(
    config: &Config,
    value: &str,
    expires: Option<u64>,
    now: u64,
) -> Result<Vec<String>, Error> {
    let line = set_cookie(config, &config.name, value, expires, now);
    if line.len() <= MAX_COOKIE_LEN {
        return Ok(vec![line]);
    }
    let overhead = line.len() - value.len();
    let values = chunk::split(value, overhead, MAX_COOKIE_LEN, config.max_chunks).ok_or_else(|| {
        let cookies = if config.max_chunks == 1 { "cookie" } else { "cookies" };
        Error::with_message(
            ErrorKind::CookieTooLarge,
            format!(
                "the session encodes to {} bytes, more than {} {cookies} of {MAX_COOKIE_LEN} bytes hold",
                value.len(),
                config.max_chunks
            ),
        )
    })?;
    Ok(values
        .iter()
        .enumerate()
        .map(|(index, value)| {
            if index == 0 {
                set_cookie(config, &config.name, value, expires, now)
            } else {
                let name = chunk::chunk_name(&config.name, index);
                set_cookie(config, &name, value, expires, now)
            }
        })
        .collect())
}

/// The Set-Cookie value that stores `value`: with `expires` (seconds since
/// the epoch) it carries Max-Age and Expires, without it it lasts the
/// browser session.
pub(crate) fn set_cookie(
    config: &Config,
    name: &str,
    value: &str,
    expires: Option<u64>,
    now: u64,
) -> String {
    let mut cookie = base_cookie(config, name, value);
    if let Some(expires) = expires {
        let max_age = expires.saturating_sub(now);
        cookie.set_max_age(cookie::time::Duration::seconds(
            i64::try_from(max_age).unwrap_or(i64::MAX),
        ));
        cookie.set_expires(expires_at(now, Duration::from_secs(max_age)));
    }
    cookie.to_string()
}

/// The Set-Cookie value that deletes the cookie `name`: same Path and
/// Domain (a browser only deletes the cookie they match), empty value,
/// Max-Age=0 and an Expires in the past.
pub(crate) fn removal_cookie(config: &Config, name: &str) -> String {
    let mut cookie = base_cookie(config, name, "");
    cookie.set_max_age(cookie::time::Duration::ZERO);
    cookie.set_expires(OffsetDateTime::UNIX_EPOCH);
    cookie.to_string()
}

fn base_cookie<'a>(config: &'a Config, name: &'a str, value: &'a str) -> Cookie<'a> {
    let mut cookie = Cookie::new(name, value);
    cookie.set_path(&*config.path);
    if let Some(domain) = &config.domain {
        cookie.set_domain(&**domain);
    }
    cookie.set_secure(config.secure);
    cookie.set_http_only(config.http_only);
    cookie.set_same_site(match config.same_site {
        SameSite::Strict => cookie::SameSite::Strict,
        SameSite::Lax => cookie::SameSite::Lax,
        SameSite::None => cookie::SameSite::None,
    });
    if config.partitioned {
        cookie.set_partitioned(true);
    }
    cookie
}

fn expires_at(now: u64, lifetime: Duration) -> OffsetDateTime {
    let at = now.saturating_add(lifetime.as_secs());
    i64::try_from(at)
        .ok()
        .and_then(|at| OffsetDateTime::from_unix_timestamp(at).ok())
        .unwrap_or(OffsetDateTime::new_utc(
            cookie::time::Date::MAX,
            cookie::time::Time::MIDNIGHT,
        ))
}

/// A header value from a Set-Cookie line built here. Every byte of it
/// comes from a validated cookie name, attribute or codec output, so
/// failure is a bug in this crate.
/// The value of a `Set-Cookie` line (`name=value; attributes`) for the
/// token header, if the line is the cookie called `name` (not a chunk). A
/// deletion gives the empty value.
pub(crate) fn token_of<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(name)?.strip_prefix('=')?;
    Some(rest.split(';').next().unwrap_or(""))
}

pub(crate) fn header_value(line: String) -> HeaderValue {
    HeaderValue::try_from(line).expect("Set-Cookie lines are built from visible ASCII")
}

/// Whether `name` is a valid cookie name (an RFC 6265 token).
pub(crate) fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `value` may stand in a Set-Cookie attribute (Path, Domain):
/// visible ASCII without `;`.
pub(crate) fn is_attribute_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| (0x21..0x7f).contains(&b) && b != b';')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_secure_ones() {
        let line = set_cookie(&Config::default(), "session", "v", None, 0);
        assert_eq!(line, "session=v; HttpOnly; SameSite=Lax; Secure; Path=/");
    }

    #[test]
    fn permanent_cookies_carry_max_age_and_expires() {
        let config = Config {
            lifetime: Duration::from_secs(3600),
            ..Config::default()
        };
        let expires = config.cookie_expiry(true, 1_700_000_000);
        let line = set_cookie(&config, "session", "v", expires, 1_700_000_000);
        assert!(line.contains("Max-Age=3600"), "{line}");
        assert!(
            line.contains("Expires=Tue, 14 Nov 2023 23:13:20 GMT"),
            "{line}"
        );
    }

    #[test]
    fn removal_keeps_path_and_domain() {
        let config = Config {
            path: "/app".into(),
            domain: Some("example.com".into()),
            partitioned: true,
            ..Config::default()
        };
        let line = removal_cookie(&config, "session");
        assert!(line.starts_with("session=;"), "{line}");
        assert!(line.contains("Path=/app"), "{line}");
        assert!(line.contains("Domain=example.com"), "{line}");
        assert!(line.contains("Max-Age=0"), "{line}");
        assert!(line.contains("Expires=Thu, 01 Jan 1970"), "{line}");
        assert!(line.contains("Partitioned"), "{line}");
    }

    #[test]
    fn cookie_names_are_tokens() {
        assert!(is_cookie_name("session"));
        assert!(is_cookie_name("__Host-session"));
        for bad in ["", "a b", "a;b", "a=b", "a,b", "sé"] {
            assert!(!is_cookie_name(bad), "{bad:?}");
        }
    }
}
