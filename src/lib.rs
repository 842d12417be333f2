//! Sessions for [Axum](https://docs.rs/axum) and any Tower service, in the
//! spirit of Flask's session interface.
//!
//! [`SessionLayer`] reads the session cookie of each request into a
//! change-tracking map that handlers take as [`Session`], and on the way out
//! signs the data back into a `Set-Cookie` header when it changed.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! # #[cfg(feature = "axum")] {
//! use axum::{Router, body::Body, routing::get};
//! use http::{Request, header};
//! use session_layer::{Key, Session, SessionLayer};
//! use tower::ServiceExt;
//!
//! async fn visits(session: Session) -> Result<String, session_layer::Error> {
//!     let n = session.update("visits", |n: Option<u64>| n.unwrap_or(0) + 1)?;
//!     Ok(format!("visit {n}"))
//! }
//!
//! let app = Router::new()
//!     .route("/", get(visits))
//!     .layer(SessionLayer::new(Key::generate()));
//!
//! // The first visit sets the cookie...
//! let response = app.clone().oneshot(Request::new(Body::empty())).await.unwrap();
//! let set_cookie = response.headers()[header::SET_COOKIE].to_str().unwrap();
//! let cookie = set_cookie.split(';').next().unwrap().to_owned();
//!
//! // ...and the browser sends it back.
//! let request = Request::builder().header(header::COOKIE, cookie).body(Body::empty()).unwrap();
//! let response = app.oneshot(request).await.unwrap();
//! let body = axum::body::to_bytes(response.into_body(), 64).await.unwrap();
//! assert_eq!(body, "visit 2");
//! # }}
//! ```
//!
//! # What the layer does
//!
//! - A request's cookie is verified (and the store read) only when a
//!   handler asks for the session; routes that never do cost one small
//!   handle in the request extensions (about 0.1 µs, `docs/benchmarks.md`).
//! - Forged, altered, truncated, expired or otherwise bad cookies give an
//!   empty session, never an error.
//! - A read adds `Vary: Cookie`; a change writes the cookie; emptying the
//!   session deletes it; a permanent session is refreshed (throttled).
//! - A session that cannot be saved (too big for the cookies, store down)
//!   replaces the response with the [`ErrorHandler`]'s (empty 500 or 503
//!   by default), logs a `tracing` error and puts the [`Error`] in the
//!   response extensions: nothing a handler stored is dropped silently.
//! - With [`SessionLayer::with_store`] the data lives on the server
//!   ([`store`]) and the cookie carries a signed random id.
//!
//! The cookie formats are specified byte by byte in `docs/cookie-format.md`;
//! `docs/stores.md`, `docs/security.md`, `docs/migrating-from-flask.md` and
//! `docs/benchmarks.md` cover the rest.
//!
//! # Without Axum
//!
//! Disable the default `axum` feature and call [`Session::from_request`]
//! (or [`Session::from_parts`]) in any Tower service behind the layer.
//!
//! # Dependencies
//!
//! Cryptography comes from RustCrypto's `hmac`, `sha2`, `hkdf` and
//! `chacha20poly1305` (audited, constant-time verification; the last for
//! private cookies), randomness from `getrandom` (the OS CSPRNG),
//! `Set-Cookie` formatting from `cookie`, and the middleware traits from
//! `tower-layer`/`tower-service` alone. The default features add
//! `axum-core` (the extractor) and Tokio's `rt`, `time` and `sync` parts
//! (the memory store); every other store and codec sits behind its own
//! feature.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod config;
mod cookie;
mod data;
mod error;
#[cfg(feature = "axum")]
mod extract;
mod future;
mod id;
mod key;
mod layer;
mod load;
mod service;
mod session;
mod sessions;

pub mod codec;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::{SameSite, Transport};
pub use cookie::MAX_CHUNKS;
pub use data::SessionData;
pub use error::{DefaultErrorHandler, Error, ErrorHandler, ErrorKind};
#[cfg(feature = "axum")]
pub use extract::SessionRejection;
pub use future::ResponseFuture;
pub use key::{Key, Keyring, MIN_KEY_LEN};
pub use layer::{Flask, Keyed, SessionLayer};
pub use service::SessionService;
pub use session::{MAX_OWNER_CHARS, MAX_OWNER_META, Session};
pub use sessions::{SessionInfo, Sessions};

/// The Rust blocks of the README and the guides, compiled (and run where
/// they can) as doc tests, so the documentation cannot drift from the API.
/// They use every feature, so they run with `--all-features`.
#[cfg(all(
    doctest,
    feature = "axum",
    feature = "memory-store",
    feature = "file-store",
    feature = "redis-store",
    feature = "caching-store",
    feature = "flask",
    feature = "testing"
))]
mod guides {
    #[doc = include_str!("../README.md")]
    struct Readme;
    #[doc = include_str!("../docs/stores.md")]
    struct Stores;
    #[doc = include_str!("../docs/security.md")]
    struct Security;
    #[doc = include_str!("../docs/migrating-from-flask.md")]
    struct MigratingFromFlask;
    #[doc = include_str!("../docs/cookie-format.md")]
    struct CookieFormat;
    #[doc = include_str!("../docs/choosing-a-mode.md")]
    struct ChoosingAMode;
    #[doc = include_str!("../docs/architecture.md")]
    struct Architecture;
    #[doc = include_str!("../docs/benchmarks.md")]
    struct Benchmarks;
}
