//! A notebook kept entirely in the browser's cookies: write a note of any
//! size up to the chunk budget (about 40 KB) and it comes back on every
//! page. Shows chunked client-side sessions at work; the browser test
//! drives this page in headless Chromium.
//!
//! ```sh
//! SESSION_SECURE=false cargo run --example notes
//! # open http://127.0.0.1:3000/ and paste a long text
//! ```
//!
//! Environment: `PORT` (default 3000, 0 picks one), `SESSION_SECRET`,
//! `SESSION_SECURE=false` for plain http, `SESSION_CODEC=signed|private`,
//! `RUST_LOG` (default `info`: a session that cannot be saved is logged).
//!
//! A note over the budget (about 40 KB) is refused with a page that says
//! why: this example's error handler speaks, where the default one answers
//! an empty 500 and leaves the reason to the log.
//!
//! Try it in a browser: curl sends at most about 8 KB of `Cookie` header by
//! default, so a large chunked session sent back by curl arrives cut short
//! and reads as empty.

use std::process::ExitCode;

use axum::Router;
use axum::extract::Form;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use session_layer::{Key, Session, SessionLayer};
use tracing_subscriber::EnvFilter;

#[derive(Deserialize)]
struct Note {
    note: String,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn index(session: Session) -> Result<Html<String>, session_layer::Error> {
    let note: String = session.get("note")?.unwrap_or_default();
    let chars = note.chars().count();
    Ok(Html(format!(
        r#"<!doctype html>
<meta charset="utf-8">
<title>Notes</title>
<h1>Your note</h1>
<p id="size">{chars} characters</p>
<form method="post" action="/note">
  <textarea id="note" name="note" rows="12" cols="80"></textarea>
  <button id="save" type="submit">Save</button>
</form>
<form method="post" action="/clear"><button id="clear" type="submit">Clear</button></form>
<p><a id="view" href="/note">View the note</a></p>
"#
    )))
}

async fn view(session: Session) -> Result<Html<String>, session_layer::Error> {
    let note: String = session.get("note")?.unwrap_or_default();
    Ok(Html(format!(
        "<!doctype html>\n<meta charset=\"utf-8\">\n<title>Note</title>\n<pre id=\"text\">{}</pre>\n<a href=\"/\">Back</a>\n",
        escape(&note)
    )))
}

async fn save(session: Session, Form(form): Form<Note>) -> Result<Response, session_layer::Error> {
    session.insert("note", form.note)?;
    Ok(Redirect::to("/").into_response())
}

async fn clear(session: Session) -> Redirect {
    session.clear();
    Redirect::to("/")
}

fn layer() -> Result<SessionLayer, String> {
    let key = match std::env::var("SESSION_SECRET") {
        Ok(_) => Key::from_env("SESSION_SECRET").map_err(|e| e.to_string())?,
        Err(_) => {
            eprintln!(
                "warning: SESSION_SECRET is unset; using a random key, notes end with the process"
            );
            Key::generate()
        }
    };
    let layer = match std::env::var("SESSION_CODEC").as_deref() {
        Err(_) | Ok("signed") => SessionLayer::signed(key),
        Ok("private") => SessionLayer::private(key),
        Ok(other) => return Err(format!("SESSION_CODEC={other:?}: use signed or private")),
    };
    let secure = std::env::var("SESSION_SECURE").as_deref() != Ok("false");
    Ok(layer.secure(secure))
}

#[tokio::main]
async fn main() -> ExitCode {
    let layer = match layer() {
        Ok(layer) => layer,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    // Say why a save failed (the default handler answers an empty 500).
    let layer = layer.with_error_handler(|error: &session_layer::Error| {
        let message = format!("the note could not be saved: {error}\n");
        (error.status(), message).into_response()
    });
    let app = Router::new()
        .route("/", get(index))
        .route("/note", get(view).post(save))
        .route("/clear", post(clear))
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
