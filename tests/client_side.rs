//! Signed client-side sessions, end to end through an Axum Router.
#![cfg(feature = "axum")]

mod common;

use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Jar, TestClock, body_text, get as get_req, set_cookies, with_cookie};
use http::StatusCode;
use http::header::{SET_COOKIE, VARY};
use session_layer::codec::SignedCodec;
use session_layer::{Error, ErrorKind, Key, Keyring, Session, SessionLayer};

const T0: u64 = 1_800_000_000;

fn key(n: u8) -> Key {
    Key::from_bytes(&[n; 32]).unwrap()
}

async fn count(session: Session) -> Result<String, Error> {
    Ok(session
        .update("count", |n: Option<u64>| n.unwrap_or(0) + 1)?
        .to_string())
}

async fn read(session: Session) -> Result<String, Error> {
    Ok(session.get::<u64>("count")?.unwrap_or(0).to_string())
}

async fn big(session: Session, Path(len): Path<usize>) -> Result<&'static str, Error> {
    session.insert("blob", "x".repeat(len))?;
    Ok("stored")
}

async fn clear(session: Session) -> &'static str {
    session.clear();
    "cleared"
}

async fn permanent(session: Session) -> &'static str {
    session.set_permanent(true);
    "permanent"
}

async fn fail(session: Session) -> (StatusCode, &'static str) {
    session.insert_value("half", true.into());
    (StatusCode::INTERNAL_SERVER_ERROR, "boom")
}

async fn optional(session: Option<Session>) -> &'static str {
    if session.is_some() { "some" } else { "none" }
}

fn routes() -> Router<()> {
    Router::new()
        .route("/count", get(count))
        .route("/read", get(read))
        .route("/untouched", get(|| async { "hi" }))
        .route("/big/{len}", get(big))
        .route("/clear", post(clear))
        .route("/permanent", post(permanent))
        .route("/fail", get(fail))
        .route("/optional", get(optional))
        .route("/static/{*rest}", get(read))
        .route("/static-optional/{*rest}", get(optional))
        .route(
            "/extract-only",
            get(|_session: Session| async { "took it" }),
        )
        .route(
            "/clear-and-count",
            post(|session: Session| async move {
                session.clear();
                count(session).await
            }),
        )
}

fn app_with(layer: SessionLayer) -> Router {
    routes().layer(layer)
}

fn layer(clock: &TestClock) -> SessionLayer {
    SessionLayer::new(key(1)).clock(clock.source())
}

fn post_req(uri: &str) -> http::Request<axum::body::Body> {
    http::Request::post(uri)
        .body(axum::body::Body::empty())
        .unwrap()
}

#[tokio::test]
async fn a_session_survives_across_requests() {
    let clock = TestClock::at(T0);
    let app = app_with(layer(&clock));
    let mut jar = Jar::new();
    for expected in 1..=3 {
        assert_eq!(
            jar.get_text(&app, "/count").await,
            (StatusCode::OK, expected.to_string())
        );
    }
    assert_eq!(jar.get_text(&app, "/read").await.1, "3");
}

#[tokio::test]
async fn the_cookie_has_the_configured_attributes() {
    let clock = TestClock::at(T0);
    let app = app_with(
        layer(&clock)
            .cookie_name("__Host-sid")
            .path("/")
            .same_site(session_layer::SameSite::Strict)
            .partitioned(true),
    );
    let response = app.clone().oneshot_req(get_req("/count")).await;
    let lines = set_cookies(&response);
    assert_eq!(lines.len(), 1);
    let line = &lines[0];
    assert!(line.starts_with("__Host-sid="), "{line}");
    for attribute in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
        "Partitioned",
    ] {
        assert!(line.contains(attribute), "{attribute} missing: {line}");
    }
    assert!(
        !line.contains("Expires") && !line.contains("Max-Age"),
        "{line}"
    );
    assert!(!line.contains("Domain"), "{line}");

    let insecure = app_with(layer(&clock).secure(false).http_only(false));
    let line = &set_cookies(&insecure.oneshot_req(get_req("/count")).await)[0];
    assert!(
        !line.contains("Secure") && !line.contains("HttpOnly"),
        "{line}"
    );
}

