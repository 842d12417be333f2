//! A user's sessions through the layer: `set_owner` at login, listed and
//! ended by `Sessions` ("your devices", "sign out everywhere"), and the
//! client-side answer (a per-owner `not_before` time).
#![cfg(all(feature = "axum", feature = "memory-store"))]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use common::{Jar, TestClock};
use session_layer::store::{MemoryStore, SessionStore};
use session_layer::{ErrorKind, Key, Session, SessionLayer, Sessions};

const T0: u64 = 1_800_000_000;

fn post_req(uri: &str) -> http::Request<axum::body::Body> {
    http::Request::post(uri)
        .body(axum::body::Body::empty())
        .unwrap()
}

/// Logs in as the path's user (cycle, owner, a device name), reads the
/// user back, lists and ends sessions.
fn app(layer: SessionLayer) -> (Router, Sessions) {
    let sessions = layer.sessions().expect("server-side");
    let app = Router::new()
        .route(
            "/login/{user}/{device}",
            post(
                |session: Session, Path((user, device)): Path<(String, String)>| async move {
                    session.cycle_id();
                    session.insert("user", &user).unwrap();
                    session.set_owner(user).unwrap();
                    session
                        .set_owner_meta(serde_json::json!({ "device": device }))
                        .unwrap();
                },
            ),
        )
        .route(
            "/user",
            get(|session: Session| async move {
                session.get::<String>("user").unwrap().unwrap_or_default()
            }),
        )
        .route(
            "/touch",
            post(|session: Session| async move { session.insert("t", 1).unwrap() }),
        )
        .route(
            "/handle",
            get(|session: Session| async move { session.handle().unwrap_or_default() }),
        )
        .route(
            "/owner",
            get(|session: Session| async move { session.owner().unwrap_or_default() }),
        )
        .route(
            "/clear",
            post(|session: Session| async move { session.clear() }),
        )
        .route(
            "/logout",
            post(|session: Session| async move { session.flush() }),
        )
        .route(
            "/others",
            post(
                |State(sessions): State<Sessions>, session: Session| async move {
                    let (owner, current) = (session.owner().unwrap(), session.handle().unwrap());
                    sessions
                        .end_all_except(&owner, &current)
                        .await
                        .unwrap()
                        .to_string()
                },
            ),
        )
        .with_state(sessions.clone())
        .layer(layer);
    (app, sessions)
}

fn layer(clock: &TestClock) -> SessionLayer {
    SessionLayer::new(Key::generate())
        .with_store(MemoryStore::new())
        .clock(clock.source())
        .idle_timeout(Duration::from_secs(600))
}

async fn login(app: &Router, user: &str, device: &str) -> (Jar, String) {
    let mut jar = Jar::new();
    jar.send(app, post_req(&format!("/login/{user}/{device}")))
        .await;
    let handle = jar.get_text(app, "/handle").await.1;
    assert_eq!(handle.len(), 96, "a handle from the request after login");
    (jar, handle)
}

#[tokio::test]
async fn a_users_sessions_are_listed_with_their_devices_and_times() {
    let clock = TestClock::at(T0);
    let (app, sessions) = app(layer(&clock));
    let (_phone, phone) = login(&app, "ann", "phone").await;
    clock.advance(100);
    let (mut laptop, laptop_handle) = login(&app, "ann", "laptop").await;
    login(&app, "bob", "tablet").await;
    assert_eq!(laptop.get_text(&app, "/owner").await.1, "ann");

    let listed = sessions.of("ann").await.unwrap();
    let handles: Vec<&str> = listed.iter().map(|s| s.handle.as_str()).collect();
    assert_eq!(
        handles,
        [laptop_handle.as_str(), phone.as_str()],
        "most recent first"
    );
    assert_eq!(listed[1].created_at, T0);
    assert_eq!(listed[1].last_used, T0);
    assert_eq!(listed[1].expires_at, T0 + 600);
    assert_eq!(listed[1].meta, Some(serde_json::json!({"device": "phone"})));
    assert_eq!(listed[0].created_at, T0 + 100);

    // A later write moves the last use (to the refresh interval).
    clock.advance(200);
    laptop.send(&app, post_req("/touch")).await;
    let listed = sessions.of("ann").await.unwrap();
    assert_eq!(listed[0].handle, laptop_handle);
    assert_eq!(listed[0].last_used, T0 + 300);
    assert_eq!(listed[0].created_at, T0 + 100);
    assert_eq!(sessions.of("nobody").await.unwrap(), vec![]);
}

