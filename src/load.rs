//! Loading a request's session, lazily and once: the cookie verified (and,
//! server-side, the store read) the first time a handler asks for it.

use std::fmt;
use std::sync::{Arc, OnceLock};

use http::HeaderMap;

use crate::backend::{Backend, CookieBackend, Shared, StoreBackend};
use crate::codec::{Decoded, Memory};
use crate::cookie::{self, Family, Via};
use crate::error::{Error, ErrorKind};
use crate::id::{self, SessionId};
use crate::session::{Session, State};
use crate::store::{STAMP_KEY, SessionStore};

impl Session {
    /// The session a [`SessionLayer`](crate::SessionLayer) prepared for this
    /// request, for Tower services without Axum (Axum handlers take
    /// `Session` as an extractor instead).
    ///
    /// # Errors
    /// [`ErrorKind::LayerMissing`] when no `SessionLayer` ran for this
    /// request or its path is skipped; [`ErrorKind::Store`] when the
    /// session store could not be read.
    pub async fn from_parts(parts: &http::request::Parts) -> Result<Self, Error> {
        Self::load(&parts.headers, &parts.extensions).await
    }

    /// Like [`from_parts`](Self::from_parts), from a whole request.
    ///
    /// # Errors
    /// As [`from_parts`](Self::from_parts).
    pub async fn from_request<B>(request: &http::Request<B>) -> Result<Self, Error> {
        Self::load(request.headers(), request.extensions()).await
    }

    pub(crate) async fn load(
        headers: &HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<Self, Error> {
        let handle = extensions
            .get::<SessionHandle>()
            .ok_or_else(|| Error::new(ErrorKind::LayerMissing))?;
        Ok(handle.load(headers).await?.session.clone())
    }
}

/// What the layer puts in the request extensions: the way from the
/// request to its session, read on first use so that routes which never
/// touch the session never pay for it (no decoding, no store round trip).
#[derive(Clone)]
pub(crate) struct SessionHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    shared: Arc<Shared>,
    loaded: OnceLock<Loaded>,
}

/// A session as read from the request, with what the response needs to
/// know about where it came from.
pub(crate) struct Loaded {
    pub(crate) session: Session,
    /// The request carried a cookie of the session's name, valid or not.
    pub(crate) had_cookie: bool,
    /// The chunk indices (`name.1`, ...) the request carried, valid or not:
    /// the response expires those the new value no longer uses.
    pub(crate) chunks: Vec<usize>,
    /// The verified cookie, if any.
    pub(crate) origin: Option<Origin>,
    /// Server-side: the record the verified id named, if it exists.
    pub(crate) record: Option<LoadedRecord>,
    /// How the request carried its token: the response answers the same
    /// way.
    pub(crate) via: Via,
    /// Server-side, with `serialize_requests`: the session's lease this
    /// request holds, which the response takes and gives back once its
    /// save is done (or, if the request never gets there, the lease's
    /// drop does).
    pub(crate) lease: std::sync::Mutex<Option<Lease>>,
}

/// Facts about a verified cookie.
pub(crate) struct Origin {
    pub(crate) issued_at: u64,
    /// When the session began (client-side; the issue time where the
    /// cookie does not say).
    pub(crate) created_at: u64,
    pub(crate) by_fallback_key: bool,
    /// What the codec needs to write the session back as it came.
    pub(crate) memory: Memory,
}

/// The id and times of the server-side record a request loaded (its data
/// went into the session).
pub(crate) struct LoadedRecord {
    pub(crate) id: SessionId,
    pub(crate) created_at: u64,
    pub(crate) expires_at: u64,
    /// The write stamp the client's cookie carried (stores that stamp
    /// writes), kept when the cookie is re-signed without a write.
    pub(crate) stamp: Option<String>,
}

