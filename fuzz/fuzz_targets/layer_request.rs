//! The whole layer on a request whose Cookie header is attacker bytes:
//! the handler always runs with a session (empty or genuine), the answer
//! is never a 5xx, and nothing panics.
#![no_main]

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::LazyLock;
use std::task::{Context, Poll, Waker};

use http::{Request, Response, header::COOKIE};
use libfuzzer_sys::fuzz_target;
use session_layer::{Key, Session, SessionLayer, SessionService};

type Handler =
    fn(
        Request<String>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Response<String>, Infallible>> + Send>>;

fn handler(
    request: Request<String>,
) -> std::pin::Pin<Box<dyn Future<Output = Result<Response<String>, Infallible>> + Send>> {
    Box::pin(async move {
        let session = Session::from_request(&request)
            .await
            .expect("the layer ran");
        let n = session.get::<u64>("n").ok().flatten().unwrap_or(0);
        session
            .insert("n", n.wrapping_add(1))
            .expect("a number serializes");
        Ok(Response::new(String::new()))
    })
}

static LAYERS: LazyLock<[SessionLayer; 2]> = LazyLock::new(|| {
    let key = Key::from_bytes(&[7; 32]).unwrap();
    [
        SessionLayer::signed(key.clone()),
        SessionLayer::private(key),
    ]
});

fuzz_target!(|data: &[u8]| {
    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    for layer in LAYERS.iter() {
        let mut service: SessionService<_, _> =
            tower_layer::Layer::layer(layer, tower_service_fn(handler));
        let mut request = Request::new(String::new());
        request.headers_mut().insert(COOKIE, value.clone());
        let future = tower_service::Service::call(&mut service, request);
        let mut future = pin!(future);
        // Client-side sessions never wait: one poll answers.
        let Poll::Ready(response) = future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        else {
            panic!("a client-side session answered Pending");
        };
        let response = response.unwrap();
        assert!(
            !response.status().is_server_error(),
            "{}",
            response.status()
        );
    }
});

/// `tower::service_fn` without depending on tower.
fn tower_service_fn(f: Handler) -> FnService {
    FnService(f)
}

#[derive(Clone, Copy)]
struct FnService(Handler);

impl tower_service::Service<Request<String>> for FnService {
    type Response = Response<String>;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Response<String>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<String>) -> Self::Future {
        (self.0)(request)
    }
}
