//! `Sessions`: acting on stored sessions other than the request's own.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::config::Config;
use crate::error::Error;
use crate::id;
use crate::key::Keyring;
use crate::store::{OWNER_META_KEY, Record, SessionId, SessionStore};

/// The stored sessions of a server-side layer, named by their public
/// handles ([`Session::handle`](crate::Session::handle)): end one from a
/// "your devices" page, an admin tool, or after a password change.
///
/// Get it from [`SessionLayer::sessions`](crate::SessionLayer::sessions)
/// once the layer is configured (it keeps the layer's settings as they
/// are then) and hand it to handlers as state; clones share the store.
///
/// ```
/// # #[cfg(all(feature = "axum", feature = "memory-store"))]
/// # fn main() {
/// use axum::extract::{Path, State};
/// use axum::routing::delete;
/// use axum::Router;
/// use session_layer::store::MemoryStore;
/// use session_layer::{Key, Sessions, SessionLayer};
///
/// async fn sign_out(
///     State(sessions): State<Sessions>,
///     Path(handle): Path<String>,
/// ) -> Result<&'static str, session_layer::Error> {
///     // Check first that the handle is one of this user's sessions.
///     Ok(if sessions.end(&handle).await? { "ended" } else { "no such session" })
/// }
///
/// let layer = SessionLayer::new(Key::generate()).with_store(MemoryStore::new());
/// let sessions = layer.sessions().expect("a server-side layer");
/// let app: Router = Router::new()
///     .route("/sessions/{handle}", delete(sign_out))
///     .with_state(sessions)
///     .layer(layer);
/// # }
/// # #[cfg(not(all(feature = "axum", feature = "memory-store")))]
/// # fn main() {}
/// ```
#[derive(Clone)]
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    keys: Keyring,
    /// The layer's configuration: its cookie name (handles are bound to
    /// it) and its clock.
    config: Arc<Config>,
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    pub(crate) fn new(store: Arc<dyn SessionStore>, keys: Keyring, config: Arc<Config>) -> Self {
        Self {
            store,
            keys,
            config,
        }
    }

    /// Ends the session `handle` names: its record is removed, so its
    /// cookie is worth nothing from the next request on (a coherent cache
    /// elsewhere drops its copy when the store's message is in). Returns
    /// whether a live session ended: false, touching nothing, for a string
    /// that is not a handle of this layer's, and for a session that had
    /// already ended (or expired).
    ///
    /// A handle says which session, not whose: check that it belongs to
    /// the user asking before ending it.
    ///
    /// # Errors
    /// The store's, when it cannot delete.
    pub async fn end(&self, handle: &str) -> Result<bool, Error> {
        let Some(id) = id::from_handle(&self.keys, &self.config.name, handle) else {
            return Ok(false);
        };
        Ok(self.store.take(&id, self.config.now()).await?.is_some())
    }

    /// The live sessions of `owner` ([`Session::set_owner`](crate::Session::set_owner)),
    /// most recently used first: what a "your devices" page shows. The
    /// store reads them from its owner index: one round trip on SQL,
    /// MongoDB and a single Redis server (one script), two rounds on a
    /// Redis Cluster (the index, then the records); docs/stores.md gives
    /// each store's cost.
    ///
    /// # Errors
    /// The store's; [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported)
    /// from a store that cannot list sessions (Memcached).
    pub async fn of(&self, owner: &str) -> Result<Vec<SessionInfo>, Error> {
        let now = self.config.now();
        let mut listed: Vec<SessionInfo> = (self.owned(owner, now).await?.into_iter())
            .filter(|(_, record)| self.live(record, now))
            .map(|(id, record)| self.info(&id, &record, now))
            .collect();
        listed.sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.handle.cmp(&b.handle)));
        Ok(listed)
    }

    /// Ends the session `handle` names if it is one of `owner`'s: what a
    /// "sign out that device" button calls. Returns whether a live session
    /// ended (false for a handle of another owner's session, touching it
    /// not). A session of the owner's past this layer's absolute timeout
    /// is removed too (another layer on the store may still serve it), and
    /// counts as not live.
    ///
    /// # Errors
    /// The store's, as for [`of`](Self::of).
    pub async fn end_of(&self, owner: &str, handle: &str) -> Result<bool, Error> {
        let Some(id) = id::from_handle(&self.keys, &self.config.name, handle) else {
            return Ok(false);
        };
        let now = self.config.now();
        if !self
            .owned(owner, now)
            .await?
            .iter()
            .any(|(own, _)| *own == id)
        {
            return Ok(false);
        }
        let taken = self.store.take(&id, now).await?;
        Ok(taken.is_some_and(|record| self.live(&record, now)))
    }

    /// Ends every session of `owner` ("sign out everywhere"), returning
    /// how many live ones ended. Every session of the owner's that the
    /// store holds goes, those past this layer's absolute timeout too
    /// (uncounted): a layer sharing the store with a longer one, or this
    /// one after its timeout was raised, would still serve them. It lists
    /// again after ending what it found,
    /// until a listing finds nothing more (a login of the owner's in flight
    /// meanwhile is caught if it lands by then): one listing when there
    /// was nothing to end, usually two otherwise, and never more than
    /// three.
    ///
    /// # Errors
    /// The store's, as for [`of`](Self::of); sessions ended before the
    /// failure stay ended.
    pub async fn end_all(&self, owner: &str) -> Result<u64, Error> {
        self.end_owned(owner, None).await
    }

    /// Ends every session of `owner` but the one `keep` names (the
    /// current one's [`handle`](crate::Session::handle)): "sign out
    /// everywhere else", after a password change. Returns how many ended.
    ///
    /// `keep` must be a handle of this layer's: a string that is not one
    /// (empty, mistyped, made under a key no longer in the keyring) keeps
    /// nothing, and every session of `owner` ends, the current one
    /// included.
    ///
    /// # Errors
    /// As [`end_all`](Self::end_all).
    pub async fn end_all_except(&self, owner: &str, keep: &str) -> Result<u64, Error> {
        let keep = id::from_handle(&self.keys, &self.config.name, keep);
        // A handle that names nothing keeps nothing: every session ends.
        self.end_owned(owner, keep.as_ref()).await
    }

    async fn end_owned(&self, owner: &str, keep: Option<&SessionId>) -> Result<u64, Error> {
        let now = self.config.now();
        let mut ended = 0;
        // A login racing this one (an id cycled: the old record taken, the
        // new one created a moment later) can slip between a listing and
        // the takes; a listing that finds nothing left to end closes it.
        for _ in 0..END_PASSES {
            let mut took = false;
            for (id, _) in self.owned(owner, now).await? {
                if Some(&id) == keep {
                    continue;
                }
                if let Some(record) = self.store.take(&id, now).await? {
                    took = true;
                    ended += u64::from(self.live(&record, now));
                }
            }
            if !took {
                break;
            }
        }
        Ok(ended)
    }

    /// The store's answer, checked again here: a store of one's own that
    /// lists another owner's session is not believed. Sessions past this
    /// layer's absolute timeout stay in (to be ended: `live` tells them).
    async fn owned(&self, owner: &str, now: u64) -> Result<Vec<(SessionId, Record)>, Error> {
        let mut owned = self.store.owned(owner, now).await?;
        owned.retain(|(_, record)| record.owner() == Some(owner) && !record.is_expired(now));
        Ok(owned)
    }

    /// Whether this layer still serves the session: neither expired nor
    /// past its absolute timeout.
    fn live(&self, record: &Record, now: u64) -> bool {
        !record.outlived(now, self.config.absolute_timeout)
    }

    fn info(&self, id: &SessionId, record: &Record, now: u64) -> SessionInfo {
        // Every write and refresh sets the expiry to the idle timeout (or
        // the lifetime) from that moment: counting back gives the last use,
        // to the layer's refresh interval. Past an absolute timeout's cap
        // the creation time is the best lower bound.
        let idle = (self.config.idle_timeout)
            .unwrap_or(self.config.lifetime)
            .as_secs();
        let last_used = record
            .expires_at
            .saturating_sub(idle)
            .clamp(record.created_at, now.max(record.created_at));
        SessionInfo {
            handle: id::handle(&self.keys, &self.config.name, id),
            created_at: record.created_at,
            last_used,
            expires_at: record.expires_at,
            meta: record.data.get(OWNER_META_KEY).cloned(),
        }
    }
}

/// How many listings `end_all` makes at most: it lists again until one
/// finds nothing more to end.
const END_PASSES: usize = 3;

/// One of an owner's sessions, as [`Sessions::of`] lists it. Serializes as
/// a JSON object with these field names (times in seconds since the Unix
/// epoch), ready for a sessions page.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The session's public handle: compare it with the current session's
    /// [`handle`](crate::Session::handle), pass it to
    /// [`Sessions::end_of`] to end it.
    pub handle: String,
    /// When the session was created (or its id last cycled: a login).
    pub created_at: u64,
    /// When it was last written or refreshed, to the layer's refresh
    /// interval.
    pub last_used: u64,
    /// When it expires unless used again.
    pub expires_at: u64,
    /// What the application recorded with
    /// [`Session::set_owner_meta`](crate::Session::set_owner_meta).
    pub meta: Option<Value>,
}
