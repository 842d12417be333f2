//! Helpers shared by the Router-level tests: a cookie jar that behaves like
//! a browser's, a settable clock, and request shortcuts.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use http::header::{COOKIE, SET_COOKIE};
use http::{Request, Response};
use tower::ServiceExt;

/// A browser's cookie jar, reduced to what the tests need: it stores what
/// Set-Cookie says, deletes on Max-Age=0 or a past Expires, and sends the
/// rest back.
#[derive(Debug, Default, Clone)]
pub struct Jar {
    pub cookies: BTreeMap<String, String>,
}

impl Jar {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes in every Set-Cookie header of `response`.
    pub fn store<B>(&mut self, response: &Response<B>) {
        for line in response.headers().get_all(SET_COOKIE) {
            let cookie = cookie::Cookie::parse(line.to_str().unwrap().to_owned()).unwrap();
            let deleted = cookie.max_age().is_some_and(|age| age.is_zero())
                || cookie
                    .expires_datetime()
                    .is_some_and(|at| at < cookie::time::OffsetDateTime::now_utc());
            if deleted {
                self.cookies.remove(cookie.name());
            } else {
                self.cookies
                    .insert(cookie.name().to_owned(), cookie.value().to_owned());
            }
        }
    }

    /// The Cookie header a browser would send, if any cookie is stored.
    pub fn header(&self) -> Option<String> {
        (!self.cookies.is_empty()).then(|| {
            self.cookies
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    /// Sends `request` through `app` with the jar's cookies and stores the
    /// response's.
    pub async fn send(&mut self, app: &Router, mut request: Request<Body>) -> Response<Body> {
        if let Some(header) = self.header() {
            request
                .headers_mut()
                .insert(COOKIE, header.parse().unwrap());
        }
        let response = app.clone().oneshot(request).await.unwrap();
        self.store(&response);
        response
    }

    pub async fn get_text(&mut self, app: &Router, uri: &str) -> (http::StatusCode, String) {
        let response = self.send(app, get(uri)).await;
        let status = response.status();
        (status, body_text(response).await)
    }
}

pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

pub fn with_cookie(uri: &str, cookie: &str) -> Request<Body> {
    Request::get(uri)
        .header(COOKIE, cookie)
        .body(Body::empty())
        .unwrap()
}

pub async fn body_text(response: Response<Body>) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

pub fn set_cookies<B>(response: &Response<B>) -> Vec<String> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// A clock the test moves by hand, in whole seconds since the epoch.
#[derive(Debug, Clone)]
pub struct TestClock(Arc<AtomicU64>);

impl TestClock {
    pub fn at(secs: u64) -> Self {
        Self(Arc::new(AtomicU64::new(secs)))
    }

    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }

    pub fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    pub fn source(&self) -> impl Fn() -> SystemTime + Send + Sync + 'static {
        let secs = self.0.clone();
        move || UNIX_EPOCH + Duration::from_secs(secs.load(Ordering::SeqCst))
    }
}

/// An example binary cargo built beside the tests, running on a free port.
pub struct ExampleServer {
    child: std::process::Child,
    pub addr: String,
}

impl Drop for ExampleServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The path of `examples/NAME.rs` as built by `cargo test`.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    let mut path = std::env::current_exe().unwrap();
    path.pop(); // the test binary
    path.pop(); // deps/
    path.push("examples");
    path.push(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} not built: run the whole `cargo test`, which builds the examples",
        path.display()
    );
    path
}

/// Starts `examples/NAME.rs` on a free port with a fixed secret, plain
/// http, and `env` on top; returns once it listens.
pub fn start_example(name: &str, env: &[(&str, &str)]) -> ExampleServer {
    let mut command = std::process::Command::new(example_binary(name));
    command
        .env_remove("SESSION_CODEC")
        .env_remove("SESSION_STORE")
        .env_remove("SESSION_FORMAT")
        .env("SESSION_SECURE", "false")
        .env("SESSION_SECRET", "example-test-secret-of-enough-length!!")
        .stderr(std::process::Stdio::inherit());
    listening(command, env)
}

/// Starts `script` (a path in the repository) with the venv's Python
/// (scripts/test.sh makes `.venv`) on a free port, with `env`; returns
/// once it listens, or `None` (after `missing`) without the venv or the
/// Python packages `needs` names.
pub fn start_python_app(script: &str, env: &[(&str, &str)], needs: &str) -> Option<ExampleServer> {
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    let ready = std::process::Command::new(python)
        .args(["-c", &format!("import {needs}")])
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        missing(&format!("the venv (.venv) with {needs}"));
        return None;
    }
    let mut command = std::process::Command::new(python);
    command
        .arg(format!("{}/{script}", env!("CARGO_MANIFEST_DIR")))
        .stderr(std::process::Stdio::null());
    Some(listening(command, env))
}

