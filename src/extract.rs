//! The Axum extractor and its rejection.

use std::fmt;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;

use crate::error::{Error, ErrorKind, LoadFailed};
use crate::session::Session;

/// Why `Session` could not be extracted: no
/// [`SessionLayer`](crate::SessionLayer) ran for the request (the layer is
/// missing, or the path is skipped), a mistake in the application answered
/// with 500 and a body saying so; or the session store could not be read,
/// answered through the layer's error handler (503 by default) rather than
/// with an empty session that would overwrite the user's data.
#[derive(Debug)]
pub struct SessionRejection {
    error: Error,
}

impl SessionRejection {
    /// The underlying error.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// The status of the rejection's response.
    pub fn status(&self) -> StatusCode {
        self.error.status()
    }
}

impl fmt::Display for SessionRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl std::error::Error for SessionRejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl IntoResponse for SessionRejection {
    /// Where the layer is missing: 500 with a body saying so. Where the
    /// store failed: the layer replaces this response with its error
    /// handler's (503 by default), so it answers like a failed save.
    fn into_response(self) -> Response {
        if self.error.kind() == ErrorKind::LayerMissing {
            tracing::error!("a handler asked for Session on a route without SessionLayer");
            return (self.status(), self.error.to_string()).into_response();
        }
        let mut response = self.status().into_response();
        response.extensions_mut().insert(LoadFailed(self.error));
        response
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Session::from_parts(parts)
            .await
            .map_err(|error| SessionRejection { error })
    }
}

/// `Option<Session>` is `None` where no layer ran (a skipped path, say)
/// rather than a rejection.
impl<S: Send + Sync> OptionalFromRequestParts<S> for Session {
    type Rejection = SessionRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        match Session::from_parts(parts).await {
            Ok(session) => Ok(Some(session)),
            Err(error) if error.kind() == ErrorKind::LayerMissing => Ok(None),
            Err(error) => Err(SessionRejection { error }),
        }
    }
}
