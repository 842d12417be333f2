//! `Sessions`: acting on stored sessions other than the request's own.

use std::fmt;
use std::sync::Arc;

use crate::config::Config;
use crate::error::Error;
use crate::id;
use crate::key::Keyring;
use crate::store::SessionStore;

/// The stored sessions of a server-side layer, named by their public
/// handles ([`Session::handle`](crate::Session::handle)): end one from a
/// "your devices" page, an admin tool, or after a password change.
///
/// Get it from [`SessionLayer::sessions`](crate::SessionLayer::sessions)
/// and hand it to handlers as state; clones share the store.
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
}