/// Runs `command` with `PORT=0` and `env`, and waits for its first line,
/// `listening on http://ADDR`.
fn listening(mut command: std::process::Command, env: &[(&str, &str)]) -> ExampleServer {
    use std::io::BufRead;
    command
        .env("PORT", "0")
        .stdout(std::process::Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    ExampleServer { child, addr }
}

/// A browser's cookie for one host, after a response's Set-Cookie lines:
/// apps on one domain (Flask and Axum side by side) share it.
pub fn keep_cookie(set_cookies: &[String], cookie: &mut String) {
    for line in set_cookies {
        let pair = line.split(';').next().unwrap();
        let deleted = line.contains("Max-Age=0") || line.contains("1970") || pair.ends_with('=');
        *cookie = if deleted {
            String::new()
        } else {
            pair.to_owned()
        };
    }
}

/// Whether the run is CI's, where a test that needs something missing
/// must fail rather than skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skips (outside CI) or fails (in CI) a test whose prerequisite is
/// missing. Returns true when the test should stop.
pub fn missing(what: &str) -> bool {
    assert!(
        !in_ci(),
        "CI=true and {what}: scripts/test.sh should have provided it"
    );
    eprintln!("SKIPPED: {what} (run scripts/test.sh to set it up)");
    true
}

/// What [`http_request`] got back.
pub struct Reply {
    pub status: u16,
    pub set_cookies: Vec<String>,
    /// Every header, names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The first value of the header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request over a fresh connection to `addr`, sending
/// `cookie` (a `Cookie` header value, possibly empty) and `body` (form
/// encoded when it contains `=`, JSON otherwise).
pub fn http_request(addr: &str, method: &str, path: &str, body: &str, cookie: &str) -> Reply {
    let content_type = if body.contains('=') && !body.starts_with(['{', '[', '"']) {
        "application/x-www-form-urlencoded"
    } else {
        "application/json"
    };
    http_request_as(addr, method, path, body, cookie, content_type)
}

/// [`http_request`] with the `Content-Type` given, as curl's `-d` sends
/// `application/x-www-form-urlencoded` whatever the body.
pub fn http_request_as(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    cookie: &str,
    content_type: &str,
) -> Reply {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCookie: {cookie}\r\n\r\n",
        body.len()
    );
    exchange(addr, &head, body)
}

/// One request as a client that keeps no cookies: JSON `body`, and the
/// `headers` given (a session token, say), no `Cookie`.
pub fn http_request_with_headers(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    exchange(addr, &head, body)
}

fn exchange(addr: &str, head: &str, body: &str) -> Reply {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let set_cookies = headers
        .iter()
        .filter(|(name, _)| name == "set-cookie")
        .map(|(_, value)| value.clone())
        .collect();
    Reply {
        status,
        set_cookies,
        headers,
        body: body.to_owned(),
    }
}

/// A server process of a test's own on a free port (no persistence), so
/// stopping, restarting or killing its clients disturbs nothing else.
pub struct ServerProcess {
    child: std::process::Child,
    pub port: u16,
    scheme: &'static str,
}

/// A redis-server of a test's own.
pub type RedisServer = ServerProcess;

impl ServerProcess {
    /// Runs `command`, and waits until `port` accepts connections; `None`
    /// (after `missing`) when `what` is not installed.
    fn spawn(
        mut command: std::process::Command,
        port: u16,
        what: &str,
        scheme: &'static str,
    ) -> Option<Self> {
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let Ok(child) = child else {
            missing(&format!("{what} is not installed"));
            return None;
        };
        let server = Self {
            child,
            port,
            scheme,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what} did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    /// A redis-server on `port`.
    pub fn start(port: u16) -> Option<Self> {
        let mut command = std::process::Command::new("redis-server");
        command.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        Self::spawn(command, port, "redis-server", "redis")
    }

    /// A MongoDB-wire server on `port`: nx-27017 (SQLite-backed, in
    /// memory) from the venv scripts/test.sh prepares.
    pub fn start_mongo(port: u16) -> Option<Self> {
        let binary = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/nx-27017");
        let dir = std::env::temp_dir();
        let mut command = std::process::Command::new(binary);
        command.args([
            "--db",
            "memory",
            "--host",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ]);
        command
            .arg("--log-file")
            .arg(dir.join(format!("nx-27017-{port}.log")))
            .arg("--pid-file")
            .arg(dir.join(format!("nx-27017-{port}.pid")));
        Self::spawn(command, port, "nx-27017 (in .venv)", "mongodb")
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
