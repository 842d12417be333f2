//! The session token in a header, for clients that keep no cookies: every
//! mode (signed, private, a store), `Authorization: Bearer`, and a header
//! beside the cookie.
#![cfg(all(feature = "axum", feature = "memory-store"))]

mod common;

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use common::body_text;
use http::header::{AUTHORIZATION, COOKIE, SET_COOKIE, VARY};
use http::{HeaderName, Request, Response, StatusCode};
use session_layer::store::MemoryStore;
use session_layer::{Error, Key, Session, SessionLayer, Transport};
use tower::ServiceExt;

const TOKEN: HeaderName = HeaderName::from_static("x-session-token");

fn key() -> Key {
    Key::from_bytes(&[7; 32]).unwrap()
}

async fn count(session: Session) -> Result<String, Error> {
    Ok(session
        .update("n", |n: Option<u64>| n.unwrap_or(0) + 1)?
        .to_string())
}

async fn read(session: Session) -> Result<String, Error> {
    Ok(session.get::<u64>("n")?.unwrap_or(0).to_string())
}

async fn big(session: Session) -> Result<&'static str, Error> {
    session.insert("big", "x".repeat(6000))?;
    Ok("big")
}

fn app(layer: SessionLayer) -> Router {
    Router::new()
        .route("/", get(count))
        .route("/read", get(read))
        .route("/big", post(big))
        .route(
            "/cycle",
            post(|session: Session| async move {
                session.cycle_id();
                "cycled"
            }),
        )
        .route(
            "/flush",
            post(|session: Session| async move {
                session.flush();
                "flushed"
            }),
        )
        .layer(layer.secure(false))
}

/// A client that keeps no cookies: it stores the token header it is
/// given, drops it when the header comes back empty, and sends it back in
/// `header` (as `Authorization: Bearer` when `bearer`).
struct ApiClient {
    token: Option<String>,
    bearer: bool,
}

impl ApiClient {
    fn new(bearer: bool) -> Self {
        Self {
            token: None,
            bearer,
        }
    }

