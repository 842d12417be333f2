//! `SessionService`: the request path, top to bottom.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use crate::backend::Shared;
use crate::error::{DefaultErrorHandler, ErrorHandler};
use crate::future::ResponseFuture;
use crate::load::SessionHandle;

/// The service [`SessionLayer`](crate::SessionLayer) wraps around another:
/// it hands each request a session and saves it from the response.
#[derive(Debug, Clone)]
pub struct SessionService<S, H = DefaultErrorHandler> {
    inner: S,
    shared: Arc<Shared>,
    error_handler: H,
}

impl<S, H> SessionService<S, H> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>, error_handler: H) -> Self {
        Self {
            inner,
            shared,
            error_handler,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, H, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S, H>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    H: ErrorHandler<ResBody>,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, H, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // 1. Skipped paths go through untouched: no session, no cookie.
        if self.shared.config.is_skipped(request.uri().path()) {
            return ResponseFuture::untouched(self.inner.call(request));
        }
        // 2. Give the request its session handle. The cookie is read and
        //    verified only when a handler asks for the session, so routes
        //    that never do pay for nothing but this handle.
        let handle = SessionHandle::new(self.shared.clone());
        request.extensions_mut().insert(handle.clone());
        // 3. Call the inner service; 4. the future saves the session from
        //    its response.
        ResponseFuture::new(self.inner.call(request), handle, self.error_handler.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::header::{COOKIE, SET_COOKIE};
    use tower::{Layer, ServiceExt, service_fn};

    use super::*;
    use crate::{Key, Session, SessionLayer};

    /// The layer on a bare `service_fn`, no Axum involved.
    async fn counter(request: Request<String>) -> Result<Response<String>, Infallible> {
        let session = Session::from_request(&request).await.expect("layer ran");
        let n = session
            .update("n", |n: Option<u32>| n.unwrap_or(0) + 1)
            .unwrap();
        Ok(Response::new(n.to_string()))
    }

    #[tokio::test]
    async fn works_on_any_tower_service() {
        let service = SessionLayer::new(Key::generate()).layer(service_fn(counter));
        let response = service
            .clone()
            .oneshot(Request::new(String::new()))
            .await
            .unwrap();
        assert_eq!(response.body(), "1");
        let cookie = response.headers()[SET_COOKIE].to_str().unwrap();
        let cookie = cookie.split(';').next().unwrap().to_owned();

        let request = Request::builder()
            .header(COOKIE, cookie)
            .body(String::new())
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(response.body(), "2");
    }

    #[tokio::test]
    async fn without_the_layer_the_session_is_a_clear_error() {
        let request = Request::new(String::new());
        let error = Session::from_request(&request).await.unwrap_err();
        assert_eq!(error.kind(), crate::ErrorKind::LayerMissing);
    }

    #[tokio::test]
    async fn an_untouched_session_costs_no_header() {
        let service =
            SessionLayer::new(Key::generate()).layer(service_fn(|_: Request<String>| async {
                Ok::<_, Infallible>(Response::new(String::new()))
            }));
        let request = Request::builder()
            .header(COOKIE, "session=garbage")
            .body(String::new())
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert!(response.headers().is_empty());
    }

    /// `get_ref`, `get_mut` and `into_inner` reach the wrapped service: the
    /// one `into_inner` gives back runs without the layer.
    #[tokio::test]
    async fn the_inner_service_is_reachable() {
        async fn has_session(request: Request<String>) -> Result<Response<String>, Infallible> {
            let found = Session::from_request(&request).await.is_ok();
            Ok(Response::new(found.to_string()))
        }
        let mut service = SessionLayer::new(Key::generate()).layer(service_fn(has_session));
        let _: &_ = service.get_ref();
        let _: &mut _ = service.get_mut();
        let wrapped = service
            .clone()
            .oneshot(Request::new(String::new()))
            .await
            .unwrap();
        assert_eq!(wrapped.body(), "true");
        let inner = service.into_inner();
        let bare = inner.oneshot(Request::new(String::new())).await.unwrap();
        assert_eq!(bare.body(), "false");
    }
}
