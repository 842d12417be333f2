//! `SessionService`: the request path, top to bottom.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use crate::error::{DefaultErrorHandler, ErrorHandler};
use crate::future::ResponseFuture;
use crate::layer::Shared;
use crate::session::SessionHandle;

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
}

impl<S, H, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S, H>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    H: ErrorHandler<ResBody>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, H>;

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