#[tokio::test]
async fn vary_and_set_cookie_follow_access_and_modification() {
    let clock = TestClock::at(T0);
    let app = app_with(layer(&clock));
    let mut jar = Jar::new();

    // Untouched route: neither Vary nor Set-Cookie, even with a cookie.
    jar.send(&app, get_req("/count")).await;
    let response = jar.send(&app, get_req("/untouched")).await;
    assert!(response.headers().get(VARY).is_none());
    assert!(response.headers().get(SET_COOKIE).is_none());

    // Read only, non-permanent: Vary but no Set-Cookie.
    let response = jar.send(&app, get_req("/read")).await;
    assert_eq!(response.headers()[VARY], "Cookie");
    assert!(response.headers().get(SET_COOKIE).is_none());

    // Modified: Vary and Set-Cookie.
    let response = jar.send(&app, get_req("/count")).await;
    assert_eq!(response.headers()[VARY], "Cookie");
    assert_eq!(set_cookies(&response).len(), 1);

    // An empty session that is only read writes nothing.
    let response = app.clone().oneshot_req(get_req("/read")).await;
    assert!(response.headers().get(SET_COOKIE).is_none());
}

#[tokio::test]
async fn emptying_the_session_deletes_the_cookie_with_the_same_path_and_domain() {
    let clock = TestClock::at(T0);
    let app = app_with(layer(&clock).path("/").domain("example.com"));
    let mut jar = Jar::new();
    jar.send(&app, get_req("/count")).await;
    assert!(jar.get("session").is_some());

    let response = jar.send(&app, post_req("/clear")).await;
    let lines = set_cookies(&response);
    assert_eq!(lines.len(), 1);
    let line = &lines[0];
    assert!(line.starts_with("session=;"), "{line}");
    assert!(line.contains("Max-Age=0"), "{line}");
    assert!(
        line.contains("Path=/") && line.contains("Domain=example.com"),
        "{line}"
    );
    assert!(jar.get("session").is_none());

    // Clearing an empty session without a cookie sends nothing.
    let response = app.clone().oneshot_req(post_req("/clear")).await;
    assert!(response.headers().get(SET_COOKIE).is_none());
}

#[tokio::test]
async fn permanent_sessions_get_expires_from_the_lifetime() {
    let clock = TestClock::at(T0);
    let app = app_with(layer(&clock).lifetime(Duration::from_secs(7200)));
    let mut jar = Jar::new();
    let response = jar.send(&app, post_req("/permanent")).await;
    let line = &set_cookies(&response)[0];
    assert!(line.contains("Max-Age=7200"), "{line}");
    // T0 + 7200 s = 2027-01-15 10:00:00 UTC.
    assert!(
        line.contains("Expires=Fri, 15 Jan 2027 10:00:00 GMT"),
        "{line}"
    );
}

#[tokio::test]
async fn permanent_sessions_refresh_but_throttled() {
    let clock = TestClock::at(T0);
    let app = app_with(layer(&clock).refresh_interval(Duration::from_secs(60)));
    let mut jar = Jar::new();
    jar.send(&app, post_req("/permanent")).await;
    jar.send(&app, get_req("/count")).await;

    clock.advance(30);
    let response = jar.send(&app, get_req("/read")).await;
    assert!(set_cookies(&response).is_empty(), "refreshed too early");

    clock.advance(31);
    let before = jar.get("session").unwrap().to_owned();
    let response = jar.send(&app, get_req("/read")).await;
    assert_eq!(
        set_cookies(&response).len(),
        1,
        "not refreshed after the interval"
    );
    assert_ne!(jar.get("session").unwrap(), before);

    // Untouched routes never refresh: nothing was decoded.
    clock.advance(120);
    let response = jar.send(&app, get_req("/untouched")).await;
    assert!(set_cookies(&response).is_empty());

    // With refresh off, a read never re-issues.
    let app = app_with(layer(&clock).refresh_each_request(false));
    clock.advance(3600);
    let response = jar.send(&app, get_req("/read")).await;
    assert!(set_cookies(&response).is_empty());
}