impl SessionHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            inner: Arc::new(HandleInner {
                shared,
                loaded: OnceLock::new(),
            }),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// The session, reading the request's cookie (and the store) the first
    /// time. A failed store read is not remembered: the next call retries.
    pub(crate) async fn load(&self, headers: &HeaderMap) -> Result<&Loaded, Error> {
        if let Some(loaded) = self.inner.loaded.get() {
            return Ok(loaded);
        }
        let shared = self.shared();
        let (family, via) = cookie::token(headers, &shared.config);
        let mut loaded = match &shared.backend {
            Backend::Cookie(backend) => decode(shared, backend, &family),
            Backend::Store(backend) => fetch(shared, backend, &family).await?,
        };
        loaded.via = via;
        // Two extractions racing in one request both read; the first wins.
        Ok(self.inner.loaded.get_or_init(|| loaded))
    }

    /// The session if a handler asked for it.
    pub(crate) fn loaded(&self) -> Option<&Loaded> {
        self.inner.loaded.get()
    }
}

fn empty(family: &Family<'_>, track_changes: bool) -> Loaded {
    Loaded {
        session: Session::from_state(State {
            track_changes,
            ..State::default()
        }),
        had_cookie: !family.candidates.is_empty(),
        chunks: family.chunk_indices(),
        origin: None,
        record: None,
        via: Via::Nothing,
        lease: std::sync::Mutex::new(None),
    }
}

/// Client-side: the session is the cookie. The first candidate that
/// verifies, is not revoked and has not timed out wins.
fn decode(shared: &Shared, backend: &CookieBackend, family: &Family<'_>) -> Loaded {
    let config = &shared.config;
    let name = &*config.name;
    let mut loaded = empty(family, false);
    if family.overflow {
        tracing::debug!(cookie = name, "too many session chunk cookies; refused");
        return loaded;
    }
    let now = config.now();
    for candidate in &family.candidates {
        let decoded = match backend.decode(config, candidate, &family.chunks, now) {
            Ok(decoded) => decoded,
            Err(reason) => {
                tracing::debug!(cookie = name, %reason, "session cookie refused");
                continue;
            }
        };
        let Decoded {
            data,
            permanent,
            issued_at,
            created_at,
            by_fallback_key,
            memory,
            ..
        } = decoded;
        if config.revoked(&data, issued_at) {
            tracing::debug!(
                cookie = name,
                "session cookie revoked by the not_before hook"
            );
        } else if config.cookie_timed_out(issued_at, created_at, now) {
            tracing::debug!(
                cookie = name,
                "session cookie past the idle or absolute timeout"
            );
        } else {
            loaded.session = Session::from_state(State {
                data,
                permanent,
                ..State::default()
            });
            loaded.origin = Some(Origin {
                issued_at,
                created_at,
                by_fallback_key,
                memory,
            });
            break;
        }
    }
    loaded
}

/// Server-side: the cookie names a record. Only an id whose signature
/// verifies reaches the store; an id the store does not know (or whose
/// record expired) is never adopted: the session starts empty and gets a
/// fresh id when first written.
async fn fetch(
    shared: &Shared,
    backend: &StoreBackend,
    family: &Family<'_>,
) -> Result<Loaded, Error> {
    let config = &shared.config;
    let name = &*config.name;
    let mut loaded = empty(family, true);
    let now = config.now();
    for candidate in &family.candidates {
        let Some(id::Verified {
            id,
            by_fallback_key,
            stamp,
        }) = backend.verify_id(name, candidate)
        else {
            tracing::debug!(cookie = name, "session id cookie refused");
            continue;
        };
        let lease = match config.serialize {
            Some(hold) => Some(take_lease(backend, &id, hold).await?),
            None => None,
        };
        let record = match (&stamp, backend.stamps) {
            (Some(seen), true) => backend.store.load_seen(&id, now, seen).await,
            _ => backend.store.load(&id, now).await,
        };
        // The lease goes back unless the session is adopted (the response
        // then gives it back once saved).
        let mut record = match record {
            Ok(Some(record)) => record,
            other => {
                Lease::give_back(lease).await;
                other?;
                tracing::debug!(cookie = name, "session id unknown or expired; not adopted");
                continue;
            }
        };
        // The stamp is the layer's, never the handler's.
        record.data.remove(STAMP_KEY);
        if config.revoked(&record.data, record.created_at) {
            tracing::debug!(
                cookie = name,
                "session revoked by the not_before hook; not adopted"
            );
            Lease::give_back(lease).await;
        } else if record.outlived(now, config.absolute_timeout) {
            tracing::debug!(cookie = name, "session expired; not adopted");
            Lease::give_back(lease).await;
        } else {
            loaded.session = Session::from_state(State {
                data: record.data,
                permanent: record.permanent,
                track_changes: true,
                stored_as: Some((id.clone(), backend.keys.clone(), config.name.clone())),
                ..State::default()
            });
            loaded.origin = Some(Origin {
                issued_at: now,
                created_at: record.created_at,
                by_fallback_key,
                memory: Memory::default(),
            });
            loaded.record = Some(LoadedRecord {
                id,
                created_at: record.created_at,
                expires_at: record.expires_at,
                stamp,
            });
            loaded.lease = std::sync::Mutex::new(lease);
            break;
        }
    }
    Ok(loaded)
}

