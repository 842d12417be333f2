//! The crate's one error type and the hook that turns a failed save into a
//! response.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use http::{Response, StatusCode};

type BoxError = Box<dyn StdError + Send + Sync>;

/// A session error: what went wrong is [`Error::kind`], the underlying cause
/// (a serde or store error) is kept as [`std::error::Error::source`].
///
/// `Error` is cheap to clone so that it can ride in the extensions of the
/// response that reports it.
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: Option<Box<str>>,
    source: Option<BoxError>,
}

/// What kind of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A key was refused: shorter than 32 bytes, or not found in the
    /// environment.
    InvalidKey,
    /// A value could not be turned into JSON on `insert`.
    Serialize,
    /// A stored value could not be read back as the type asked for on `get`
    /// or `remove`.
    Deserialize,
    /// The encoded session does not fit in the cookie budget; the browser
    /// would have dropped it.
    CookieTooLarge,
    /// `Session` was asked for where no [`SessionLayer`](crate::SessionLayer)
    /// ran (or the path is skipped).
    LayerMissing,
    /// The session store failed (down, slow, full, or refused the data).
    Store,
    /// The session's record disappeared while the request ran (logged out
    /// or expired elsewhere); its changes were not saved, so that a session
    /// ended on purpose is never brought back.
    SessionEnded,
    /// The store cannot do what was asked (Memcached cannot list a user's
    /// sessions).
    Unsupported,
    /// Another request changed a key this request read and then wrote (or
    /// replaced a value a merge operation needed, a list by a string, say);
    /// none of this request's changes were saved, so that no write is lost
    /// silently. The client can retry: the next attempt reads the new
    /// value.
    Conflict,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind) -> Self {
        Self {
            inner: Arc::new(Inner {
                kind,
                message: None,
                source: None,
            }),
        }
    }

    pub(crate) fn with_message(kind: ErrorKind, message: impl Into<Box<str>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                kind,
                message: Some(message.into()),
                source: None,
            }),
        }
    }

    pub(crate) fn with_source(kind: ErrorKind, source: impl Into<BoxError>) -> Self {
        Self {
            inner: Arc::new(Inner {
                kind,
                message: None,
                source: Some(source.into()),
            }),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// An error of a session store, keeping `source` as its cause. Store
    /// implementations build their errors with it.
    pub fn store(source: impl Into<BoxError>) -> Self {
        Self::with_source(ErrorKind::Store, source)
    }

    /// An error saying that another request changed what this request's
    /// changes depend on, so none of them were applied
    /// ([`ErrorKind::Conflict`]): for stores that check
    /// [`Changes::expected`](crate::store::Changes::expected) on their
    /// server rather than through
    /// [`Changes::apply_to`](crate::store::Changes::apply_to).
    pub fn conflict(what: &'static str) -> Self {
        Self::with_message(ErrorKind::Conflict, what)
    }

    /// An error saying the store cannot do what was asked; `what` says
    /// what (stores that cannot answer an optional method return it).
    pub fn unsupported(what: &'static str) -> Self {
        Self::with_message(ErrorKind::Unsupported, what)
    }

    /// The HTTP status a response reporting this error should carry: 503
    /// when the store failed (try again later), 409 when the session ended
    /// during the request or another request changed what this one read
    /// ([`ErrorKind::Conflict`]), 501 when the store cannot do what was asked,
    /// 500 otherwise (the server could not keep its promise).
    pub fn status(&self) -> StatusCode {
        match self.inner.kind {
            ErrorKind::Store => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::SessionEnded | ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Unsupported => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn description(&self) -> &'static str {
        match self.inner.kind {
            ErrorKind::InvalidKey => "invalid session key",
            ErrorKind::Serialize => "session value could not be serialized",
            ErrorKind::Deserialize => "session value could not be deserialized",
            ErrorKind::CookieTooLarge => "session does not fit in the cookie budget",
            ErrorKind::LayerMissing => "SessionLayer is not installed on this route",
            ErrorKind::Store => "session store failed",
            ErrorKind::SessionEnded => "the session ended while the request ran",
            ErrorKind::Unsupported => "the session store does not support this",
            ErrorKind::Conflict => {
                "another request changed the session values this request read; nothing was saved"
            }
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("session_layer::Error");
        d.field("kind", &self.inner.kind);
        if let Some(message) = &self.inner.message {
            d.field("message", message);
        }
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())?;
        if let Some(message) = &self.inner.message {
            write!(f, ": {message}")?;
        }
        Ok(())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// Marks a response the `Session` extractor produced because the store
/// could not be read, so the layer answers it through the error handler.
#[derive(Clone)]
pub(crate) struct LoadFailed(pub(crate) Error);

/// Turns an [`Error`] met while loading or saving the session into the
/// response the client gets instead of the handler's.
///
/// The layer always emits a `tracing` error event and puts the [`Error`] in
/// the extensions of the returned response, whatever the handler does, so a
/// custom handler cannot make a failure silent. Plain closures
/// `Fn(&Error) -> Response<B>` implement this trait.
pub trait ErrorHandler<B>: Clone + Send + Sync + 'static {
    /// Builds the response that replaces the handler's.
    fn handle(&self, error: &Error) -> Response<B>;
}

/// The default [`ErrorHandler`]: an empty body with [`Error::status`], so no
/// detail leaks to the client.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultErrorHandler;

impl<B: Default> ErrorHandler<B> for DefaultErrorHandler {
    fn handle(&self, error: &Error) -> Response<B> {
        let mut response = Response::new(B::default());
        *response.status_mut() = error.status();
        response
    }
}

impl<B, F> ErrorHandler<B> for F
where
    F: Fn(&Error) -> Response<B> + Clone + Send + Sync + 'static,
{
    fn handle(&self, error: &Error) -> Response<B> {
        self(error)
    }
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for Error {
    /// A handler that returns `Result<_, session_layer::Error>` answers with
    /// [`Error::status`] and a short fixed body; the detail goes to the log,
    /// never to the client.
    fn into_response(self) -> axum_core::response::Response {
        tracing::error!(error = %self, source = ?StdError::source(&self), "session error in handler");
        (self.status(), self.description()).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_source_and_kind() {
        let json = serde_json::from_str::<u8>("x").unwrap_err();
        let err = Error::with_source(ErrorKind::Deserialize, json);
        assert_eq!(err.kind(), ErrorKind::Deserialize);
        let source = StdError::source(&err).expect("source kept");
        assert!(source.downcast_ref::<serde_json::Error>().is_some());
        assert_eq!(err.to_string(), "session value could not be deserialized");
    }

    #[test]
    fn default_handler_gives_an_empty_500() {
        let err = Error::new(ErrorKind::CookieTooLarge);
        let response: Response<String> = DefaultErrorHandler.handle(&err);
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.body().is_empty());
    }
}
