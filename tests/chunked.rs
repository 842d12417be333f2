//! Large sessions over several cookies, for both client-side codecs.
#![cfg(feature = "axum")]

mod common;

use axum::Router;
use axum::extract::Path;
use axum::routing::{get, post};
use common::{Jar, TestClock, body_text, get as get_req, set_cookies, with_cookie};
use http::StatusCode;
use session_layer::{Error, Key, Session, SessionLayer};
use tower::ServiceExt;

const T0: u64 = 1_800_000_000;

async fn store(session: Session, Path(len): Path<usize>) -> Result<&'static str, Error> {
    // Digits, so JSON adds no escapes and the size is predictable.
    let blob: String = (0..len)
        .map(|i| char::from(b'0' + (i % 10) as u8))
        .collect();
    session.insert("blob", blob)?;
    Ok("stored")
}

async fn read(session: Session) -> Result<String, Error> {
    Ok(match session.get::<String>("blob")? {
        Some(blob) => blob.len().to_string(),
        None => "none".into(),
    })
}

async fn clear(session: Session) -> &'static str {
    session.clear();
    "cleared"
}

fn app(layer: SessionLayer) -> Router {
    Router::new()
        .route("/store/{len}", get(store))
        .route("/read", get(read))
        .route("/clear", post(clear))
        .layer(layer)
}