/// A refresh or a re-sign happens when a handler merely extracts the
/// session, calling no method: the cookie it sets still depends on the
/// request's cookie, so a shared cache must be told (`Vary: Cookie`).
#[tokio::test]
async fn every_response_that_sets_the_cookie_varies_on_cookie() {
    let vary = |response: &http::Response<axum::body::Body>| {
        response
            .headers()
            .get_all(VARY)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let clock = TestClock::at(T0);
    let app = app_with(layer(&clock));
    let mut jar = Jar::new();
    jar.send(&app, post_req("/permanent")).await;
    clock.advance(3600);
    let refreshed = jar.send(&app, get_req("/extract-only")).await;
    assert_eq!(set_cookies(&refreshed).len(), 1, "refreshed");
    assert_eq!(vary(&refreshed), ["Cookie"]);

    let rotated =
        app_with(SessionLayer::new(Keyring::new(key(2)).fallback(key(1))).clock(clock.source()));
    let re_signed = jar.send(&rotated, get_req("/extract-only")).await;
    assert_eq!(set_cookies(&re_signed).len(), 1, "re-signed");
    assert_eq!(vary(&re_signed), ["Cookie"]);

    // Nothing set, nothing read: no Vary either.
    let untouched = jar.send(&rotated, get_req("/untouched")).await;
    assert!(set_cookies(&untouched).is_empty());
    assert!(vary(&untouched).is_empty());
}

/// A layer with a 10-minute idle and a 1-hour absolute timeout, refreshed
/// at most once a minute.
fn with_timeouts(layer: SessionLayer) -> Router {
    app_with(
        layer
            .idle_timeout(Duration::from_secs(600))
            .absolute_timeout(Duration::from_secs(3600))
            .refresh_interval(Duration::from_secs(60)),
    )
}

/// Reads the session `times` times, 5 minutes apart, each time alive.
async fn active(jar: &mut Jar, app: &Router, clock: &TestClock, times: usize, what: &str) {
    for _ in 0..times {
        clock.advance(300);
        assert_eq!(jar.get_text(app, "/read").await.1, "1", "{what}: active");
    }
}

/// Client-side sessions honour the idle timeout from the cookie's signed
/// issue time, and the absolute timeout from the creation time the cookie
/// carries: refreshing a stolen cookie cannot keep it alive for ever.
#[tokio::test]
async fn idle_and_absolute_timeouts_hold_for_cookies_too() {
    for codec in ["signed", "private"] {
        let clock = TestClock::at(T0);
        let layer = if codec == "signed" {
            SessionLayer::signed(key(1))
        } else {
            SessionLayer::private(key(1))
        };
        let app = with_timeouts(layer.clock(clock.source()));
        let mut jar = Jar::new();
        jar.send(&app, post_req("/permanent")).await;
        jar.send(&app, get_req("/count")).await;
        // Each read refreshes the cookie, until an hour after the session
        // began, however fresh the cookie.
        active(&mut jar, &app, &clock, 11, codec).await;
        clock.advance(300);
        let (_, body) = jar.get_text(&app, "/read").await;
        assert_eq!(body, "0", "{codec}: absolute");

        // Idle for longer than the idle timeout: gone, though the cookie's
        // Max-Age (the lifetime) has not run out.
        let mut jar = Jar::new();
        jar.send(&app, post_req("/permanent")).await;
        jar.send(&app, get_req("/count")).await;
        clock.advance(599);
        assert_eq!(jar.get_text(&app, "/read").await.1, "1", "{codec}");
        clock.advance(600);
        assert_eq!(jar.get_text(&app, "/read").await.1, "0", "{codec}: idle");
    }
}

/// With an idle timeout, a browser-session (not permanent) cookie that is
/// only read is re-issued too (throttled), so an active user stays in; and
/// clearing the session does not restart the absolute timeout.
#[tokio::test]
async fn the_idle_timeout_moves_on_use_for_any_cookie_and_clear_keeps_the_start() {
    let clock = TestClock::at(T0);
    let app = with_timeouts(layer(&clock));
    let mut jar = Jar::new();
    jar.send(&app, get_req("/count")).await;
    active(&mut jar, &app, &clock, 5, "before the clear").await;
    // Cleared and written again: still the same session for the timeout.
    jar.send(&app, post_req("/clear-and-count")).await;
    active(&mut jar, &app, &clock, 6, "after the clear").await;
    clock.advance(300);
    let (_, body) = jar.get_text(&app, "/read").await;
    assert_eq!(body, "0", "an hour after it began, clear or not");
}

/// A cookie written without a creation time (before the absolute timeout
/// was set, or by an earlier version) still works and counts from its
/// issue time.
#[tokio::test]
async fn cookies_without_a_creation_time_count_from_their_issue_time() {
    let clock = TestClock::at(T0);
    let mut data = serde_json::Map::new();
    data.insert("count".into(), 5.into());
    let value = SignedCodec::new(key(1).into()).encode("session", &data, true, T0);
    let app = app_with(layer(&clock).absolute_timeout(Duration::from_secs(3600)));
    clock.advance(1800);
    assert_eq!(read_with(&app, &format!("session={value}")).await, "5");
    clock.advance(1800);
    assert_eq!(read_with(&app, &format!("session={value}")).await, "0");
}

#[tokio::test]
async fn non_permanent_sessions_are_not_refreshed() {
    let clock = TestClock::at(T0);
    let app = app_with(layer(&clock));
    let mut jar = Jar::new();
    jar.send(&app, get_req("/count")).await;
    clock.advance(3600);
    let response = jar.send(&app, get_req("/read")).await;
    assert!(set_cookies(&response).is_empty());
}

#[tokio::test]
async fn max_age_is_enforced_by_the_server() {
    let clock = TestClock::at(T0);
    let app = app_with(layer(&clock).lifetime(Duration::from_secs(3600)));
    let mut jar = Jar::new();
    jar.send(&app, get_req("/count")).await;
    clock.advance(3600);
    assert_eq!(jar.get_text(&app, "/read").await.1, "1");
    clock.advance(1);
    // The browser still sends the (non-permanent) cookie; the server refuses it.
    assert_eq!(
        jar.get_text(&app, "/read").await,
        (StatusCode::OK, "0".into())
    );
}

/// Every kind of bad cookie gives an empty session and a normal response.
#[tokio::test]
async fn bad_cookies_give_an_empty_session() {
    let clock = TestClock::at(T0);
    let app = app_with(layer(&clock));
    let mut jar = Jar::new();
    jar.send(&app, get_req("/count")).await;
    jar.send(&app, get_req("/count")).await;
    let good = jar.get("session").unwrap().to_owned();
    assert_eq!(read_with(&app, &format!("session={good}")).await, "2");

    let signed = |secret: u8, name: &str, at: u64| {
        let mut data = serde_json::Map::new();
        data.insert("count".into(), 7.into());
        SignedCodec::new(key(secret).into()).encode(name, &data, false, at)
    };
    let bytes = URL_SAFE_NO_PAD.decode(&good).unwrap();
    let mut flipped = bytes.clone();
    flipped[12] ^= 1;
    let mut reordered = bytes.clone();
    reordered[..10].rotate_left(1);
    let mut tag_first = bytes[bytes.len() - 32..].to_vec();
    tag_first.extend_from_slice(&bytes[..bytes.len() - 32]);

    let cases: Vec<(&str, String)> = vec![
        ("forged payload", URL_SAFE_NO_PAD.encode(&flipped)),
        ("reordered header", URL_SAFE_NO_PAD.encode(&reordered)),
        ("tag moved to the front", URL_SAFE_NO_PAD.encode(&tag_first)),
        ("truncated", good[..good.len() - 5].to_owned()),
        ("only the header", good[..12].to_owned()),
        ("wrong key", signed(2, "session", T0)),
        ("signed for another cookie name", signed(1, "other", T0)),
        ("expired", signed(1, "session", T0 - 32 * 86_400)),
        ("future dated", signed(1, "session", T0 + 3600)),
        ("bad base64", "!!not*base64!!".into()),
        ("padded base64", format!("{good}==")),
        ("empty", String::new()),
        ("huge", "A".repeat(10_000)),
        ("json instead of an envelope", "{\"count\":7}".into()),
    ];
    for (what, value) in cases {
        assert_eq!(
            read_with(&app, &format!("session={value}")).await,
            "0",
            "{what} was accepted"
        );
    }
    // The real one still works, and a good cookie after a bad one of the
    // same name (as after a Domain change) is found.
    assert_eq!(
        read_with(&app, &format!("session=junk; session={good}")).await,
        "2"
    );
}

#[tokio::test]
async fn non_utf8_cookie_headers_give_an_empty_session() {
    let clock = TestClock::at(T0);
    let app = app_with(layer(&clock));
    let mut request = get_req("/read");
    request.headers_mut().insert(
        http::header::COOKIE,
        http::HeaderValue::from_bytes(b"session=\xff\xfe\x80abc; other=\xc3").unwrap(),
    );
    let response = app.oneshot_req(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_text(response).await, "0");
}

async fn read_with(app: &Router, cookie: &str) -> String {
    let response = app.clone().oneshot_req(with_cookie("/read", cookie)).await;
    assert_eq!(response.status(), StatusCode::OK, "cookie {cookie:.60}");
    body_text(response).await
}

#[tokio::test]
async fn fallback_keys_verify_and_the_cookie_is_re_signed_with_the_current_key() {
    let clock = TestClock::at(T0);
    let old_app = app_with(SessionLayer::new(key(1)).clock(clock.source()));
    let mut jar = Jar::new();
    jar.send(&old_app, get_req("/count")).await;
    let old_cookie = jar.get("session").unwrap().to_owned();

    let rotated =
        app_with(SessionLayer::new(Keyring::new(key(2)).fallback(key(1))).clock(clock.source()));
    // A read-only request already re-signs a cookie verified by a fallback.
    let response = jar.send(&rotated, get_req("/read")).await;
    assert_eq!(body_text(response).await, "1");
    let new_cookie = jar.get("session").unwrap().to_owned();
    assert_ne!(new_cookie, old_cookie);

    // The new cookie verifies with the new key alone, the old one does not.
    let new_only = app_with(SessionLayer::new(key(2)).clock(clock.source()));
    assert_eq!(
        read_with(&new_only, &format!("session={new_cookie}")).await,
        "1"
    );
    assert_eq!(
        read_with(&new_only, &format!("session={old_cookie}")).await,
        "0"
    );

    // Once re-signed, reads do not rewrite it again.
    let response = jar.send(&rotated, get_req("/read")).await;
    assert!(set_cookies(&response).is_empty());
}

#[tokio::test]
async fn a_session_too_big_for_a_cookie_is_an_error_not_a_silent_loss() {
    let clock = TestClock::at(T0);
    let app = app_with(layer(&clock));
    let mut jar = Jar::new();

    let response = jar.send(&app, get_req("/big/2000")).await;
    assert_eq!(response.status(), StatusCode::OK);

    // Past the chunk budget (10 cookies, about 40 KB)...
    let response = jar.send(&app, get_req("/big/60000")).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(set_cookies(&response).is_empty());
    let error = response
        .extensions()
        .get::<Error>()
        .expect("error in extensions");
    assert_eq!(error.kind(), ErrorKind::CookieTooLarge);
    assert!(
        body_text(response).await.is_empty(),
        "the default body leaks nothing"
    );

    // The previous cookie is intact in the browser.
    assert!(jar.get_text(&app, "/read").await.0.is_success());
    assert_eq!(jar.cookies.len(), 1);

    // ...and past one cookie when chunking is off.
    let unchunked = app_with(layer(&clock).max_chunks(1));
    let response = unchunked.oneshot_req(get_req("/big/4000")).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        response.extensions().get::<Error>().unwrap().kind(),
        ErrorKind::CookieTooLarge
    );
}

