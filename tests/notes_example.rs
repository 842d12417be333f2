//! Black-box test of `examples/notes.rs` over real HTTP.
#![cfg(feature = "axum")]

mod common;

/// A note over the chunk budget is refused, and the page says why.
#[test]
fn a_note_too_big_for_the_cookies_is_refused_with_a_reason() {
    let server = common::start_example("notes", &[]);
    let body = format!("note={}", "x".repeat(45_000));
    let reply = common::http_request(&server.addr, "POST", "/note", &body, "");
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert!(
        reply.body.contains("could not be saved") && reply.body.contains("cookie budget"),
        "{}",
        reply.body
    );
    assert!(reply.set_cookies.is_empty(), "nothing half-written");
}
