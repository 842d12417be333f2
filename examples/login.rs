//! A login page on server-side sessions, the embedded default (the
//! in-memory store: no external service).
//!
//! ```sh
//! SESSION_SECURE=false cargo run --example login
//! # open http://127.0.0.1:3000/ and sign in as anyone with the password "letmein"
//! ```
//!
//! Shows what a login needs from a session layer: `cycle_id()` at login,
//! so an id planted before login is worthless after it (session fixation);
//! `flush()` at logout, removing the record and the cookie; flash messages
//! for the next page; a cart that survives a double click (`push`, a merge
//! operation the store makes itself: two "add to cart" at once keep both
//! items); and a "your sessions" list (`set_owner` at login,
//! `Sessions` to list and end them): each device with its browser and when
//! it was last seen, "sign out" on each, and "sign out everywhere else".
//!
//! Environment: `PORT` (default 3000, 0 picks one), `SESSION_SECRET` (at
//! least 32 bytes; random when unset), `SESSION_SECURE=false` for plain
//! http, `SESSION_STORE=memory` (default) or `file:PATH` (with
//! `--features file-store`).

use std::process::ExitCode;
use std::time::Duration;

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::HeaderMap;
use axum::http::header::USER_AGENT;
use axum::response::{Html, Redirect};
use axum::routing::{get, post};
use serde::Deserialize;
use session_layer::store::MemoryStore;
use session_layer::{Key, Session, SessionInfo, SessionLayer, Sessions};
use tracing_subscriber::EnvFilter;

/// The demo's only password. A real app checks a password hash.
const PASSWORD: &str = "letmein";

#[derive(Deserialize)]
struct Item {
    item: String,
}

#[derive(Deserialize)]
struct Credentials {
    user: String,
    password: String,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// "3 min ago", from seconds since the Unix epoch.
fn ago(at: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match now.saturating_sub(at) {
        s if s < 60 => "just now".into(),
        s if s < 3600 => format!("{} min ago", s / 60),
        s => format!("{} h ago", s / 3600),
    }
}

/// The signed-in user's sessions, this one first, each with a button that
/// ends it; then one that ends all the others.
fn sessions_list(listed: &[SessionInfo], current: Option<&str>) -> String {
    let mut rows = String::new();
    let ordered = (listed.iter().filter(|s| Some(s.handle.as_str()) == current))
        .chain(listed.iter().filter(|s| Some(s.handle.as_str()) != current));
    for info in ordered {
        let browser = (info.meta.as_ref())
            .and_then(|meta| meta.get("browser"))
            .and_then(|b| b.as_str())
            .unwrap_or("unknown browser");
        let this = Some(info.handle.as_str()) == current;
        let action = if this {
            "<em>this device</em>".to_owned()
        } else {
            format!(
                "<form method=\"post\" action=\"/sessions/{h}/end\"><button class=\"end\">Sign out</button></form>",
                h = escape(&info.handle)
            )
        };
        rows.push_str(&format!(
            "<li class=\"session{}\" data-handle=\"{}\">{} &middot; signed in {} &middot; last seen {} {action}</li>\n",
            if this { " current" } else { "" },
            escape(&info.handle),
            escape(browser),
            ago(info.created_at),
            ago(info.last_used),
        ));
    }
    let others =
        listed.len() - usize::from(current.is_some_and(|c| listed.iter().any(|s| s.handle == c)));
    let everywhere = if others > 0 {
        "<form method=\"post\" action=\"/sessions/end-others\"><button id=\"end-others\">Sign out everywhere else</button></form>\n"
    } else {
        ""
    };
    format!("<h2>Your sessions</h2>\n<ul id=\"sessions\">\n{rows}</ul>\n{everywhere}")
}

async fn home(
    State(sessions): State<Sessions>,
    session: Session,
) -> Result<Html<String>, session_layer::Error> {
    let flashes: String = session
        .take_flashes()?
        .into_iter()
        .map(|(category, message)| {
            format!(
                "<p class=\"flash {}\">{}</p>\n",
                escape(&category),
                escape(&message)
            )
        })
        .collect();
    let body = match session.get::<String>("user")? {
        Some(user) => {
            // A counter that two tabs loading at once both count: the
            // store adds, rather than this request writing its own sum.
            let visits = session.increment("visits", 1)?;
            let listed = sessions.of(&user).await?;
            format!(
                "<p id=\"who\">Signed in as {}</p>\n<p id=\"visits\">{visits} visits this session</p>\n\
                 <form method=\"post\" action=\"/logout\"><button id=\"logout\">Sign out</button></form>\n{}{}",
                escape(&user),
                cart(&session.get::<Vec<String>>("cart")?.unwrap_or_default()),
                sessions_list(&listed, session.handle().as_deref())
            )
        }
        None => format!(
            "<p id=\"who\">Not signed in</p>\n<form method=\"post\" action=\"/login\">\n\
             <input id=\"user\" name=\"user\" placeholder=\"name\">\n\
             <input id=\"password\" name=\"password\" type=\"password\" placeholder=\"password ({PASSWORD})\">\n\
             <button id=\"login\">Sign in</button>\n</form>\n"
        ),
    };
    Ok(Html(format!(
        "<!doctype html>\n<meta charset=\"utf-8\">\n<title>Login</title>\n<h1>Login demo</h1>\n{flashes}{body}"
    )))
}

/// The cart and its "add" buttons.
fn cart(items: &[String]) -> String {
    let rows: String = (items.iter())
        .map(|item| format!("<li>{}</li>\n", escape(item)))
        .collect();
    let buttons: String = ["book", "pen", "lamp"]
        .iter()
        .map(|item| {
            format!(
                "<form method=\"post\" action=\"/cart\"><input type=\"hidden\" name=\"item\" value=\"{item}\">\
                 <button id=\"add-{item}\">Add a {item}</button></form>\n"
            )
        })
        .collect();
    format!(
        "<h2>Your cart</h2>\n<p id=\"cart-size\">{} items</p>\n<ul id=\"cart\">\n{rows}</ul>\n{buttons}",
        items.len()
    )
}

/// "Add to cart": an append the store makes to the cart it holds, so a
/// double click (two requests at once, each having read the cart) keeps
/// both items. Reading the cart, pushing onto it and writing it back would
/// answer the second click 409 instead (nothing is ever lost silently).
async fn add_to_cart(
    session: Session,
    Form(form): Form<Item>,
) -> Result<Redirect, session_layer::Error> {
    if session.get::<String>("user")?.is_some() {
        session.push("cart", form.item)?;
    }
    Ok(Redirect::to("/"))
}

async fn login(
    session: Session,
    headers: HeaderMap,
    Form(form): Form<Credentials>,
) -> Result<Redirect, session_layer::Error> {
    if form.password != PASSWORD || form.user.trim().is_empty() {
        session.flash("error", "Wrong name or password.")?;
        return Ok(Redirect::to("/"));
    }
    // A new id at the change of privilege: whatever id the browser had
    // (perhaps one an attacker planted) no longer names this session.
    session.cycle_id();
    session.insert("user", form.user.trim())?;
    // Whose session this is, and what the sessions page shows of it.
    session.set_owner(form.user.trim())?;
    let browser = (headers.get(USER_AGENT))
        .and_then(|agent| agent.to_str().ok())
        .map_or("unknown browser", browser_name);
    session.set_owner_meta(serde_json::json!({ "browser": browser }))?;
    session.flash("message", &format!("Welcome, {}!", form.user.trim()))?;
    Ok(Redirect::to("/"))
}

/// A short name for a browser from its user agent.
fn browser_name(agent: &str) -> &'static str {
    let known = [
        ("Edg/", "Edge"),
        ("HeadlessChrome", "Headless Chrome"),
        ("Chrome/", "Chrome"),
        ("Firefox/", "Firefox"),
        ("Safari/", "Safari"),
        ("curl/", "curl"),
    ];
    (known.iter().find(|(mark, _)| agent.contains(mark))).map_or("other browser", |(_, name)| name)
}