#[tokio::test]
async fn the_size_limit_is_on_the_whole_set_cookie_line() {
    let clock = TestClock::at(T0);
    let app = app_with(layer(&clock).max_chunks(1));
    // Find the largest value that fits, then one byte more must fail.
    let (mut lo, mut hi) = (1000usize, 4096usize);
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        let response = app
            .clone()
            .oneshot_req(get_req(&format!("/big/{mid}")))
            .await;
        if response.status().is_success() {
            lo = mid
        } else {
            hi = mid
        }
    }
    let fits = app
        .clone()
        .oneshot_req(get_req(&format!("/big/{lo}")))
        .await;
    let line = &set_cookies(&fits)[0];
    assert!(line.len() <= 4096 && line.len() > 4090, "{}", line.len());
    let over = app
        .clone()
        .oneshot_req(get_req(&format!("/big/{hi}")))
        .await;
    assert_eq!(over.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn a_custom_error_handler_replaces_the_response() {
    let clock = TestClock::at(T0);
    let app = routes().layer(layer(&clock).with_error_handler(|error: &Error| {
        http::Response::builder()
            .status(StatusCode::INSUFFICIENT_STORAGE)
            .body(axum::body::Body::from(format!(
                "session: {:?}",
                error.kind()
            )))
            .unwrap()
    }));
    let response = app.oneshot_req(get_req("/big/50000")).await;
    assert_eq!(response.status(), StatusCode::INSUFFICIENT_STORAGE);
    assert!(response.extensions().get::<Error>().is_some());
    assert_eq!(body_text(response).await, "session: CookieTooLarge");
}

#[tokio::test]
async fn server_errors_are_not_persisted_unless_asked() {
    let clock = TestClock::at(T0);
    let app = app_with(layer(&clock));
    let response = app.oneshot_req(get_req("/fail")).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(set_cookies(&response).is_empty());
    assert_eq!(response.headers()[VARY], "Cookie");

    let app = app_with(layer(&clock).persist_on_server_error(true));
    let response = app.oneshot_req(get_req("/fail")).await;
    assert_eq!(set_cookies(&response).len(), 1);
}

#[tokio::test]
async fn without_the_layer_session_is_a_clear_500_and_option_is_none() {
    let app = routes();
    let response = app.clone().oneshot_req(get_req("/read")).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        body_text(response).await,
        "SessionLayer is not installed on this route"
    );
    let response = app.oneshot_req(get_req("/optional")).await;
    assert_eq!(body_text(response).await, "none");
}

