//! `SessionLayer`: the configuration builder and `impl Layer`.

use std::sync::{Arc, Once};
use std::time::{Duration, SystemTime};

use tower_layer::Layer;

use crate::backend::{Backend, CookieBackend, Shared, StoreBackend};
use crate::codec::{Codec, PrivateCodec, SignedCodec};
use crate::config::{Config, SameSite};
use crate::cookie::{self, MAX_CHUNKS};
use crate::data::SessionData;
use crate::error::DefaultErrorHandler;
use crate::key::Keyring;
use crate::service::SessionService;
use crate::store::SessionStore;

/// A Tower layer that gives every request a [`Session`](crate::Session)
/// and writes it back to cookies on the response.
///
/// ```
/// # #[cfg(feature = "axum")] {
/// use axum::{Router, routing::get};
/// use session_layer::{Key, Session, SessionLayer};
///
/// async fn count(session: Session) -> Result<String, session_layer::Error> {
///     let n = session.update("n", |n: Option<u64>| n.unwrap_or(0) + 1)?;
///     Ok(n.to_string())
/// }
///
/// let app: Router = Router::new()
///     .route("/", get(count))
///     .layer(SessionLayer::new(Key::generate()).skip_path("/static"));
/// # }
/// ```
///
/// The defaults are the safe ones: cookie `session`, `Path=/`, no
/// `Domain`, `Secure`, `HttpOnly`, `SameSite=Lax`, a 31-day lifetime (as
/// Flask's), and permanent sessions refreshed at most once a minute.
///
/// The second type parameter says what signs the cookie: [`Keyed`] (this
/// crate's keys, the default) or [`Flask`] (Flask's `SECRET_KEY`). Only a
/// keyed layer can keep sessions in a store or enforce an absolute
/// timeout, so asking a Flask layer for either does not compile.
#[derive(Debug, Clone)]
#[must_use]
pub struct SessionLayer<H = DefaultErrorHandler, K = Keyed> {
    shared: Arc<Shared>,
    error_handler: H,
    kind: K,
}

/// A [`SessionLayer`] whose cookies (or ids) are signed with this crate's
/// [`Keyring`]: every layer but a Flask one.
#[derive(Debug, Clone)]
pub struct Keyed {
    keys: Keyring,
}

/// A [`SessionLayer`] speaking Flask's session cookie
/// (`SessionLayer::flask`, feature `flask`). It has no key of this crate's
/// to sign ids with, and Flask's cookie has no place for a creation time,
/// so neither a store nor an absolute timeout can be asked of it:
///
/// ```compile_fail
/// # use session_layer::{SessionLayer, codec::FlaskCodec, store::MemoryStore};
/// let codec = FlaskCodec::new("a Flask SECRET_KEY").unwrap();
/// let layer = SessionLayer::flask(codec).with_store(MemoryStore::new());
/// ```
///
/// ```compile_fail
/// # use session_layer::{SessionLayer, codec::FlaskCodec};
/// let codec = FlaskCodec::new("a Flask SECRET_KEY").unwrap();
/// let layer = SessionLayer::flask(codec).absolute_timeout(std::time::Duration::from_secs(60));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Flask {
    _private: (),
}

impl SessionLayer {
    /// A layer keeping sessions in cookies signed with HMAC-SHA256 by the
    /// current key of `keys` (a [`Key`](crate::Key) or a
    /// [`Keyring`] with fallbacks): the client can read the session but
    /// not change it. The same as [`SessionLayer::signed`].
    pub fn new(keys: impl Into<Keyring>) -> Self {
        Self::signed(keys)
    }

    /// A layer keeping sessions in signed cookies ([`SignedCodec`]).
    pub fn signed(keys: impl Into<Keyring>) -> Self {
        let keys = keys.into();
        let codec = Codec::Signed(SignedCodec::new(keys.clone()));
        with_codec(codec, Keyed { keys })
    }