/// Ends one of the signed-in user's other sessions ("sign out" on a row).
async fn end_one(
    State(sessions): State<Sessions>,
    session: Session,
    Path(handle): Path<String>,
) -> Result<Redirect, session_layer::Error> {
    let Some(user) = session.owner() else {
        return Ok(Redirect::to("/"));
    };
    // This device's own row: a sign-out (a flash written to the session
    // just ended would fail the request).
    if session.handle().as_deref() == Some(handle.as_str()) {
        session.flush();
        return Ok(Redirect::to("/"));
    }
    // Only a session of this user's: a handle of anyone else's ends nothing.
    if sessions.end_of(&user, &handle).await? {
        session.flash("message", "That session is signed out.")?;
    }
    Ok(Redirect::to("/"))
}

/// Ends every session of the signed-in user but this one.
async fn end_others(
    State(sessions): State<Sessions>,
    session: Session,
) -> Result<Redirect, session_layer::Error> {
    if let (Some(user), Some(current)) = (session.owner(), session.handle()) {
        let ended = sessions.end_all_except(&user, &current).await?;
        session.flash("message", &format!("Signed out {ended} other session(s)."))?;
    }
    Ok(Redirect::to("/"))
}

async fn logout(session: Session) -> Result<Redirect, session_layer::Error> {
    // The record and its id are gone; the flash starts a fresh session.
    session.flush();
    session.flash("message", "Signed out.")?;
    Ok(Redirect::to("/"))
}

/// An error and its cause: `Error`'s text says what failed, its
/// `source()` why.
fn with_cause(error: &session_layer::Error) -> String {
    match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}

fn layer() -> Result<SessionLayer, String> {
    let key = match std::env::var_os("SESSION_SECRET") {
        Some(_) => Key::from_env("SESSION_SECRET").map_err(|e| with_cause(&e))?,
        None => {
            eprintln!("warning: SESSION_SECRET is unset; using a random key");
            Key::generate()
        }
    };
    let secure = std::env::var("SESSION_SECURE").as_deref() != Ok("false");
    let layer = SessionLayer::new(key)
        .secure(secure)
        .idle_timeout(Duration::from_secs(30 * 60))
        .absolute_timeout(Duration::from_secs(12 * 60 * 60));
    Ok(match std::env::var("SESSION_STORE").as_deref() {
        Err(_) | Ok("memory") => layer.with_store(MemoryStore::new()),
        #[cfg(feature = "file-store")]
        Ok(spec) if spec.starts_with("file:") => {
            let store =
                session_layer::store::FileStore::new(&spec[5..]).map_err(|e| with_cause(&e))?;
            layer.with_store(store)
        }
        #[cfg(not(feature = "file-store"))]
        Ok(spec) if spec.starts_with("file:") => {
            return Err(format!(
                "SESSION_STORE={spec:?} needs the file-store feature: \
                 cargo run --features file-store --example login"
            ));
        }
        Ok(other) => return Err(format!("SESSION_STORE={other:?}: use memory or file:PATH")),
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    // A session that cannot be saved, or a short key, is logged: say so.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    let layer = match layer() {
        Ok(layer) => layer,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    let sessions = layer.sessions().expect("a server-side layer");
    let app = Router::new()
        .route("/", get(home))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/cart", post(add_to_cart))
        .route("/sessions/{handle}/end", post(end_one))
        .route("/sessions/end-others", post(end_others))
        .with_state(sessions)
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
