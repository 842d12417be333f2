//! Interop with the real Flask 3.1 (the pinned venv scripts/test.sh
//! creates): cookies written by one side are read by the other, byte for
//! byte where the data and time are the same.
#![cfg(all(feature = "flask", feature = "axum", feature = "memory-store"))]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use axum::Router;
use axum::routing::get;
use common::{body_text, missing, with_cookie};
use serde_json::{Value, json};
use session_layer::codec::{DecodeError, FlaskCodec};
use session_layer::{Error, Session, SessionLayer};
use tower::ServiceExt;

const T0: u64 = 1_800_000_000;
const MONTH: u64 = 31 * 24 * 3600;

/// A running `tests/flask/flask_peer.py`.
struct Flask {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// The pinned venv's Python, or `None` (after skipping or failing as
/// `missing` decides) when scripts/test.sh has not created it.
fn venv_python() -> Option<&'static str> {
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    if std::path::Path::new(python).exists() {
        return Some(python);
    }
    missing("the Flask venv (.venv) is not set up");
    None
}

impl Flask {
    fn start() -> Option<Self> {
        let python = venv_python()?;
        let mut child = Command::new(python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/flask/flask_peer.py"
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python starts");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Some(Self {
            child,
            stdin,
            stdout,
        })
    }

    fn ask(&mut self, request: Value) -> Value {
        writeln!(self.stdin, "{request}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("flask answered {line:?}"))
    }

    /// The cookie Flask writes for `data` (typed JSON) at `now`.
    fn dumps(&mut self, secret: &str, data: Value, permanent: bool, now: u64) -> String {
        let answer = self.ask(json!({"op": "dumps", "secret": secret, "now": now, "data": data, "permanent": permanent}));
        answer["cookie"].as_str().unwrap().to_owned()
    }

    /// What Flask reads from `cookie`: Ok((typed data, permanent)) or the
    /// exception's name.
    fn loads(
        &mut self,
        secret: &str,
        fallbacks: &[&str],
        cookie: &str,
        now: u64,
        max_age: u64,
    ) -> Result<(Value, bool), String> {
        let answer = self.ask(json!({
            "op": "loads", "secret": secret, "fallbacks": fallbacks,
            "cookie": cookie, "now": now, "max_age": max_age,
        }));
        if answer["ok"] == true {
            Ok((answer["data"].clone(), answer["permanent"] == true))
        } else {
            Err(answer["error"].as_str().unwrap().to_owned())
        }
    }

    /// What Flask renders from the Jinja `template` with the session it
    /// reads from `cookie`.
    fn render(&mut self, secret: &str, cookie: &str, now: u64, template: &str) -> String {
        let answer = self.ask(json!({
            "op": "render", "secret": secret, "cookie": cookie, "now": now, "template": template,
        }));
        answer["html"].as_str().unwrap().to_owned()
    }
}

