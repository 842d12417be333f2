//! The Axum half of the shared-login example: the same routes as
//! `app.py`, on Flask's own session cookie, so a user logged in by either
//! app is logged in on both. See `examples/flask_shared/README.md`.
//!
//! ```sh
//! SESSION_SECRET='one secret for both apps' cargo run --features flask --example flask_shared
//! ```

use std::process::ExitCode;

use axum::Router;
use axum::extract::Form;
use axum::routing::{get, post};
use serde::Deserialize;
use session_layer::codec::FlaskCodec;
use session_layer::{Session, SessionLayer};
use tracing_subscriber::EnvFilter;

#[derive(Deserialize)]
struct Login {
    user: String,
}

async fn login(session: Session, Form(form): Form<Login>) -> Result<String, session_layer::Error> {
    session.clear();
    session.insert("user", &form.user)?;
    session.insert("logged_in_by", "axum")?;
    session.set_permanent(true);
    Ok(format!("logged in as {} (by Axum)\n", form.user))
}

async fn whoami(session: Session) -> Result<String, session_layer::Error> {
    let user: String = session.get("user")?.unwrap_or_else(|| "anonymous".into());
    let by: String = session
        .get("logged_in_by")?
        .unwrap_or_else(|| "nobody".into());
    Ok(format!("{user} (logged in by {by}, seen by Axum)\n"))
}

async fn logout(session: Session) -> &'static str {
    session.clear();
    "logged out (by Axum)\n"
}

#[tokio::main]
async fn main() -> ExitCode {
    // A session that cannot be saved, or a short key, is logged: say so.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    let secret = std::env::var("SESSION_SECRET")
        .unwrap_or_else(|_| "change me: one secret for both apps".into());
    let codec = match FlaskCodec::new(secret) {
        Ok(codec) => codec,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Plain http on localhost, as app.py; keep Secure on in production.
    let layer = SessionLayer::flask(codec).secure(false);
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