    async fn send(&mut self, app: &Router, method: &str, uri: &str) -> Response<Body> {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = &self.token {
            request = if self.bearer {
                request.header(AUTHORIZATION, format!("Bearer {token}"))
            } else {
                request.header(TOKEN, token.as_str())
            };
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert!(
            response.headers().get(SET_COOKIE).is_none(),
            "no cookie for a header client"
        );
        if let Some(token) = response.headers().get(TOKEN) {
            let token = token.to_str().unwrap();
            self.token = (!token.is_empty()).then(|| token.to_owned());
        }
        response
    }

    async fn text(&mut self, app: &Router, method: &str, uri: &str) -> (StatusCode, String) {
        let response = self.send(app, method, uri).await;
        (response.status(), body_text(response).await)
    }
}

async fn counts_in_the_header(layer: SessionLayer, bearer: bool) {
    let app = app(layer);
    let mut client = ApiClient::new(bearer);
    let first = client.send(&app, "GET", "/").await;
    let vary: Vec<_> = first.headers().get_all(VARY).iter().collect();
    let expected = if bearer {
        "authorization"
    } else {
        "x-session-token"
    };
    assert_eq!(
        vary,
        [expected],
        "varies on what carries the token, not Cookie"
    );
    assert_eq!(body_text(first).await, "1");
    assert!(client.token.is_some(), "a new session hands out its token");
    assert_eq!(client.text(&app, "GET", "/").await.1, "2");
    assert_eq!(client.text(&app, "GET", "/").await.1, "3");
    assert_eq!(client.text(&app, "GET", "/read").await.1, "3");
    // Without its token, a client has no session.
    assert_eq!(
        ApiClient::new(bearer).text(&app, "GET", "/read").await.1,
        "0"
    );
    // The session ends: the header comes back empty and the client drops it.
    let flushed = client.send(&app, "POST", "/flush").await;
    assert_eq!(flushed.headers().get(TOKEN).unwrap(), "");
    assert!(client.token.is_none());
    assert_eq!(client.text(&app, "GET", "/read").await.1, "0");
}

#[tokio::test]
async fn every_mode_works_with_the_token_in_a_header() {
    for bearer in [false, true] {
        let transport = || {
            if bearer {
                Transport::Bearer(TOKEN)
            } else {
                Transport::Header(TOKEN)
            }
        };
        counts_in_the_header(SessionLayer::signed(key()).transport(transport()), bearer).await;
        counts_in_the_header(SessionLayer::private(key()).transport(transport()), bearer).await;
        counts_in_the_header(
            SessionLayer::new(key())
                .with_store(MemoryStore::new())
                .transport(transport()),
            bearer,
        )
        .await;
    }
}

#[tokio::test]
async fn a_cycled_id_is_a_new_token_and_the_old_one_is_dead() {
    let app = app(SessionLayer::new(key())
        .with_store(MemoryStore::new())
        .transport(Transport::Header(TOKEN)));
    let mut client = ApiClient::new(false);
    client.text(&app, "GET", "/").await;
    let old = client.token.clone().unwrap();
    client.text(&app, "POST", "/cycle").await;
    assert_ne!(client.token.as_deref(), Some(old.as_str()));
    assert_eq!(client.text(&app, "GET", "/read").await.1, "1");
    let mut thief = ApiClient {
        token: Some(old),
        bearer: false,
    };
    assert_eq!(thief.text(&app, "GET", "/read").await.1, "0");
}

#[tokio::test]
async fn a_session_too_large_for_one_header_is_a_clear_error() {
    let app = app(SessionLayer::signed(key()).transport(Transport::Header(TOKEN)));
    let mut client = ApiClient::new(false);
    client.text(&app, "GET", "/").await;
    let before = client.token.clone();
    let (status, _) = client.text(&app, "POST", "/big").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(client.token, before, "the client keeps the session it had");
    assert_eq!(client.text(&app, "GET", "/read").await.1, "1");
}

/// Header or cookie: a request is answered the way it came. A request with
/// neither gets a cookie (a browser's token never shows in a header a
/// script could read), unless it sends the header empty: an API client
/// starting out.
#[tokio::test]
async fn beside_the_cookie_each_request_is_answered_the_way_it_came() {
    let app = app(SessionLayer::signed(key()).transport(Transport::HeaderOrCookie(TOKEN)));
    let first = app
        .clone()
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert!(first.headers().get(TOKEN).is_none(), "no token in a header");
    let cookie = first
        .headers()
        .get(SET_COOKIE)
        .expect("a cookie")
        .to_str()
        .unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let vary: Vec<_> = first.headers().get_all(VARY).iter().collect();
    assert_eq!(vary, ["Cookie", "x-session-token"]);

    // An API client's first request: the header, empty.
    let api = app
        .clone()
        .oneshot(
            Request::get("/")
                .header(TOKEN, "")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(api.headers().get(SET_COOKIE).is_none(), "no cookie for it");
    let token = api.headers().get(TOKEN).expect("its token").clone();
    assert!(!token.is_empty());

    // By cookie: answered by cookie only.
    let by_cookie = app
        .clone()
        .oneshot(
            Request::get("/")
                .header(COOKIE, &cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(by_cookie.headers().get(SET_COOKIE).is_some());
    assert!(by_cookie.headers().get(TOKEN).is_none());
    assert_eq!(body_text(by_cookie).await, "2");

    // By header: answered by header only; the header wins over a cookie.
    let by_header = app
        .clone()
        .oneshot(
            Request::get("/")
                .header(TOKEN, token)
                .header(COOKIE, &cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(by_header.headers().get(SET_COOKIE).is_none());
    assert!(by_header.headers().get(TOKEN).is_some());
    assert_eq!(
        body_text(by_header).await,
        "2",
        "its own session, not the cookie's"
    );
}

/// Beside the cookie, a session too large for one header is still never
/// handed to a header client cut short: chunk 0 alone is no token.
#[tokio::test]
async fn a_header_client_beside_the_cookie_never_gets_half_a_token() {
    let app = app(SessionLayer::signed(key()).transport(Transport::HeaderOrCookie(TOKEN)));
    let response = app
        .clone()
        .oneshot(
            Request::post("/big")
                .header(TOKEN, "")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(response.headers().get(TOKEN).is_none());
    assert!(response.headers().get(SET_COOKIE).is_none());
    // A browser gets its chunks.
    let response = app
        .clone()
        .oneshot(Request::post("/big").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get_all(SET_COOKIE).iter().count() > 1);
    assert!(response.headers().get(TOKEN).is_none());
}

#[tokio::test]
async fn hostile_token_headers_give_an_empty_session() {
    let app = app(SessionLayer::new(key())
        .with_store(MemoryStore::new())
        .transport(Transport::BearerOrCookie(TOKEN)));
    for value in [
        "Bearer",
        "Bearer ",
        "bearer x",
        "Basic dXNlcjpwYXNz",
        "Bearer ../../etc/passwd",
        &format!("Bearer {}", "A".repeat(10_000)),
    ] {
        let response = app
            .clone()
            .oneshot(
                Request::get("/read")
                    .header(AUTHORIZATION, value)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{value:.20}");
        assert_eq!(body_text(response).await, "0");
    }
}
