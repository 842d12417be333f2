//! The Axum half of the Flask-Session shared-login example: the same
//! routes as `app.py`, on Flask-Session's own records in the same Redis,
//! so a user logged in by either app is logged in on both. See
//! `examples/flask_session_shared/README.md`.
//!
//! ```sh
//! cargo run --features flask-session,redis-store --example flask_session_shared
//! ```

use std::process::ExitCode;

use axum::Router;
use axum::extract::Form;
use axum::routing::{get, post};
use serde::Deserialize;
use session_layer::codec::FlaskSessionIds;
use session_layer::store::{FlaskSessionStore, RedisStore};
use session_layer::{Key, Session, SessionLayer};
use tracing_subscriber::EnvFilter;

#[derive(Deserialize)]
struct Login {
    user: String,
}

async fn login(session: Session, Form(form): Form<Login>) -> Result<String, session_layer::Error> {
    session.cycle_id();
    session.clear();
    session.insert("user", &form.user)?;
    session.insert("logged_in_by", "axum")?;
    // Flask-Session's SESSION_PERMANENT = True, the default.
    session.set_permanent(true);
    Ok(format!("logged in as {} (by Axum)\n", form.user))
}

async fn whoami(session: Session) -> Result<String, session_layer::Error> {
    let user: String = session.get("user")?.unwrap_or_else(|| "anonymous".into());
    let by: String = session
        .get("logged_in_by")?
        .unwrap_or_else(|| "nobody".into());
    // A merge: the store adds one to what it holds when it saves, so a
    // visit counted meanwhile (another tab, the Flask app) is never lost
    // and never makes this request a 409 (see the README on mixed writes).
    let visits = session.increment("visits", 1)?;
    Ok(format!(
        "{user} (logged in by {by}, seen by Axum, visit {visits})\n"
    ))
}

async fn logout(session: Session) -> &'static str {
    session.clear();
    "logged out (by Axum)\n"
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let redis = match RedisStore::connect(&url).await {
        Ok(redis) => redis,
        Err(e) => {
            let cause = std::error::Error::source(&e).map(|c| format!(": {c}"));
            eprintln!("error: {e}{}", cause.unwrap_or_default());
            return ExitCode::FAILURE;
        }
    };
    // As app.py: SESSION_KEY_PREFIX "session:", SESSION_USE_SIGNER False.
    let store = FlaskSessionStore::redis(redis)
        .key_prefix("session:")
        .ids(FlaskSessionIds::unsigned());
    // The layer's own key only makes session handles here: the cookie is
    // Flask-Session's raw id.
    let layer = SessionLayer::new(Key::generate())
        .with_store(store)
        // Plain http on localhost, as app.py; keep Secure on in production.
        .secure(false);
    let app = Router::new()
        .route("/login", post(login))
        .route("/whoami", get(whoami))
        .route("/logout", post(logout))
        .layer(layer);
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = match tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("error: cannot listen on 127.0.0.1:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => println!("listening on http://{addr}"),
        Err(e) => eprintln!("warning: cannot read the bound address: {e}"),
    }
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