    /// A layer keeping sessions in encrypted cookies ([`PrivateCodec`],
    /// XChaCha20-Poly1305): the client can neither read nor change the
    /// session. Costs 11 characters more per cookie than
    /// [`signed`](Self::signed) and a cipher pass over the data.
    pub fn private(keys: impl Into<Keyring>) -> Self {
        let keys = keys.into();
        let codec = Codec::Private(PrivateCodec::new(keys.clone()));
        with_codec(codec, Keyed { keys })
    }
}

impl SessionLayer<DefaultErrorHandler, Flask> {
    /// A layer reading and writing Flask's session cookies
    /// ([`FlaskCodec`](crate::codec::FlaskCodec)), so a Flask app and this
    /// one, sharing `SECRET_KEY` and the cookie name, share sessions.
    ///
    /// Chunking is off (Flask cannot read chunks) until
    /// [`max_chunks`](Self::max_chunks) turns it on. Match `lifetime` to
    /// Flask's `PERMANENT_SESSION_LIFETIME` (both default to 31 days) and
    /// the cookie name, Path and Domain to Flask's `SESSION_COOKIE_*`;
    /// `docs/migrating-from-flask.md` maps every setting.
    #[cfg(feature = "flask")]
    pub fn flask(codec: crate::codec::FlaskCodec) -> Self {
        let mut layer = with_codec(Codec::Flask(codec), Flask { _private: () });
        layer.config().max_chunks = 1;
        layer
    }
}

fn with_codec<K>(codec: Codec, kind: K) -> SessionLayer<DefaultErrorHandler, K> {
    SessionLayer {
        shared: Arc::new(Shared {
            config: Config::default(),
            backend: Backend::Cookie(CookieBackend { codec }),
        }),
        error_handler: DefaultErrorHandler,
        kind,
    }
}

/// What only a keyed layer can do.
impl<H> SessionLayer<H, Keyed> {
    /// Keeps sessions on the server, in `store`; the cookie then carries
    /// only a random session id signed with the layer's key. Handlers do
    /// not change: the same `Session` API works in both modes.
    ///
    /// ```
    /// # #[cfg(feature = "memory-store")] {
    /// use session_layer::{Key, SessionLayer, store::MemoryStore};
    /// let layer = SessionLayer::new(Key::generate()).with_store(MemoryStore::new());
    /// # }
    /// ```
    ///
    /// A Flask layer has no key of this crate's to sign ids with:
    /// `with_store` is not available on it.
    pub fn with_store(mut self, store: impl SessionStore) -> Self {
        Arc::make_mut(&mut self.shared).backend =
            Backend::Store(StoreBackend::new(Arc::new(store), self.kind.keys.clone()));
        self
    }

    /// The stored sessions, to end one by its public handle
    /// ([`Session::handle`](crate::Session::handle)); `None` until
    /// [`with_store`](Self::with_store) (client-side sessions cannot be
    /// ended one by one: see `not_before`).
    ///
    /// Call it on the finished layer: the `Sessions` keeps the settings the
    /// layer has now (store, keys, cookie name, timeouts, clock) and does
    /// not see later ones. Taken before
    /// [`cookie_name`](Self::cookie_name), its handles are not the
    /// sessions' own: `end_of` ends nothing, and `end_all_except` ends
    /// the current session too.
    pub fn sessions(&self) -> Option<crate::Sessions> {
        match &self.shared.backend {
            Backend::Store(backend) => Some(crate::Sessions::new(
                backend.store.clone(),
                backend.keys.clone(),
                Arc::new(self.shared.config.clone()),
            )),
            Backend::Cookie(_) => None,
        }
    }

    /// Sessions end this long after they were created (or their id last
    /// cycled, or they were flushed and written again), however active
    /// (default: none), so
    /// a stolen session cannot be kept alive by refreshing it. Server-side,
    /// checked from the record; client-side, signed and private cookies
    /// carry the creation time (a cookie written before this setting
    /// counts from its issue time). Flask's cookie has no place for a
    /// creation time: a Flask layer does not offer this setting.
    pub fn absolute_timeout(mut self, timeout: Duration) -> Self {
        self.config().absolute_timeout = Some(timeout);
        self
    }