#[tokio::test]
async fn sign_out_one_device_everywhere_else_and_everywhere() {
    let clock = TestClock::at(T0);
    let (app, sessions) = app(layer(&clock));
    let (mut phone, phone_handle) = login(&app, "ann", "phone").await;
    let (mut laptop, laptop_handle) = login(&app, "ann", "laptop").await;
    let (mut tablet, _) = login(&app, "ann", "tablet").await;
    let (mut bob, bob_handle) = login(&app, "bob", "desk").await;

    // One device, only by its owner.
    assert!(
        !sessions.end_of("bob", &phone_handle).await.unwrap(),
        "not bob's"
    );
    assert!(
        !sessions.end_of("ann", &bob_handle).await.unwrap(),
        "not ann's"
    );
    assert!(!sessions.end_of("ann", "not-a-handle").await.unwrap());
    assert!(sessions.end_of("ann", &phone_handle).await.unwrap());
    assert_eq!(
        phone.get_text(&app, "/user").await.1,
        "",
        "the phone is signed out"
    );
    assert!(
        !sessions.end_of("ann", &phone_handle).await.unwrap(),
        "once"
    );

    // Everywhere else, from the laptop.
    let ended = laptop.send(&app, post_req("/others")).await;
    assert_eq!(common::body_text(ended).await, "1");
    assert_eq!(tablet.get_text(&app, "/user").await.1, "");
    assert_eq!(
        laptop.get_text(&app, "/user").await.1,
        "ann",
        "the laptop stays"
    );
    let listed = sessions.of("ann").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].handle, laptop_handle);

    // Everywhere.
    assert_eq!(sessions.end_all("ann").await.unwrap(), 1);
    assert_eq!(laptop.get_text(&app, "/user").await.1, "");
    assert_eq!(sessions.end_all("ann").await.unwrap(), 0);
    assert_eq!(
        bob.get_text(&app, "/user").await.1,
        "bob",
        "bob is untouched"
    );
}

#[tokio::test]
async fn logout_clear_and_expiry_take_a_session_off_the_list() {
    let clock = TestClock::at(T0);
    let (app, sessions) = app(layer(&clock));
    let (mut a, _) = login(&app, "ann", "a").await;
    let (mut b, _) = login(&app, "ann", "b").await;
    let (_c, _) = login(&app, "ann", "c").await;
    a.send(&app, post_req("/logout")).await;
    assert_eq!(sessions.of("ann").await.unwrap().len(), 2, "logout");
    b.send(&app, post_req("/clear")).await;
    assert_eq!(
        b.get_text(&app, "/owner").await.1,
        "",
        "clear removes the owner"
    );
    assert_eq!(sessions.of("ann").await.unwrap().len(), 1, "clear");
    clock.advance(601);
    assert_eq!(sessions.of("ann").await.unwrap(), vec![], "expired");
}

#[tokio::test]
async fn an_absolute_timeout_past_ends_a_session_for_the_list_too() {
    let clock = TestClock::at(T0);
    let (app, sessions) = app(layer(&clock).absolute_timeout(Duration::from_secs(300)));
    let (mut jar, _) = login(&app, "ann", "a").await;
    clock.advance(250);
    jar.send(&app, post_req("/touch")).await;
    assert_eq!(sessions.of("ann").await.unwrap().len(), 1);
    clock.advance(60);
    assert_eq!(
        sessions.of("ann").await.unwrap(),
        vec![],
        "past the absolute timeout"
    );
}

/// A store of one's own that lists sessions that are not the owner's is
/// not believed, and one that cannot list says so.
#[tokio::test]
async fn the_listing_is_checked_and_unsupported_is_an_error() {
    use session_layer::Error;
    use session_layer::store::{Changes, Record, SessionId};

    /// A store over the `MemoryStore` inside `$name`: the five required
    /// methods handed to it, and the methods in braces of its own.
    macro_rules! store_over_memory {
        ($name:ident { $($own:tt)* }) => {
            #[session_layer::store::async_trait]
            impl SessionStore for $name {
            async fn load(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
                self.0.load(id, now).await
            }
            async fn create(&self, id: &SessionId, record: &Record) -> Result<bool, Error> {
                self.0.create(id, record).await
            }
            async fn apply(&self, id: &SessionId, changes: &Changes) -> Result<bool, Error> {
                self.0.apply(id, changes).await
            }
            async fn delete(&self, id: &SessionId) -> Result<(), Error> {
                self.0.delete(id).await
            }
            async fn take(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
                self.0.take(id, now).await
            }
            $($own)*
            }
        };
    }

    #[derive(Debug, Default)]
    struct Liar(MemoryStore);
    store_over_memory!(Liar {
        async fn owned(&self, _owner: &str, now: u64) -> Result<Vec<(SessionId, Record)>, Error> {
            // Everyone's sessions, whoever asks.
            let mut all = self.0.owned("ann", now).await?;
            all.extend(self.0.owned("bob", now).await?);
            Ok(all)
        }
    });
    let clock = TestClock::at(T0);
    let layer = SessionLayer::new(Key::generate())
        .with_store(Liar::default())
        .clock(clock.source());
    let (app, sessions) = app(layer);
    login(&app, "ann", "a").await;
    let (mut bob, _) = login(&app, "bob", "b").await;
    assert_eq!(sessions.of("ann").await.unwrap().len(), 1);
    assert_eq!(sessions.end_all("ann").await.unwrap(), 1);
    assert_eq!(
        bob.get_text(&app, "/user").await.1,
        "bob",
        "bob's survived the liar"
    );

    /// Keeps the default `owned`: a store that cannot enumerate.
    #[derive(Debug, Default)]
    struct NoIndex(MemoryStore);
    store_over_memory!(NoIndex {});
    let sessions = SessionLayer::new(Key::generate())
        .with_store(NoIndex::default())
        .sessions()
        .unwrap();
    let error = sessions.of("ann").await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unsupported);
    assert_eq!(error.status(), http::StatusCode::NOT_IMPLEMENTED);
}