impl Drop for Flask {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn codec(secret: &str) -> FlaskCodec {
    FlaskCodec::new(secret).unwrap()
}

fn map(value: Value) -> serde_json::Map<String, Value> {
    value.as_object().unwrap().clone()
}

/// Every Python type Flask tags, as Flask's typed JSON and as the plain
/// JSON Rust reads.
fn every_tagged_type() -> (Value, Value) {
    (
        json!({
            "tuple": {"$tuple": [1, "two", {"$tuple": [3]}]},
            "bytes": {"$bytes": "AAH/c2Vzc2lvbg=="},
            "uuid": {"$uuid": "12345678123456781234567812345678"},
            "when": {"$datetime": "2015-10-21T07:28:00Z"},
            "markup": {"$markup": "<b>bold</b>"},
            "looks_tagged": {" t": [1, 2]},
            "nested": {"list": [{"$bytes": "AA=="}, {"k": {"$uuid": "00000000000000000000000000000001"}}]},
            "_flashes": [{"$tuple": ["message", "hello"]}],
            "text": "zoë 日本 😀",
            "n": [1, -2, 3.5, 1e16, null, true],
        }),
        json!({
            "tuple": [1, "two", [3]],
            "bytes": [0, 1, 255, 115, 101, 115, 115, 105, 111, 110],
            "uuid": "12345678-1234-5678-1234-567812345678",
            "when": "2015-10-21T07:28:00Z",
            "markup": "<b>bold</b>",
            "looks_tagged": {" t": [1, 2]},
            "nested": {"list": [[0], {"k": "00000000-0000-0000-0000-000000000001"}]},
            "_flashes": [["message", "hello"]],
            "text": "zoë 日本 😀",
            "n": [1, -2, 3.5, 1e16, null, true],
        }),
    )
}

#[test]
fn flask_writes_rust_reads_every_tagged_type() {
    let Some(mut flask) = Flask::start() else {
        return;
    };
    let (typed, plain) = every_tagged_type();
    for permanent in [false, true] {
        let cookie = flask.dumps("dev", typed.clone(), permanent, T0);
        let decoded = codec("dev").decode(&cookie, T0 + 10, MONTH).unwrap();
        assert_eq!(Value::Object(decoded.data), plain);
        assert_eq!(decoded.permanent, permanent);
        assert_eq!(decoded.issued_at, T0);
    }
}

#[test]
fn rust_writes_flask_reads() {
    let Some(mut flask) = Flask::start() else {
        return;
    };
    let data = json!({
        "user": {"id": 7, "roles": ["admin", "ops"]},
        "text": "zoë \u{7f} 日本 😀 \"quoted\" \\ \n",
        "floats": [0.1, 1e-7, 1e16, -0.0, 123.0],
        "big": 9007199254740993u64,
        "looks_tagged": {" t": [1, 2]},
    });
    for permanent in [false, true] {
        let cookie = codec("dev").encode(&map(data.clone()), permanent, T0);
        let (seen, seen_permanent) = flask.loads("dev", &[], &cookie, T0 + 10, MONTH).unwrap();
        assert_eq!(seen, data);
        assert_eq!(seen_permanent, permanent);
    }
}

#[test]
fn output_is_byte_identical_to_flask() {
    let Some(mut flask) = Flask::start() else {
        return;
    };
    let cases = [
        json!({}),
        json!({"user_id": 42}),
        json!({"b": 1, "a": {"z": [1, 2.5, "x"], "c": null}}),
        json!({"text": "zoë 日本 😀 \u{7f} \"q\" \\", "f": [0.1, 1e-7, 1e16, 123.0]}),
        json!({"long": "compressible ".repeat(60)}),
        json!({"looks_tagged": {" di": {"a": 1}}, "cart": [{"sku": "A1", "qty": 2}]}),
    ];
    for data in cases {
        for permanent in [false, true] {
            let theirs = flask.dumps("a secret key", data.clone(), permanent, T0);
            let ours = codec("a secret key").encode(&map(data.clone()), permanent, T0);
            assert_eq!(ours, theirs, "{data}");
        }
    }
    // Tagged values from Flask come back out exactly as Flask wrote them.
    let (typed, _) = every_tagged_type();
    let theirs = flask.dumps("dev", typed, true, T0);
    let app = Router::new()
        .route(
            "/",
            get(|s: Session| async move {
                s.mark_modified();
                "ok"
            }),
        )
        .layer(
            SessionLayer::flask(codec("dev"))
                .clock(|| std::time::UNIX_EPOCH + std::time::Duration::from_secs(T0)),
        );
    let ours = rt().block_on(async {
        let response = app
            .oneshot(with_cookie("/", &format!("session={theirs}")))
            .await
            .unwrap();
        common::set_cookies(&response)[0].clone()
    });
    assert!(
        ours.starts_with(&format!("session={theirs};")),
        "{ours}\n{theirs}"
    );
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn values_from_flask_keep_their_python_type_through_rust() {
    let Some(mut flask) = Flask::start() else {
        return;
    };
    let (typed, _) = every_tagged_type();
    let cookie = flask.dumps("dev", typed.clone(), false, T0);

    // A Rust handler changes some values and adds one; Flask reads the result.
    async fn edit(session: Session) -> Result<&'static str, Error> {
        let mut tuple: Vec<Value> = session.get("tuple")?.unwrap();
        tuple.push(json!(4));
        session.insert("tuple", tuple)?;
        session.insert("when", "2020-01-02T03:04:05Z")?;
        session.insert("added", [1, 2])?;
        Ok("edited")
    }
    let app = Router::new().route("/", get(edit)).layer(
        SessionLayer::flask(codec("dev"))
            .clock(|| std::time::UNIX_EPOCH + std::time::Duration::from_secs(T0)),
    );
    let written = rust_rewrites(app, &cookie);
    let (seen, _) = flask.loads("dev", &[], &written, T0, MONTH).unwrap();
    let mut expected = typed;
    expected["tuple"] = json!({"$tuple": [1, "two", {"$tuple": [3]}, 4]});
    expected["when"] = json!({"$datetime": "2020-01-02T03:04:05Z"});
    expected["added"] = json!([1, 2]);
    // A nested tuple inside a changed tuple becomes a list: only the
    // top-level type of a changed value is known.
    expected["tuple"]["$tuple"][2] = json!([3]);
    assert_eq!(seen, expected);
}

/// The session cookie `app` writes when a request carries `cookie`.
fn rust_rewrites(app: Router, cookie: &str) -> String {
    rt().block_on(async {
        let response = app
            .oneshot(with_cookie("/", &format!("session={cookie}")))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let line = common::set_cookies(&response)[0].clone();
        line.split(';')
            .next()
            .unwrap()
            .strip_prefix("session=")
            .unwrap()
            .to_owned()
    })
}

#[test]
fn a_string_rust_writes_over_flask_markup_is_escaped_by_jinja() {
    let Some(mut flask) = Flask::start() else {
        return;
    };
    let template = r#"{{ session["banner"] }}"#;
    let cookie = flask.dumps(
        "dev",
        json!({"banner": {"$markup": "<i>hi</i>"}}),
        false,
        T0,
    );
    // Flask trusts its own Markup: Jinja renders it as it is.
    assert_eq!(flask.render("dev", &cookie, T0, template), "<i>hi</i>");

    let layer = || {
        SessionLayer::flask(codec("dev"))
            .clock(|| std::time::UNIX_EPOCH + std::time::Duration::from_secs(T0))
    };
    // Written back unchanged, it is still the Markup Flask wrote.
    let same = Router::new()
        .route(
            "/",
            get(|s: Session| async move {
                let banner: String = s.get("banner")?.unwrap();
                s.insert("banner", banner)?;
                s.mark_modified();
                Ok::<_, Error>("same")
            }),
        )
        .layer(layer());
    let written = rust_rewrites(same, &cookie);
    assert_eq!(flask.render("dev", &written, T0, template), "<i>hi</i>");

    // A new string is text, whatever the key held before.
    let script = Router::new()
        .route(
            "/",
            get(|s: Session| async move {
                s.insert("banner", "<script>alert(1)</script>")
                    .map(|()| "replaced")
            }),
        )
        .layer(layer());
    let written = rust_rewrites(script, &cookie);
    assert_eq!(
        flask.render("dev", &written, T0, template),
        "&lt;script&gt;alert(1)&lt;/script&gt;"
    );
}

#[test]
fn fallback_keys_work_both_ways() {
    let Some(mut flask) = Flask::start() else {
        return;
    };
    let data = json!({"user": 1});
    // Flask signed with the old key; Rust has rotated.
    let old_cookie = flask.dumps("old key", data.clone(), false, T0);
    let rotated = codec("new key").fallback("old key").unwrap();
    let decoded = rotated.decode(&old_cookie, T0, MONTH).unwrap();
    assert!(decoded.by_fallback_key);
    assert_eq!(Value::Object(decoded.data), data);
    assert!(codec("new key").decode(&old_cookie, T0, MONTH).is_err());

    // Rust signed with the old key; Flask has rotated.
    let ours_old = codec("old key").encode(&map(data.clone()), false, T0);
    assert!(
        flask
            .loads("new key", &["old key"], &ours_old, T0, MONTH)
            .is_ok()
    );
    assert!(flask.loads("new key", &[], &ours_old, T0, MONTH).is_err());
    // Rust re-signs with the current key: Flask without the fallback reads it.
    let ours_new = rotated.encode(&map(data.clone()), false, T0);
    assert_eq!(
        flask.loads("new key", &[], &ours_new, T0, MONTH).unwrap().0,
        data
    );
}

#[test]
fn expired_and_tampered_cookies_are_refused_by_both_sides_alike() {
    let Some(mut flask) = Flask::start() else {
        return;
    };
    let data = json!({"user": "ann", "roles": ["admin"], "pad": "p".repeat(40)});
    for cookie in [
        flask.dumps("dev", data.clone(), false, T0),
        codec("dev").encode(&map(json!({"long": "compressible ".repeat(60)})), false, T0),
    ] {
        // Expiry: at max age both accept, one second later both refuse.
        assert!(flask.loads("dev", &[], &cookie, T0 + 3600, 3600).is_ok());
        assert!(codec("dev").decode(&cookie, T0 + 3600, 3600).is_ok());
        assert_eq!(
            flask
                .loads("dev", &[], &cookie, T0 + 3601, 3600)
                .unwrap_err(),
            "SignatureExpired"
        );
        assert_eq!(
            codec("dev").decode(&cookie, T0 + 3601, 3600).unwrap_err(),
            DecodeError::Expired
        );

        // Every single-character change, anywhere: both sides agree.
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";
        let mut disagreements = Vec::new();
        let mut refused = 0;
        for i in 0..cookie.len() {
            let mut bytes = cookie.clone().into_bytes();
            let original = bytes[i];
            let pos = alphabet.iter().position(|&c| c == original).unwrap();
            bytes[i] = alphabet[(pos + 7) % alphabet.len()];
            let tampered = String::from_utf8(bytes).unwrap();
            let theirs = flask.loads("dev", &[], &tampered, T0, MONTH).is_ok();
            let ours = codec("dev").decode(&tampered, T0, MONTH).is_ok();
            if theirs != ours {
                disagreements.push(i);
            }
            if !ours {
                refused += 1;
            }
        }
        assert!(
            disagreements.is_empty(),
            "sides disagree at {disagreements:?}"
        );
        assert!(
            refused >= cookie.len() - 1,
            "only {refused} of {} refused",
            cookie.len()
        );
    }
}

#[test]
fn the_layer_shares_a_session_with_flask() {
    let Some(mut flask) = Flask::start() else {
        return;
    };
    async fn visit(session: Session) -> Result<String, Error> {
        let user: Option<String> = session.get("user")?;
        session.insert("visits", session.get::<u32>("visits")?.unwrap_or(0) + 1)?;
        Ok(user.unwrap_or_default())
    }
    let app = Router::new().route("/", get(visit)).layer(
        SessionLayer::flask(codec("shared"))
            .clock(|| std::time::UNIX_EPOCH + std::time::Duration::from_secs(T0)),
    );
    let login = flask.dumps("shared", json!({"user": "ann"}), true, T0);
    let (body, cookie) = rt().block_on(async {
        let response = app
            .clone()
            .oneshot(with_cookie("/", &format!("session={login}")))
            .await
            .unwrap();
        let line = common::set_cookies(&response)[0].clone();
        assert!(
            line.contains("Max-Age"),
            "permanent stays permanent: {line}"
        );
        let cookie = line
            .split(';')
            .next()
            .unwrap()
            .strip_prefix("session=")
            .unwrap()
            .to_owned();
        (body_text(response).await, cookie)
    });
    assert_eq!(body, "ann");
    let (seen, permanent) = flask.loads("shared", &[], &cookie, T0, MONTH).unwrap();
    assert_eq!(seen, json!({"user": "ann", "visits": 1}));
    assert!(permanent);

    // Chunking is off in flask mode: a session too large for one cookie is
    // an error, not chunks Flask could not read. (Pseudo-random text, so
    // zlib cannot shrink it below the limit.)
    let noise: String = (0u64..6000)
        .scan(12345u64, |x, _| {
            *x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            Some(char::from(b'a' + ((*x >> 33) % 26) as u8))
        })
        .collect();
    let big = Router::new()
        .route(
            "/",
            get(move |s: Session| async move { s.insert("big", noise).map(|()| "ok") }),
        )
        .layer(SessionLayer::flask(codec("shared")));
    let status = rt().block_on(async { big.oneshot(common::get("/")).await.unwrap().status() });
    assert_eq!(status, 500);
}

/// Starts `examples/flask_shared/app.py` on a port it picks itself and
/// returns once it listens.
fn start_flask_app(secret: &str) -> Option<common::ExampleServer> {
    let env = [("SESSION_SECRET", secret)];
    common::start_python_app("examples/flask_shared/app.py", &env, "flask")
}

/// A browser's cookie for one host: both apps share it, as on one domain.
fn cookie_after(reply: &common::Reply, cookie: &mut String) {
    common::keep_cookie(&reply.set_cookies, cookie);
}

#[test]
fn a_login_on_one_app_is_seen_by_the_other() {
    let secret = "one secret for both apps";
    let Some(flask_app) = start_flask_app(secret) else {
        return;
    };
    let flask = flask_app.addr.clone();
    let axum_app = common::start_example("flask_shared", &[("SESSION_SECRET", secret)]);
    let axum = axum_app.addr.clone();
    let mut cookie = String::new();

    let reply = common::http_request(&flask, "POST", "/login", "user=ann", &cookie);
    assert_eq!(reply.status, 200, "{}", reply.body);
    cookie_after(&reply, &mut cookie);
    let reply = common::http_request(&axum, "GET", "/whoami", "", &cookie);
    assert_eq!(reply.body, "ann (logged in by flask, seen by Axum)\n");

    let reply = common::http_request(&axum, "POST", "/login", "user=bob", &cookie);
    assert_eq!(reply.status, 200, "{}", reply.body);
    cookie_after(&reply, &mut cookie);
    let reply = common::http_request(&flask, "GET", "/whoami", "", &cookie);
    assert_eq!(reply.body, "bob (logged in by axum, seen by Flask)\n");

    let reply = common::http_request(&axum, "POST", "/logout", "", &cookie);
    cookie_after(&reply, &mut cookie);
    assert!(cookie.is_empty(), "the Axum logout deleted the cookie");
    let reply = common::http_request(&flask, "GET", "/whoami", "", &cookie);
    assert_eq!(
        reply.body,
        "anonymous (logged in by nobody, seen by Flask)\n"
    );

    let reply = common::http_request(&flask, "POST", "/login", "user=cy", &cookie);
    cookie_after(&reply, &mut cookie);
    let reply = common::http_request(&flask, "POST", "/logout", "", &cookie);
    cookie_after(&reply, &mut cookie);
    let reply = common::http_request(&axum, "GET", "/whoami", "", &cookie);
    assert_eq!(
        reply.body,
        "anonymous (logged in by nobody, seen by Axum)\n"
    );
}

#[test]
fn the_kv_example_speaks_flask() {
    let Some(mut flask) = Flask::start() else {
        return;
    };
    // A short Flask key is accepted in flask mode.
    let kv = common::start_example(
        "kv",
        &[("SESSION_CODEC", "flask"), ("SESSION_SECRET", "dev")],
    );
    let reply = common::http_request(&kv.addr, "PUT", "/session/user", "\"ann\"", "");
    assert_eq!(reply.status, 200);
    let mut cookie = String::new();
    cookie_after(&reply, &mut cookie);
    let value = cookie.strip_prefix("session=").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(
        flask.loads("dev", &[], value, now, MONTH).unwrap().0,
        json!({"user": "ann"})
    );

    let theirs = flask.dumps("dev", json!({"cart": {"$tuple": [1, 2]}}), false, now);
    let reply = common::http_request(
        &kv.addr,
        "GET",
        "/session",
        "",
        &format!("session={theirs}"),
    );
    assert_eq!(reply.body, r#"{"cart":[1,2]}"#);
}
