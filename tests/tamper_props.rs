//! Property tests: whatever byte an attacker changes in whichever cookie
//! (or chunk) of a signed or private session, the server sees either no
//! session or the original one, never another.
#![cfg(feature = "axum")]

mod common;

use axum::routing::{get, put};
use axum::{Json, Router};
use common::{Jar, body_text, with_cookie};
use proptest::prelude::*;
use serde_json::{Map, Value};
use session_layer::{Key, Session, SessionLayer};
use tower::ServiceExt;

async fn replace(session: Session, Json(data): Json<Map<String, Value>>) -> &'static str {
    session.clear();
    for (key, value) in data {
        session.insert_value(key, value);
    }
    "ok"
}

async fn show(session: Session) -> Json<Map<String, Value>> {
    Json(session.to_map())
}

fn app(private: bool) -> Router {
    let key = Key::from_bytes(&[3; 32]).unwrap();
    let layer = if private {
        SessionLayer::private(key)
    } else {
        SessionLayer::signed(key)
    };
    Router::new()
        .route("/", put(replace))
        .route("/", get(show))
        .layer(layer.max_chunks(16))
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A session map, sometimes with one large value so that it spans chunks.
fn session_data() -> impl Strategy<Value = Map<String, Value>> {
    (
        prop::collection::btree_map("[a-z]{1,8}", json_value(), 1..8),
        prop_oneof![Just(0usize), 1000..12_000usize],
    )
        .prop_map(|(map, pad)| {
            let mut map: Map<String, Value> = map.into_iter().collect();
            if pad > 0 {
                map.insert("pad".into(), Value::String("p".repeat(pad)));
            }
            map
        })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

async fn store(app: &Router, data: &Map<String, Value>) -> Jar {
    let mut jar = Jar::new();
    let request = http::Request::put("/")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(serde_json::to_vec(data).unwrap()))
        .unwrap();
    let response = jar.send(app, request).await;
    assert!(response.status().is_success());
    jar
}

async fn read(app: &Router, cookie: &str) -> Map<String, Value> {
    let response = app.clone().oneshot(with_cookie("/", cookie)).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    serde_json::from_str(&body_text(response).await).unwrap()
}

fn header(jar: &Jar) -> String {
    jar.header().unwrap_or_default()
}

/// Characters a browser would carry in a cookie value.
const COOKIE_SAFE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!~*";

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn encode_then_decode_is_identity(data in session_data(), private in any::<bool>()) {
        let rt = runtime();
        let app = app(private);
        rt.block_on(async {
            let jar = store(&app, &data).await;
            prop_assert_eq!(read(&app, &header(&jar)).await, data);
            Ok(())
        })?;
    }

    #[test]
    fn any_byte_change_in_any_chunk_never_yields_another_session(
        data in session_data(),
        private in any::<bool>(),
        which in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        replacement in prop::sample::select(COOKIE_SAFE),
    ) {
        let rt = runtime();
        let app = app(private);
        rt.block_on(async {
            let mut jar = store(&app, &data).await;
            let name = which.get(&jar.cookies.keys().cloned().collect::<Vec<_>>()).clone();
            let value = jar.cookies.get_mut(&name).unwrap();
            let mut bytes = value.clone().into_bytes();
            let i = at.index(bytes.len());
            prop_assume!(bytes[i] != replacement);
            bytes[i] = replacement;
            *value = String::from_utf8(bytes).unwrap();
            let seen = read(&app, &header(&jar)).await;
            prop_assert!(seen.is_empty() || seen == data, "tampered {name}[{i}] gave {seen:?}");
            Ok(())
        })?;
    }
}