#[tokio::test]
async fn skipped_paths_pass_through_untouched() {
    let clock = TestClock::at(T0);
    let app = app_with(
        layer(&clock)
            .skip_path("/static")
            .skip_path("/static-optional"),
    );
    let mut jar = Jar::new();
    jar.send(&app, get_req("/count")).await;

    let response = jar.send(&app, get_req("/static-optional/app.js")).await;
    assert!(response.headers().get(VARY).is_none());
    assert!(set_cookies(&response).is_empty());
    assert_eq!(body_text(response).await, "none");

    let response = jar.send(&app, get_req("/static/app.js")).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);

    assert_eq!(jar.get_text(&app, "/optional").await.1, "some");
}

/// Shorthand for `ServiceExt::oneshot` on a cloned Router.
trait OneshotReq {
    async fn oneshot_req(
        self,
        request: http::Request<axum::body::Body>,
    ) -> http::Response<axum::body::Body>;
}

impl OneshotReq for Router {
    async fn oneshot_req(
        self,
        request: http::Request<axum::body::Body>,
    ) -> http::Response<axum::body::Body> {
        tower::ServiceExt::oneshot(self, request).await.unwrap()
    }
}

#[tokio::test]
async fn not_before_revokes_copies_of_client_side_cookies() {
    use std::sync::{Arc, Mutex};
    let clock = TestClock::at(T0);
    // Per-user "logged out everywhere at" times, as an app would keep them.
    let revoked: Arc<Mutex<std::collections::HashMap<u64, u64>>> = Arc::default();
    let hook = {
        let revoked = revoked.clone();
        move |data: &serde_json::Map<String, serde_json::Value>| {
            let user = data.get("count")?.as_u64()?;
            let at = *revoked.lock().unwrap().get(&user)?;
            Some(std::time::UNIX_EPOCH + Duration::from_secs(at))
        }
    };
    let app = app_with(layer(&clock).not_before(hook));
    let mut jar = Jar::new();
    jar.send(&app, get_req("/count")).await;
    let stolen = jar.get("session").unwrap().to_owned();
    assert_eq!(read_with(&app, &format!("session={stolen}")).await, "1");

    // The user (count = 1 here) logs out everywhere at T0 + 10.
    clock.advance(10);
    revoked.lock().unwrap().insert(1, T0 + 10);
    assert_eq!(
        read_with(&app, &format!("session={stolen}")).await,
        "0",
        "the stolen copy is void"
    );

    // A session issued after that time works; other users are untouched.
    let mut fresh = Jar::new();
    fresh.send(&app, get_req("/count")).await;
    assert_eq!(fresh.get_text(&app, "/read").await.1, "1");
    let mut other = Jar::new();
    other.send(&app, get_req("/count")).await;
    other.send(&app, get_req("/count")).await;
    assert_eq!(other.get_text(&app, "/read").await.1, "2");
}