/// Waits for the session's lease (`serialize_requests`), up to `hold`,
/// and takes it for this request.
#[cfg(feature = "tokio")]
async fn take_lease(
    backend: &StoreBackend,
    id: &SessionId,
    hold: std::time::Duration,
) -> Result<Lease, Error> {
    let holder = id::stamp();
    let deadline = tokio::time::Instant::now() + hold;
    let mut pause = std::time::Duration::from_millis(1);
    while !backend.store.lease(id, &holder, hold).await? {
        if tokio::time::Instant::now() + pause > deadline {
            return Err(Error::with_message(
                ErrorKind::Conflict,
                "another request of this session held it for the whole wait",
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(20));
    }
    Ok(Lease {
        store: backend.store.clone(),
        id: id.clone(),
        holder,
        held: true,
    })
}

/// Without tokio there is no `serialize_requests`, so no lease to take.
#[cfg(not(feature = "tokio"))]
async fn take_lease(
    _: &StoreBackend,
    _: &SessionId,
    _: std::time::Duration,
) -> Result<Lease, Error> {
    Err(Error::unsupported(
        "serialize_requests needs the tokio feature",
    ))
}

/// The lease of a session one request holds (`serialize_requests`).
///
/// It goes back through [`release`](Self::release) once the request's
/// save is done; a request that never gets there (its future dropped when
/// the client went away or a timeout fired, its handler panicked, a second
/// load of it lost the race) gives it back on drop, from a task of its
/// own, rather than make the user's next requests wait out the hold.
pub(crate) struct Lease {
    store: Arc<dyn SessionStore>,
    id: SessionId,
    holder: String,
    /// Not yet given back.
    held: bool,
}

impl Lease {
    /// Gives the lease back; a failure only logs: the lease ends after
    /// its hold anyway.
    pub(crate) async fn release(mut self) {
        let released = self.store.release(&self.id, &self.holder).await;
        self.held = false;
        if let Err(error) = released {
            tracing::warn!(%error, "a session lease was not released; it ends after its hold");
        }
    }

    /// [`release`](Self::release), if there is a lease.
    async fn give_back(lease: Option<Self>) {
        if let Some(lease) = lease {
            lease.release().await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Without Tokio there is no task to give it back from: the lease
        // then ends after its hold.
        #[cfg(feature = "tokio")]
        if self.held
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let (store, id) = (self.store.clone(), self.id.clone());
            let holder = std::mem::take(&mut self.holder);
            runtime.spawn(async move {
                if let Err(error) = store.release(&id, &holder).await {
                    tracing::warn!(%error, "a session lease was not released; it ends after its hold");
                }
            });
        }
    }
}

impl fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionHandle")
            .field("loaded", &self.inner.loaded.get().is_some())
            .finish()
    }
}
