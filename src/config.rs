//! Policy: cookie attributes, lifetime, refresh and timeouts, as the layer
//! was told at construction. Turning it into `Set-Cookie` lines is the
//! `cookie` module's job.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::data::SessionData;

/// Flask's `PERMANENT_SESSION_LIFETIME` default.
pub(crate) const DEFAULT_LIFETIME: Duration = Duration::from_secs(31 * 24 * 60 * 60);

/// A permanent session is re-issued at most this often when only read.
pub(crate) const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// Ten cookies, about 40 KB, as the Flask chunking snippet allowed.
pub(crate) const DEFAULT_MAX_CHUNKS: usize = 10;

/// The `SameSite` attribute of the session cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SameSite {
    /// Sent only on same-site requests.
    Strict,
    /// Sent on same-site requests and top-level cross-site navigations: the
    /// default, which blocks most CSRF while keeping links into the site
    /// logged in.
    Lax,
    /// Sent on every request; browsers require `Secure` with it.
    None,
}

/// The clock the layer reads the time from, as seconds since the Unix epoch.
pub(crate) type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The revocation hook: the earliest acceptable issue time for a session
/// holding this data.
pub(crate) type NotBefore = Arc<dyn Fn(&SessionData) -> Option<SystemTime> + Send + Sync>;

/// Cookie attributes and session lifetime policy.
#[derive(Clone)]
pub(crate) struct Config {
    /// Shared, so that a loaded session can name its layer without a copy.
    pub(crate) name: Arc<str>,
    pub(crate) path: Box<str>,
    pub(crate) domain: Option<Box<str>>,
    pub(crate) secure: bool,
    pub(crate) http_only: bool,
    pub(crate) same_site: SameSite,
    pub(crate) partitioned: bool,
    pub(crate) lifetime: Duration,
    pub(crate) refresh_each_request: bool,
    pub(crate) refresh_interval: Duration,
    pub(crate) skip_paths: Vec<Box<str>>,
    pub(crate) persist_on_server_error: bool,
    pub(crate) max_chunks: usize,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) absolute_timeout: Option<Duration>,
    pub(crate) not_before: Option<NotBefore>,
    pub(crate) clock: Clock,
    pub(crate) transport: Transport,
    /// Server-side: run the requests of one session one at a time, each
    /// holding the session's lease at most this long.
    pub(crate) serialize: Option<Duration>,
}

/// Where the session token (the signed, private or Flask cookie value, or
/// the signed id of a stored session) travels: see
/// [`SessionLayer::transport`](crate::SessionLayer::transport).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// In a cookie (the default).
    Cookie,
    /// In the header `name`, both ways (`x-session-token`, say); no cookie
    /// is read or written.
    Header(http::HeaderName),
    /// In requests as `Authorization: Bearer <token>`; in responses in the
    /// header `name`.
    Bearer(http::HeaderName),
    /// The header `name` when a request has it, the cookie otherwise.
    HeaderOrCookie(http::HeaderName),
    /// `Authorization: Bearer` when a request has it, the cookie otherwise;
    /// responses in the header `name` or the cookie.
    BearerOrCookie(http::HeaderName),
}

impl Transport {
    /// The response header that carries the token, if any.
    pub(crate) fn header(&self) -> Option<&http::HeaderName> {
        match self {
            Self::Cookie => None,
            Self::Header(name)
            | Self::Bearer(name)
            | Self::HeaderOrCookie(name)
            | Self::BearerOrCookie(name) => Some(name),
        }
    }

    /// Whether requests carry the token as `Authorization: Bearer`.
    pub(crate) fn bearer(&self) -> bool {
        matches!(self, Self::Bearer(_) | Self::BearerOrCookie(_))
    }

    /// Whether cookies are read and written at all.
    pub(crate) fn cookies(&self) -> bool {
        matches!(
            self,
            Self::Cookie | Self::HeaderOrCookie(_) | Self::BearerOrCookie(_)
        )
    }