/// Client-side sessions cannot be listed; "sign out everywhere" is a
/// per-owner time before which that owner's cookies are refused.
#[tokio::test]
async fn client_side_sign_out_everywhere_is_a_per_owner_not_before_time() {
    let clock = TestClock::at(T0);
    let signed_out_at: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let hook = {
        let signed_out_at = signed_out_at.clone();
        move |data: &session_layer::SessionData| {
            let owner = Session::owner_of(data)?;
            let at = *signed_out_at.lock().unwrap().get(owner)?;
            Some(UNIX_EPOCH + Duration::from_secs(at))
        }
    };
    let layer = SessionLayer::new(Key::generate())
        .clock(clock.source())
        .not_before(hook);
    let app = Router::new()
        .route(
            "/login/{user}",
            post(|session: Session, Path(user): Path<String>| async move {
                session.insert("user", &user).unwrap();
                session.set_owner(user).unwrap();
            }),
        )
        .route(
            "/user",
            get(|session: Session| async move {
                assert!(session.handle().is_none(), "no handle in a cookie");
                session.get::<String>("user").unwrap().unwrap_or_default()
            }),
        )
        .layer(layer);
    let mut phone = Jar::new();
    phone.send(&app, post_req("/login/ann")).await;
    let mut laptop = Jar::new();
    laptop.send(&app, post_req("/login/ann")).await;
    let mut bob = Jar::new();
    bob.send(&app, post_req("/login/bob")).await;
    assert_eq!(phone.get_text(&app, "/user").await.1, "ann");
    assert!(phone.get("session").unwrap().len() > 20);

    clock.advance(10);
    signed_out_at.lock().unwrap().insert("ann".into(), T0 + 10);
    assert_eq!(
        phone.get_text(&app, "/user").await.1,
        "",
        "every cookie of ann's is void"
    );
    assert_eq!(laptop.get_text(&app, "/user").await.1, "");
    assert_eq!(bob.get_text(&app, "/user").await.1, "bob");
    // A login after that time works again.
    clock.advance(1);
    let mut again = Jar::new();
    again.send(&app, post_req("/login/ann")).await;
    assert_eq!(again.get_text(&app, "/user").await.1, "ann");
}

/// "Sign out everywhere" ends every session of the owner's that the store
/// holds, whatever this layer's absolute timeout says of its age: a layer
/// that shares the store with a longer timeout (another service, or this
/// one after the timeout was raised) still serves that session, and it
/// must not survive the sign-out.
#[tokio::test]
async fn sign_out_everywhere_ends_sessions_past_this_layers_absolute_timeout() {
    let clock = TestClock::at(T0);
    let relaxed = layer(&clock);
    let strict = relaxed.clone().absolute_timeout(Duration::from_secs(300));
    let (relaxed_app, _) = app(relaxed);
    let (_, strict_sessions) = app(strict);
    let (mut phone, _) = login(&relaxed_app, "ann", "phone").await;
    clock.advance(250);
    phone.send(&relaxed_app, post_req("/touch")).await;
    clock.advance(100);
    assert_eq!(phone.get_text(&relaxed_app, "/user").await.1, "ann");

    assert_eq!(
        strict_sessions.of("ann").await.unwrap(),
        vec![],
        "not listed: dead to the strict layer"
    );
    strict_sessions.end_all("ann").await.unwrap();
    assert_eq!(
        phone.get_text(&relaxed_app, "/user").await.1,
        "",
        "signed out everywhere, the other layer included"
    );
}
