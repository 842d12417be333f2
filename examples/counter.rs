//! The smallest useful app: a per-visitor counter.
//!
//! ```sh
//! cargo run --example counter
//! curl -c jar -b jar http://127.0.0.1:3000/   # You have been here 1 time(s). (then 2, 3, ...)
//! ```

use axum::{Router, routing::get};
use session_layer::{Key, Session, SessionLayer};
use tracing_subscriber::EnvFilter;

async fn count(session: Session) -> Result<String, session_layer::Error> {
    let n = session.update("count", |n: Option<u64>| n.unwrap_or(0) + 1)?;
    Ok(format!("You have been here {n} time(s).\n"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A session that cannot be saved, or a short key, is logged: say so.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    // A fresh key per start: fine for a demo, sessions end with the process.
    // `secure(false)` because the demo is plain http on localhost.
    let app = Router::new()
        .route("/", get(count))
        .layer(SessionLayer::new(Key::generate()).secure(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
