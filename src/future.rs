//! `ResponseFuture`: what happens to the response on its way out.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::header::{SET_COOKIE, VARY};
use http::{HeaderMap, HeaderValue, Response};
use pin_project_lite::pin_project;

use crate::codec::chunk;
use crate::config::header_value;
use crate::error::{Error, ErrorHandler};
use crate::session::{Loaded, SessionHandle};

pin_project! {
    /// The response future of [`SessionService`](crate::SessionService):
    /// once the inner service answers, it writes the session's cookie (or
    /// replaces the response through the error handler when the session
    /// cannot be saved).
    #[derive(Debug)]
    pub struct ResponseFuture<F, H> {
        #[pin]
        inner: F,
        session: Option<(SessionHandle, H)>,
    }
}

impl<F, H> ResponseFuture<F, H> {
    pub(crate) fn new(inner: F, handle: SessionHandle, error_handler: H) -> Self {
        Self {
            inner,
            session: Some((handle, error_handler)),
        }
    }

    pub(crate) fn untouched(inner: F) -> Self {
        Self {
            inner,
            session: None,
        }
    }
}

impl<F, H, B, E> Future for ResponseFuture<F, H>
where
    F: Future<Output = Result<Response<B>, E>>,
    H: ErrorHandler<B>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let Some((handle, error_handler)) = this.session.take() else {
            return Poll::Ready(Ok(response));
        };
        Poll::Ready(Ok(finish(&handle, &error_handler, response)))
    }
}

/// Saves the session into the response, or swaps the response for the
/// error handler's when it cannot be saved.
fn finish<B, H: ErrorHandler<B>>(
    handle: &SessionHandle,
    error_handler: &H,
    mut response: Response<B>,
) -> Response<B> {
    // A session no handler asked for was neither read nor changed.
    let Some(loaded) = handle.loaded() else {
        return response;
    };
    match save(handle, loaded, &mut response) {
        Ok(()) => response,
        Err(error) => {
            tracing::error!(%error, "session could not be saved; answering with the error handler's response");
            let mut replacement = error_handler.handle(&error);
            replacement.extensions_mut().insert(error);
            replacement
        }
    }
}

/// The design's step 5: Vary when accessed; delete when emptied; write
/// when modified, or when a permanent session is due for a refresh, or
/// when a fallback key verified it; nothing at all after a 5xx unless
/// configured.
fn save<B>(
    handle: &SessionHandle,
    loaded: &Loaded,
    response: &mut Response<B>,
) -> Result<(), Error> {
    let shared = handle.shared();
    let config = &shared.config;
    let state = loaded.session.state();
    if state.accessed {
        add_vary_cookie(response.headers_mut());
    }
    if response.status().is_server_error() && !config.persist_on_server_error {
        return Ok(());
    }
    let now = config.now();
    let headers = response.headers_mut();
    if state.modified && state.is_empty() {
        if loaded.had_cookie {
            headers.append(
                SET_COOKIE,
                header_value(config.removal_cookie(&config.name)),
            );
        }
        expire_chunks(headers, handle, loaded, 1);
        return Ok(());
    }
    let reissue = loaded.origin.as_ref().is_some_and(|origin| {
        origin.by_fallback_key
            || (state.permanent
                && config.refresh_each_request
                && now.saturating_sub(origin.issued_at) >= config.refresh_interval.as_secs())
    });
    if state.modified || reissue {
        let lines = shared.set_cookies(&state.data, state.permanent, now, state.tags.as_ref())?;
        let written = lines.len();
        for line in lines {
            headers.append(SET_COOKIE, header_value(line));
        }
        expire_chunks(headers, handle, loaded, written);
    }
    Ok(())
}

/// Deletes the chunk cookies the request carried from index `from` on: a
/// session that shrank, or was emptied, leaves none behind.
fn expire_chunks(headers: &mut HeaderMap, handle: &SessionHandle, loaded: &Loaded, from: usize) {
    let config = &handle.shared().config;
    for &index in loaded.chunks.iter().filter(|&&i| i >= from) {
        let name = chunk::chunk_name(&config.name, index);
        headers.append(SET_COOKIE, header_value(config.removal_cookie(&name)));
    }
}

/// Adds `Cookie` to `Vary` unless it (or `*`) is already there, so caches
/// never serve one user's page to another.
fn add_vary_cookie(headers: &mut HeaderMap) {
    let present = headers.get_all(VARY).iter().any(|value| {
        value.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|token| token.trim() == "*" || token.trim().eq_ignore_ascii_case("cookie"))
        })
    });
    if !present {
        headers.append(VARY, HeaderValue::from_static("Cookie"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vary_is_added_once() {
        let mut headers = HeaderMap::new();
        add_vary_cookie(&mut headers);
        add_vary_cookie(&mut headers);
        assert_eq!(headers.get_all(VARY).iter().count(), 1);

        let mut headers = HeaderMap::new();
        headers.insert(VARY, HeaderValue::from_static("Accept-Encoding, cookie"));
        add_vary_cookie(&mut headers);
        assert_eq!(headers.get_all(VARY).iter().count(), 1);

        let mut headers = HeaderMap::new();
        headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
        add_vary_cookie(&mut headers);
        let all: Vec<_> = headers.get_all(VARY).iter().collect();
        assert_eq!(all, ["Accept-Encoding", "Cookie"]);
    }
}