    /// Runs the requests of one stored session one at a time, as PHP's
    /// file sessions do (off by default): a request takes the session's
    /// lease in the store ([`SessionStore::lease`]) before it reads the
    /// record, and gives it back once its changes are saved; a request of
    /// the same session that comes meanwhile waits for it, up to `hold`,
    /// and answers 409 ([`ErrorKind::Conflict`](crate::ErrorKind::Conflict))
    /// if it is still taken then. A lease is held `hold` at most: a request
    /// that runs longer (or whose server died) loses it, and another may
    /// begin. A request that ends without saving (its future dropped when
    /// the client went away, its handler panicked) gives the lease back
    /// from a task it spawns, so the next request need not wait out `hold`.
    ///
    /// Without it, concurrent requests of one session run at once, and a
    /// read-then-written key that another request changed meanwhile
    /// answers 409 (merge operations never conflict): that is usually the
    /// better choice.
    ///
    /// # Cost
    /// Two store round trips more for every request that takes `Session`
    /// and sends a session cookie (the lease, its release; three on
    /// `MemcachedStore`, whose release reads the lease first, and on
    /// `SqlStore` when it takes over a lease past its hold; a request
    /// without a cookie has no session to wait for), and the requests of one user (a page's
    /// parallel API calls, several tabs) queue behind each other, each for
    /// as long as its handler runs; a waiting request asks the store again
    /// every 20 ms at most. Only routes that take `Session` pay.
    ///
    /// Every store of the crate but `FlaskSessionStore` has leases:
    /// `MemoryStore` (a map beside the records), `FileStore` (a `.lease`
    /// file beside the record, under its directory's lock), `RedisStore`
    /// (a key `{prefix}lease:{id}`, `SET NX PX`), `SqlStore` (a row of
    /// `{table}_leases`, which `migrate` creates), `MemcachedStore` (an
    /// add with a TTL in whole seconds), `MongoStore` (a document
    /// `lease:{id}`, one upsert) and `CachingStore` (the store behind's).
    /// `FlaskSessionStore` has none (a Flask app sharing the records would
    /// not honour them): do not combine the two. There, as with a store of
    /// your own without leases, every request that takes `Session` and
    /// sends a session cookie answers 501
    /// ([`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported)). A
    /// request without one still runs and may start a session, so a login
    /// succeeds and the requests after it fail.
    #[cfg(feature = "tokio")]
    pub fn serialize_requests(mut self, hold: Duration) -> Self {
        self.config().serialize = Some(hold);
        self
    }
}

impl<H, K> SessionLayer<H, K> {
    fn config(&mut self) -> &mut Config {
        &mut Arc::make_mut(&mut self.shared).config
    }