/// Both client-side codecs, on the same key and clock.
fn codecs(clock: &TestClock) -> [(&'static str, SessionLayer); 2] {
    let key = Key::from_bytes(&[9; 32]).unwrap();
    [
        (
            "signed",
            SessionLayer::signed(key.clone()).clock(clock.source()),
        ),
        ("private", SessionLayer::private(key).clock(clock.source())),
    ]
}

fn family(jar: &Jar) -> Vec<&str> {
    jar.cookies
        .keys()
        .filter(|name| {
            *name == "session"
                || name
                    .strip_prefix("session.")
                    .is_some_and(|i| i.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(String::as_str)
        .collect()
}

async fn store_len(jar: &mut Jar, app: &Router, len: usize) -> http::Response<axum::body::Body> {
    let response = jar.send(app, get_req(&format!("/store/{len}"))).await;
    assert_eq!(response.status(), StatusCode::OK, "storing {len} bytes");
    response
}

async fn read_len(jar: &mut Jar, app: &Router) -> String {
    jar.get_text(app, "/read").await.1
}

#[tokio::test]
async fn sessions_round_trip_at_every_size() {
    let clock = TestClock::at(T0);
    for (codec, layer) in codecs(&clock) {
        let app = app(layer.max_chunks(16));
        // 0 B: nothing stored, no cookie at all.
        let mut jar = Jar::new();
        assert_eq!(read_len(&mut jar, &app).await, "none");
        assert!(jar.cookies.is_empty());

        for len in [100, 20_000, 39_000] {
            let mut jar = Jar::new();
            store_len(&mut jar, &app, len).await;
            assert_eq!(
                read_len(&mut jar, &app).await,
                len.to_string(),
                "{codec} {len}"
            );
            // Several navigations: the browser keeps sending every chunk.
            for _ in 0..3 {
                assert_eq!(read_len(&mut jar, &app).await, len.to_string());
            }
        }
    }
}

#[tokio::test]
async fn the_one_cookie_boundary_plus_and_minus_one_byte() {
    let clock = TestClock::at(T0);
    for (codec, layer) in codecs(&clock) {
        let app = app(layer);
        // The largest blob that still fits one cookie.
        let cookies_for = |len: usize| {
            let app = app.clone();
            async move {
                let response = app
                    .oneshot(get_req(&format!("/store/{len}")))
                    .await
                    .unwrap();
                set_cookies(&response).len()
            }
        };
        let (mut lo, mut hi) = (1000, 4000);
        while lo + 1 < hi {
            let mid = (lo + hi) / 2;
            if cookies_for(mid).await == 1 {
                lo = mid
            } else {
                hi = mid
            }
        }
        // base64 turns 3 bytes into 4 characters, so a byte more may not
        // lengthen the cookie: find the first length that does.
        assert_eq!(cookies_for(lo).await, 1, "{codec}");
        assert_eq!(cookies_for(lo + 1).await, 2, "{codec}");
        for len in [lo - 1, lo, lo + 1] {
            let mut jar = Jar::new();
            let response = store_len(&mut jar, &app, len).await;
            for line in set_cookies(&response) {
                assert!(line.len() <= 4096, "{codec} {len}: {} bytes", line.len());
            }
            assert_eq!(
                read_len(&mut jar, &app).await,
                len.to_string(),
                "{codec} {len}"
            );
        }
    }
}

#[tokio::test]
async fn the_default_budget_holds_about_40_kb_of_cookies() {
    let clock = TestClock::at(T0);
    for (codec, layer) in codecs(&clock) {
        let app = app(layer);
        let mut jar = Jar::new();
        // 28 000 digits encode to about 38 KB of cookie values.
        let response = store_len(&mut jar, &app, 28_000).await;
        let lines = set_cookies(&response);
        let total: usize = lines.iter().map(String::len).sum();
        assert_eq!(lines.len(), 10, "{codec}");
        assert!(total > 37_000 && total <= 40_960, "{codec}: {total}");
        assert_eq!(read_len(&mut jar, &app).await, "28000");
        // More than the budget is an error, and the stored session stays.
        let response = jar.send(&app, get_req("/store/31000")).await;
        assert_eq!(
            response.status(),
            StatusCode::INTERNAL_SERVER_ERROR,
            "{codec}"
        );
        assert_eq!(read_len(&mut jar, &app).await, "28000");
    }
}

#[tokio::test]
async fn more_than_nine_chunks_join_in_number_order() {
    let clock = TestClock::at(T0);
    for (codec, layer) in codecs(&clock) {
        let app = app(layer.max_chunks(20));
        let mut jar = Jar::new();
        store_len(&mut jar, &app, 40_000).await;
        // The jar sends cookies sorted by name: session.10 before session.2.
        assert!(family(&jar).len() > 11, "{codec}: {:?}", family(&jar));
        assert_eq!(read_len(&mut jar, &app).await, "40000", "{codec}");
    }
}

#[tokio::test]
async fn shrinking_expires_exactly_the_unused_chunks() {
    let clock = TestClock::at(T0);
    for (codec, layer) in codecs(&clock) {
        let app = app(layer);
        let mut jar = Jar::new();
        store_len(&mut jar, &app, 13_000).await;
        assert_eq!(family(&jar).len(), 5, "{codec}");

        let response = store_len(&mut jar, &app, 5_000).await;
        let lines = set_cookies(&response);
        let removals: Vec<_> = lines.iter().filter(|l| l.contains("Max-Age=0")).collect();
        assert_eq!(lines.len() - removals.len(), 2, "{codec}: {lines:?}");
        assert_eq!(removals.len(), 3, "{codec}: {lines:?}");
        for (removal, name) in removals
            .iter()
            .zip(["session.2=", "session.3=", "session.4="])
        {
            assert!(removal.starts_with(name), "{removal}");
            assert!(removal.contains("Path=/"), "{removal}");
        }
        assert_eq!(family(&jar), ["session", "session.1"]);
        assert_eq!(read_len(&mut jar, &app).await, "5000");

        // Shrinking to one cookie drops the last chunk too.
        store_len(&mut jar, &app, 10).await;
        assert_eq!(family(&jar), ["session"]);
    }
}

#[tokio::test]
async fn clearing_expires_every_chunk_and_nothing_else() {
    let clock = TestClock::at(T0);
    for (codec, layer) in codecs(&clock) {
        let app = app(layer.domain("example.com"));
        let mut jar = Jar::new();
        jar.cookies.insert("sessionid".into(), "theirs".into());
        jar.cookies.insert("session.x".into(), "theirs".into());
        jar.cookies.insert("other".into(), "theirs".into());
        store_len(&mut jar, &app, 13_000).await;
        assert_eq!(family(&jar).len(), 5);

        let response = jar
            .send(
                &app,
                http::Request::post("/clear")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await;
        let lines = set_cookies(&response);
        assert_eq!(lines.len(), 5, "{codec}: {lines:?}");
        for line in &lines {
            assert!(
                line.contains("Max-Age=0") && line.contains("Domain=example.com"),
                "{line}"
            );
        }
        assert!(family(&jar).is_empty());
        let left: Vec<_> = jar.cookies.keys().map(String::as_str).collect();
        assert_eq!(left, ["other", "session.x", "sessionid"], "{codec}");
    }
}

/// Builds a Cookie header from (name, value) pairs in the given order.
fn header(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

async fn read_with(app: &Router, cookie: &str) -> String {
    let response = app
        .clone()
        .oneshot(with_cookie("/read", cookie))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    body_text(response).await
}

#[tokio::test]
async fn chunks_that_do_not_add_up_give_an_empty_session() {
    let clock = TestClock::at(T0);
    for (codec, layer) in codecs(&clock) {
        let app = app(layer);
        let mut older = Jar::new();
        store_len(&mut older, &app, 13_000).await;
        let mut jar = Jar::new();
        store_len(&mut jar, &app, 13_001).await;
        let pairs: Vec<(String, String)> = jar.cookies.clone().into_iter().collect();
        assert_eq!(read_with(&app, &header(&pairs)).await, "13001", "{codec}");

        let mut missing = pairs.clone();
        missing.retain(|(n, _)| n != "session.2");
        let mut duplicate = pairs.clone();
        duplicate.push(pairs[2].clone());
        let mut extra = pairs.clone();
        extra.push(("session.5".into(), "AAAA".into()));
        let mut mixed = pairs.clone();
        mixed[3].1 = older.get(&mixed[3].0).unwrap().to_owned();
        let mut swapped = pairs.clone();
        let (a, b) = (swapped[1].1.clone(), swapped[2].1.clone());
        swapped[1].1 = b;
        swapped[2].1 = a;
        let mut lying = pairs.clone();
        lying[0].1 = lying[0].1.replacen("!5!", "!4!", 1);
        lying.retain(|(n, _)| n != "session.4");
        for (what, set) in [
            ("missing", missing),
            ("duplicate", duplicate),
            ("extra", extra),
            ("mixed with an older write", mixed),
            ("swapped", swapped),
            ("count that lies", lying),
        ] {
            assert_eq!(
                read_with(&app, &header(&set)).await,
                "none",
                "{codec}: {what}"
            );
        }
    }
}