    /// The request header the token comes in, if any: the one to name in
    /// `Vary`.
    pub(crate) fn request_header(&self) -> Option<&http::HeaderName> {
        if self.bearer() {
            Some(&http::header::AUTHORIZATION)
        } else {
            self.header()
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "session".into(),
            path: "/".into(),
            domain: None,
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            partitioned: false,
            lifetime: DEFAULT_LIFETIME,
            refresh_each_request: true,
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            skip_paths: Vec::new(),
            persist_on_server_error: false,
            max_chunks: DEFAULT_MAX_CHUNKS,
            idle_timeout: None,
            absolute_timeout: None,
            not_before: None,
            clock: Arc::new(SystemTime::now),
            transport: Transport::Cookie,
            serialize: None,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("domain", &self.domain)
            .field("secure", &self.secure)
            .field("http_only", &self.http_only)
            .field("same_site", &self.same_site)
            .field("partitioned", &self.partitioned)
            .field("lifetime", &self.lifetime)
            .field("refresh_each_request", &self.refresh_each_request)
            .field("refresh_interval", &self.refresh_interval)
            .field("skip_paths", &self.skip_paths)
            .field("persist_on_server_error", &self.persist_on_server_error)
            .field("max_chunks", &self.max_chunks)
            .field("idle_timeout", &self.idle_timeout)
            .field("absolute_timeout", &self.absolute_timeout)
            .field("not_before", &self.not_before.is_some())
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Seconds since the Unix epoch by the configured clock (0 before it).
    pub(crate) fn now(&self) -> u64 {
        (self.clock)()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// Whether requests to `path` bypass the layer: a skip path matches
    /// itself and everything below it, on segment boundaries (`/static`
    /// matches `/static` and `/static/app.js`, not `/staticfoo`).
    pub(crate) fn is_skipped(&self, path: &str) -> bool {
        self.skip_paths.iter().any(|prefix| {
            let prefix = prefix.trim_end_matches('/');
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }

    /// When a permanent client-side cookie written at `now` expires.
    pub(crate) fn cookie_expiry(&self, permanent: bool, now: u64) -> Option<u64> {
        permanent.then(|| now.saturating_add(self.lifetime.as_secs()))
    }

    /// When a server-side record touched at `now` expires: after the idle
    /// timeout (the lifetime if none is set), and never after the absolute
    /// timeout from its creation.
    pub(crate) fn record_expiry(&self, created_at: u64, now: u64) -> u64 {
        let idle = self.idle_timeout.unwrap_or(self.lifetime).as_secs();
        let mut expires = now.saturating_add(idle);
        if let Some(absolute) = self.absolute_timeout {
            expires = expires.min(created_at.saturating_add(absolute.as_secs()));
        }
        expires
    }

    /// Whether a client-side cookie issued at `issued_at`, for a session
    /// begun at `created_at`, is past the idle or the absolute timeout at
    /// `now`: the same rule as for records, read from the cookie.
    pub(crate) fn cookie_timed_out(&self, issued_at: u64, created_at: u64, now: u64) -> bool {
        self.idle_timeout
            .is_some_and(|idle| issued_at.saturating_add(idle.as_secs()) <= now)
            || self
                .absolute_timeout
                .is_some_and(|a| created_at.saturating_add(a.as_secs()) <= now)
    }

    /// Whether a session holding `data`, issued (client-side) or created
    /// (server-side) at `issued_at`, was revoked by the `not_before` hook.
    pub(crate) fn revoked(&self, data: &SessionData, issued_at: u64) -> bool {
        self.not_before.as_ref().is_some_and(|hook| {
            hook(data).is_some_and(|at| {
                let at = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                issued_at < at
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_paths_match_on_segment_boundaries() {
        let config = Config {
            skip_paths: vec!["/static".into(), "/health/".into()],
            ..Config::default()
        };
        assert!(config.is_skipped("/static"));
        assert!(config.is_skipped("/static/app.js"));
        assert!(config.is_skipped("/health"));
        assert!(!config.is_skipped("/staticfoo"));
        assert!(!config.is_skipped("/"));
        assert!(!config.is_skipped("/api/static"));
    }
}