    /// Sessions expire after this long without a request that reads them
    /// (default: the lifetime). Server-side, checked from the record;
    /// client-side, from the cookie's signed issue time. The expiry moves
    /// forward on use, at most once per
    /// [`refresh_interval`](Self::refresh_interval) (keep that shorter).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config().idle_timeout = Some(timeout);
        self
    }

    /// The cookie's name (default `session`).
    ///
    /// # Panics
    /// When `name` is not a valid cookie name (an RFC 6265 token: no
    /// spaces, separators or control characters): a programming error,
    /// caught at start-up.
    pub fn cookie_name(mut self, name: &str) -> Self {
        assert!(
            cookie::is_cookie_name(name),
            "{name:?} is not a valid cookie name"
        );
        self.config().name = name.into();
        self
    }

    /// The cookie's `Path` (default `/`).
    ///
    /// # Panics
    /// When `path` holds a `;`, a space or a control character.
    pub fn path(mut self, path: &str) -> Self {
        assert!(
            cookie::is_attribute_value(path),
            "{path:?} is not a valid cookie Path"
        );
        self.config().path = path.into();
        self
    }

    /// The cookie's `Domain` (default none: the cookie goes back only to
    /// the host that set it, which is the safest choice).
    ///
    /// # Security
    /// With a domain, every subdomain receives the session cookie.
    ///
    /// # Panics
    /// When `domain` holds a `;`, a space or a control character.
    pub fn domain(mut self, domain: &str) -> Self {
        assert!(
            cookie::is_attribute_value(domain),
            "{domain:?} is not a valid cookie Domain"
        );
        self.config().domain = Some(domain.into());
        self
    }

    /// Whether the cookie carries `Secure` (default true).
    ///
    /// # Security
    /// Turn it off only for local development over plain http: without it
    /// the cookie travels in clear text over any http link.
    pub fn secure(mut self, secure: bool) -> Self {
        self.config().secure = secure;
        self
    }

    /// Whether the cookie carries `HttpOnly` (default true).
    ///
    /// # Security
    /// Without it, any script on the page, injected ones included, can read
    /// the session cookie.
    pub fn http_only(mut self, http_only: bool) -> Self {
        self.config().http_only = http_only;
        self
    }

    /// The cookie's `SameSite` (default [`SameSite::Lax`]).
    ///
    /// # Security
    /// [`SameSite::None`] sends the cookie with cross-site requests, so
    /// state-changing routes need CSRF protection of their own; browsers
    /// also require `Secure` with it.
    pub fn same_site(mut self, same_site: SameSite) -> Self {
        self.config().same_site = same_site;
        self
    }

    /// Whether the cookie carries `Partitioned` (CHIPS; default false), for
    /// a site embedded cross-site in an iframe.
    pub fn partitioned(mut self, partitioned: bool) -> Self {
        self.config().partitioned = partitioned;
        self
    }

    /// How long a session lives (default 31 days): a permanent session's
    /// cookie expires this long after it was last written, and the server
    /// refuses any cookie, permanent or not, signed longer ago than this.
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.config().lifetime = lifetime;
        self
    }

    /// Whether a permanent session that was read but not changed is
    /// re-issued, so that it expires a lifetime after the user's last
    /// visit rather than after the last change (default true, as Flask's
    /// `SESSION_REFRESH_EACH_REQUEST`). With an
    /// [`idle_timeout`](Self::idle_timeout), any session is (its idle
    /// timeout counts from the last write). Server-side, the record's
    /// expiry moves instead. Re-issuing is throttled by
    /// [`refresh_interval`](Self::refresh_interval).
    pub fn refresh_each_request(mut self, refresh: bool) -> Self {
        self.config().refresh_each_request = refresh;
        self
    }

    /// The least time between two refreshes of an unchanged session
    /// (default 60 seconds), so a busy user is not sent a new cookie, or
    /// cost a store write, on every request. Zero refreshes on every
    /// request.
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.config().refresh_interval = interval;
        self
    }

    /// Passes requests whose path is `prefix` or lies below it (`/static`
    /// covers `/static/app.js`, not `/staticfoo`) through untouched: no
    /// session, no cookie, no `Vary`. Call it once per prefix.
    pub fn skip_path(mut self, prefix: &str) -> Self {
        self.config().skip_paths.push(prefix.into());
        self
    }

    /// How many cookies one session may be spread over (default 10, about
    /// 40 KB; 1 turns chunking off). A session that does not fit is an
    /// error response, never silently cut.
    ///
    /// Proxies and servers cap the whole `Cookie` header well before
    /// browsers do (nginx's default `large_client_header_buffers` is 8 KB,
    /// so two full chunks): past a few chunks, prefer a server-side store.
    ///
    /// # Panics
    /// When `max` is 0 or more than [`MAX_CHUNKS`].
    pub fn max_chunks(mut self, max: usize) -> Self {
        assert!(
            (1..=MAX_CHUNKS).contains(&max),
            "max_chunks must be between 1 and {MAX_CHUNKS}, not {max}"
        );
        self.config().max_chunks = max;
        self
    }

    /// Where the session token travels (default [`Transport::Cookie`]):
    /// for API and mobile clients that keep no cookies, a header both ways
    /// ([`Transport::Header`]), `Authorization: Bearer` in requests
    /// ([`Transport::Bearer`]), or either beside the cookie
    /// ([`Transport::HeaderOrCookie`], [`Transport::BearerOrCookie`]: a
    /// request with the header uses it, otherwise the cookie).
    ///
    /// Every mode works the same way: the token is what the cookie would
    /// hold. The response carries it whenever the client must store a new
    /// one (and, for a request that came by cookie, as a cookie), and sends
    /// the header empty when the session ends: the client drops its token.
    /// A header holds one token, never chunks: a client-side session
    /// larger than one cookie's budget is the same `CookieTooLarge` error
    /// answered to a header client. Expose the header to browsers' scripts
    /// with CORS (`Access-Control-Expose-Headers`); docs/cookie-format.md
    /// gives the exact rules.
    ///
    /// [`Transport::Cookie`]: crate::Transport::Cookie
    /// [`Transport::Header`]: crate::Transport::Header
    /// [`Transport::Bearer`]: crate::Transport::Bearer
    /// [`Transport::HeaderOrCookie`]: crate::Transport::HeaderOrCookie
    /// [`Transport::BearerOrCookie`]: crate::Transport::BearerOrCookie
    pub fn transport(mut self, transport: crate::Transport) -> Self {
        self.config().transport = transport;
        self
    }

    /// Whether a session changed by a handler that answered with a 5xx
    /// status is still saved (default false: a failed request should not
    /// leave half its changes behind).
    pub fn persist_on_server_error(mut self, persist: bool) -> Self {
        self.config().persist_on_server_error = persist;
        self
    }

    /// Revocation for sessions a server cannot delete: `hook` gets a
    /// session's data and returns the earliest time a session holding it
    /// may have been issued (client-side: the signed issue time, renewed on
    /// each write) or created (server-side). Older sessions are refused
    /// like expired ones.
    ///
    /// A signed or private cookie stays valid until it expires, so a stolen
    /// copy cannot otherwise be revoked. Keep a per-user "logged out
    /// everywhere at" time and return it for the session's user; or return
    /// one global time to void every session issued before it (a breach, a
    /// leaked key you cannot rotate yet).
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use session_layer::{Key, SessionLayer};
    /// let logged_out_everywhere = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    /// let layer = SessionLayer::new(Key::generate()).not_before(move |data| {
    ///     // Look the user up; here one user was logged out everywhere.
    ///     (data.get("user") == Some(&"ann".into())).then_some(logged_out_everywhere)
    /// });
    /// ```
    ///
    /// The hook runs on every request that reads a session; keep it to a
    /// lookup in memory.
    pub fn not_before(
        mut self,
        hook: impl Fn(&SessionData) -> Option<SystemTime> + Send + Sync + 'static,
    ) -> Self {
        self.config().not_before = Some(Arc::new(hook));
        self
    }

    /// The clock the layer reads the time from (default the system clock),
    /// for tests that need to move time.
    pub fn clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.config().clock = Arc::new(clock);
        self
    }

    /// Replaces the response sent when the session cannot be saved (default
    /// [`DefaultErrorHandler`]: an empty body with the error's status).
    /// Whatever the handler returns, the layer also logs the error and
    /// puts it in the response extensions.
    pub fn with_error_handler<H2>(self, error_handler: H2) -> SessionLayer<H2, K> {
        SessionLayer {
            shared: self.shared,
            error_handler,
            kind: self.kind,
        }
    }
}

impl<S, H: Clone, K> Layer<S> for SessionLayer<H, K> {
    type Service = SessionService<S, H>;

    fn layer(&self, inner: S) -> Self::Service {
        let config = &self.shared.config;
        if config.same_site == SameSite::None && !config.secure {
            // Axum applies a layer once per route: say it once.
            static WARNED: Once = Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "SameSite=None without Secure: browsers will refuse the session cookie"
                );
            });
        }
        SessionService::new(inner, self.shared.clone(), self.error_handler.clone())
    }
}
