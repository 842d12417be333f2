//! The Axum extractor and its rejection.

use std::fmt;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;

use crate::error::{Error, ErrorKind};
use crate::session::Session;

/// Why `Session` could not be extracted: today only that no
/// [`SessionLayer`](crate::SessionLayer) ran for the request (the layer is
/// missing, or the path is skipped). Answers 500 with a body saying so,
/// since it is a mistake in the application, not the client's.
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
    fn into_response(self) -> Response {
        if self.error.kind() == ErrorKind::LayerMissing {
            tracing::error!("a handler asked for Session on a route without SessionLayer");
        }
        (self.status(), self.error.to_string()).into_response()
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
