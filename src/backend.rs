//! The runtime side a layer builds: the configuration every request of the
//! layer shares, and where its sessions live, in the cookie itself
//! (through a codec) or in a store (the cookie then carries a signed id).
//! Each kind has only the operations that make sense for it.

use std::sync::Arc;

use crate::codec::{Codec, Content, DecodeError, Decoded, Memory};
use crate::config::Config;
use crate::cookie::{self, MAX_COOKIE_LEN, chunk};
use crate::data::SessionData;
use crate::error::Error;
use crate::id;
use crate::key::Keyring;
use crate::store::{IdCookie, SessionId, SessionStore};

/// What every request of one layer shares.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) backend: Backend,
}

/// Where sessions live.
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    Cookie(CookieBackend),
    Store(StoreBackend),
}

/// Client-side sessions: the data travels in the cookie, through a codec.
#[derive(Debug, Clone)]
pub(crate) struct CookieBackend {
    pub(crate) codec: Codec,
}

/// Server-side sessions: the data lives in `store`; the cookie carries the
/// id, signed with `keys`.
#[derive(Debug, Clone)]
pub(crate) struct StoreBackend {
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) keys: Keyring,
    /// The store asked for write stamps ([`SessionStore::stamps_writes`]),
    /// and its id cookie can carry them.
    pub(crate) stamps: bool,
    /// How the cookie carries ids ([`SessionStore::id_cookie`]).
    pub(crate) ids: IdCookie,
}

impl StoreBackend {
    pub(crate) fn new(store: Arc<dyn SessionStore>, keys: Keyring) -> Self {
        let ids = store.id_cookie();
        Self {
            stamps: store.stamps_writes() && matches!(ids, IdCookie::Signed),
            store,
            keys,
            ids,
        }
    }

    /// The id a cookie value carries, if its shape (and signature) is right.
    pub(crate) fn verify_id(&self, name: &str, value: &[u8]) -> Option<id::Verified> {
        match &self.ids {
            IdCookie::Signed => id::verify(&self.keys, name, value),
            #[cfg(feature = "flask-session")]
            IdCookie::FlaskSession(ids) => {
                let value = std::str::from_utf8(value).ok()?;
                Some(id::Verified {
                    id: crate::store::SessionId::parse(ids.decode(value)?)?,
                    by_fallback_key: false,
                    stamp: None,
                })
            }
        }
    }

    /// The cookie value carrying `id` (and `stamp`, where the form has room).
    pub(crate) fn id_value(&self, name: &str, id: &SessionId, stamp: Option<&str>) -> String {
        match &self.ids {
            IdCookie::Signed => id::sign(&self.keys, name, id, stamp),
            #[cfg(feature = "flask-session")]
            IdCookie::FlaskSession(ids) => ids.encode(id.as_str()),
        }
    }
}

impl CookieBackend {
    /// Verifies the request's session cookie: `candidate` is the value of a
    /// cookie named after the session, `chunks` the chunk cookies.
    pub(crate) fn decode(
        &self,
        config: &Config,
        candidate: &[u8],
        chunks: &[(usize, &[u8])],
        now: u64,
    ) -> Result<Decoded, DecodeError> {
        if candidate.len() > MAX_COOKIE_LEN {
            return Err(DecodeError::TooLarge);
        }
        let joined = chunk::join(candidate, chunks, config.max_chunks)?;
        let value = std::str::from_utf8(&joined).map_err(|_| DecodeError::Encoding)?;
        self.codec
            .decode(&config.name, value, now, config.lifetime.as_secs())
    }

    /// The Set-Cookie lines that store `data`: one cookie when it fits,
    /// chunks when it does not, or an error when even the chunk budget is
    /// too small.
    pub(crate) fn encode(
        &self,
        config: &Config,
        data: &SessionData,
        permanent: bool,
        now: u64,
        created_at: Option<u64>,
        memory: &Memory,
    ) -> Result<Vec<String>, Error> {
        let content = Content {
            data,
            permanent,
            now,
            created_at,
        };
        let value = self.codec.encode(&config.name, &content, memory);
        let expires = config.cookie_expiry(permanent, now);
        cookie::session_cookies(config, &value, expires, now)
    }
}
