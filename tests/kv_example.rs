//! Black-box tests of `examples/kv.rs`: the real binary over real HTTP,
//! the way people poke at it with curl.
#![cfg(all(feature = "axum", feature = "memory-store"))]

mod common;

use std::process::Command;

use serde_json::Value;

use common::{ExampleServer as Server, Reply, example_binary, http_request, start_example};

fn start(env: &[(&str, &str)]) -> Server {
    start_example("kv", env)
}

fn request(server: &Server, method: &str, path: &str, body: &str, cookie: &str) -> Reply {
    http_request(&server.addr, method, path, body, cookie)
}

/// A curl-like session: the cookie from each reply goes into the next request.
struct Client<'a> {
    server: &'a Server,
    cookie: String,
}

impl Client<'_> {
    fn send(&mut self, method: &str, path: &str, body: &str) -> Reply {
        let reply = request(self.server, method, path, body, &self.cookie);
        for line in &reply.set_cookies {
            let pair = line.split(';').next().unwrap();
            self.cookie = if line.contains("Max-Age=0") {
                String::new()
            } else {
                pair.to_owned()
            };
        }
        reply
    }
}

#[test]
fn the_kv_api_works_over_http() {
    for env in [
        [("SESSION_CODEC", "signed"), ("SESSION_STORE", "cookie")],
        [("SESSION_CODEC", "private"), ("SESSION_STORE", "cookie")],
        [("SESSION_CODEC", "signed"), ("SESSION_STORE", "memory")],
    ] {
        kv_api_works_with(&env);
    }
}

/// The README's commands, as curl sends them: `-d` means
/// `application/x-www-form-urlencoded`, whatever the body holds.
#[test]
fn the_documented_curl_commands_work_as_written() {
    let server = start(&[]);
    let curl = |method: &str, path: &str, body: &str, cookie: &str| {
        common::http_request_as(
            &server.addr,
            method,
            path,
            body,
            cookie,
            "application/x-www-form-urlencoded",
        )
    };
    let reply = curl("PUT", "/session/name", "\"ann\"", "");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, r#"{"name":"ann"}"#)
    );
    let cookie = reply.set_cookies[0].split(';').next().unwrap().to_owned();
    let reply = curl("POST", "/session/permanent", "true", &cookie);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = curl("PUT", "/session/name", "not json", &cookie);
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("not JSON"), "{}", reply.body);
}

#[test]
#[cfg(feature = "file-store")]
fn the_kv_api_works_on_a_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let file = format!("file:{}", dir.path().display());
    kv_api_works_with(&[("SESSION_CODEC", "signed"), ("SESSION_STORE", &file)]);
}

#[test]
fn cycle_gives_a_new_id_and_keeps_the_data() {
    for store in ["memory", "cookie"] {
        let server = start(&[("SESSION_STORE", store)]);
        let mut client = Client {
            server: &server,
            cookie: String::new(),
        };
        client.send("PUT", "/session/user", "\"ann\"");
        let before = client.cookie.clone();
        let reply = client.send("POST", "/session/cycle", "");
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, r#"{"user":"ann"}"#)
        );
        // Client-side sessions have no id: the cookie is simply re-issued.
        assert_eq!(reply.set_cookies.len(), 1, "{store}");
        assert_eq!(client.send("GET", "/session", "").body, r#"{"user":"ann"}"#);
        if store == "memory" {
            assert_ne!(client.cookie, before, "a new id");
            let replay = request(&server, "GET", "/session", "", &before);
            assert_eq!(replay.body, "{}", "the old id is dead");
        }
    }
}

fn kv_api_works_with(env: &[(&str, &str)]) {
    let server = start(env);
    let mut client = Client {
        server: &server,
        cookie: String::new(),
    };

    let reply = client.send("GET", "/session", "");
    assert_eq!((reply.status, reply.body.as_str()), (200, "{}"));
    assert!(reply.set_cookies.is_empty());

    let reply = client.send("PUT", "/session/name", "\"ann\"");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, r#"{"name":"ann"}"#)
    );
    assert_eq!(reply.set_cookies.len(), 1);
    assert!(
        !reply.set_cookies[0].contains("Secure"),
        "SESSION_SECURE=false"
    );

    let reply = client.send("PUT", "/session/cart", "[1,2]");
    assert_eq!(reply.body, r#"{"cart":[1,2],"name":"ann"}"#);
    assert_eq!(
        client.send("GET", "/session", "").body,
        r#"{"cart":[1,2],"name":"ann"}"#
    );

    let reply = client.send("DELETE", "/session/name", "");
    assert_eq!(reply.body, r#"{"cart":[1,2]}"#);

    let reply = client.send("POST", "/session/permanent", "true");
    assert_eq!(reply.status, 200);
    assert!(
        reply.set_cookies[0].contains("Max-Age=2678400"),
        "{:?}",
        reply.set_cookies
    );

    let reply = client.send("POST", "/session/clear", "");
    assert_eq!((reply.status, reply.body.as_str()), (200, "{}"));
    assert!(reply.set_cookies[0].contains("Max-Age=0"));
    assert_eq!(client.send("GET", "/session", "").body, "{}");

    // A forged cookie is an empty session, not an error.
    let reply = request(&server, "GET", "/session", "", "session=AAAAforged");
    assert_eq!((reply.status, reply.body.as_str()), (200, "{}"));
}

fn fails_to_start(env: &[(&str, &str)]) -> String {
    let output = Command::new(example_binary("kv"))
        .env("PORT", "0")
        .env("SESSION_SECRET", "kv-example-test-secret-of-enough-length!")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(!output.status.success());
    String::from_utf8(output.stderr).unwrap()
}

#[test]
fn bad_settings_stop_it_with_a_clear_error() {
    assert!(fails_to_start(&[("SESSION_CODEC", "rot13")]).contains("SESSION_CODEC=\"rot13\""));
    assert!(fails_to_start(&[("SESSION_STORE", "floppy:")]).contains("SESSION_STORE=\"floppy:\""));
    // Without the feature kv names the feature instead: still a clear error.
    let file = fails_to_start(&[("SESSION_STORE", "file:/proc/forbidden")]);
    if cfg!(feature = "file-store") {
        assert!(
            file.contains("SESSION_STORE=file:/proc/forbidden"),
            "{file}"
        );
    } else {
        assert!(file.contains("needs the file-store feature"), "{file}");
    }
    let short = fails_to_start(&[("SESSION_SECRET", "short")]);
    assert!(
        short.contains("SESSION_SECRET") && short.contains("at least 32"),
        "{short}"
    );
    assert!(
        !short.contains("short\""),
        "the secret itself is not printed: {short}"
    );
}

/// Whether the server behind `url` accepts TCP connections.
fn reachable(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = host.split('/').next().unwrap_or(host);
    std::net::TcpStream::connect(host).is_ok()
}

#[test]
fn the_kv_api_works_on_every_server_store() {
    let mut urls = Vec::new();
    if cfg!(feature = "redis-store") {
        urls.push(std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()));
    }
    if cfg!(feature = "postgres-store") {
        urls.push(
            std::env::var("POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        );
    }
    if cfg!(feature = "mysql-store") {
        urls.push(
            std::env::var("MYSQL_URL")
                .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into()),
        );
    }
    if cfg!(feature = "memcached-store") {
        urls.push(
            std::env::var("MEMCACHED_URL").unwrap_or_else(|_| "memcache://127.0.0.1:11211".into()),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    for url in urls {
        if !reachable(&url) {
            common::missing(&format!("{url} is unreachable"));
            continue;
        }
        kv_api_works_with(&[("SESSION_STORE", &url)]);
    }
    if cfg!(feature = "sqlite-store") {
        let url = format!("sqlite:{}", dir.path().join("kv.db").display());
        kv_api_works_with(&[("SESSION_STORE", &url)]);
    }
    if cfg!(feature = "mongodb-store")
        && let Some(mongo) = common::ServerProcess::start_mongo(common::free_port())
    {
        kv_api_works_with(&[("SESSION_STORE", &format!("{}/kv", mongo.url()))]);
    }
}

/// Two kv processes on one store, each with a coherent cache
/// (`SESSION_CACHE=1`), and one client going back and forth between them:
/// every answer carries the write the client was last answered for (each
/// write's stamp travels with the client), and a logout or a cycled id on
/// one ends the session on the other.
#[test]
fn two_cached_kv_processes_never_answer_a_stale_session() {
    let mut urls = Vec::new();
    if cfg!(all(feature = "caching-store", feature = "redis-store")) {
        urls.push(std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()));
    }
    if cfg!(all(feature = "caching-store", feature = "postgres-store")) {
        urls.push(
            std::env::var("POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        );
    }
    for url in urls {
        if !reachable(&url) {
            common::missing(&format!("{url} is unreachable"));
            continue;
        }
        let env = [("SESSION_STORE", url.as_str()), ("SESSION_CACHE", "1")];
        let servers = [start(&env), start(&env)];
        let mut clients = servers.each_ref().map(|server| Client {
            server,
            cookie: String::new(),
        });
        // One cookie, whichever server answered last.
        let mut cookie = String::new();
        let mut send = |server: usize, method: &str, path: &str, body: &str| {
            let client = &mut clients[server];
            client.cookie.clone_from(&cookie);
            let reply = client.send(method, path, body);
            assert_eq!(reply.status, 200, "{method} {path}: {}", reply.body);
            cookie.clone_from(&client.cookie);
            (reply.body, cookie.clone())
        };
        for round in 0..40 {
            let (writer, reader) = (round % 2, 1 - round % 2);
            send(writer, "PUT", "/session/n", &round.to_string());
            assert_eq!(
                send(reader, "GET", "/session", "").0,
                format!(r#"{{"n":{round}}}"#),
                "{url}: round {round}, read on the other server"
            );
        }
        send(0, "POST", "/session/clear", "");
        assert_eq!(send(1, "GET", "/session", "").0, "{}", "{url}: logged out");

        let (_, old) = send(1, "PUT", "/session/user", r#""ann""#);
        assert_eq!(send(0, "GET", "/session", "").0, r#"{"user":"ann"}"#);
        let (_, new) = send(0, "POST", "/session/cycle", "");
        assert_ne!(new, old, "a new id");
        assert_eq!(send(1, "GET", "/session", "").0, r#"{"user":"ann"}"#);
        // The old id is a cookie no client keeps (only a thief could send
        // it): the other server drops its copy when the take's message is
        // in, and it never comes back.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while request(&servers[1], "GET", "/session", "", &old).body != "{}" {
            assert!(
                std::time::Instant::now() < deadline,
                "{url}: the old id lives on"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        for _ in 0..10 {
            let stale = request(&servers[1], "GET", "/session", "", &old);
            assert_eq!(stale.body, "{}", "{url}: the old id came back");
        }
    }
}

/// A session's public handle names it without being its cookie, and ends
/// it from another client ("sign out that device").
#[test]
fn a_session_is_ended_by_its_handle() {
    let server = start(&[("SESSION_STORE", "memory")]);
    let mut device = Client {
        server: &server,
        cookie: String::new(),
    };
    assert_eq!(device.send("GET", "/session/handle", "").body, "null");
    device.send("PUT", "/session/user", r#""ann""#);
    let handle = device.send("GET", "/session/handle", "").body;
    let handle: String = serde_json::from_str(&handle).unwrap();
    assert_eq!(handle.len(), 96);
    assert!(!device.cookie.contains(&handle) && !handle.contains(&device.cookie[8..40]));
    assert_eq!(
        serde_json::from_str::<String>(&device.send("GET", "/session/handle", "").body).unwrap(),
        handle,
        "stable"
    );
    // The handle is no cookie.
    let as_cookie = request(&server, "GET", "/session", "", &format!("session={handle}"));
    assert_eq!(as_cookie.body, "{}");

    let bogus = request(&server, "DELETE", "/sessions/not-a-handle", "", "");
    assert_eq!(bogus.body, r#"{"ended":false}"#);
    let ended = request(&server, "DELETE", &format!("/sessions/{handle}"), "", "");
    assert_eq!(ended.body, r#"{"ended":true}"#);
    let again = request(&server, "DELETE", &format!("/sessions/{handle}"), "", "");
    assert_eq!(again.body, r#"{"ended":false}"#, "already ended");
    assert_eq!(device.send("GET", "/session", "").body, "{}", "signed out");

    // Sessions in cookies have no handle, and cannot be ended by one.
    let cookies = start(&[]);
    let mut client = Client {
        server: &cookies,
        cookie: String::new(),
    };
    client.send("PUT", "/session/user", r#""ann""#);
    assert_eq!(client.send("GET", "/session/handle", "").body, "null");
    assert_eq!(
        request(&cookies, "DELETE", &format!("/sessions/{handle}"), "", "").status,
        404
    );
}

/// `SESSION_TRANSPORT=header`: a client that keeps no cookies holds its
/// session by the `x-session-token` header alone, in every mode.
#[test]
fn a_client_without_cookies_keeps_its_session_in_a_header() {
    for env in [
        vec![("SESSION_TRANSPORT", "header")],
        vec![
            ("SESSION_TRANSPORT", "header"),
            ("SESSION_CODEC", "private"),
        ],
        vec![("SESSION_TRANSPORT", "header"), ("SESSION_STORE", "memory")],
        vec![("SESSION_TRANSPORT", "both"), ("SESSION_STORE", "memory")],
    ] {
        let server = start(&env);
        let token = std::cell::RefCell::new(String::new());
        let send = |method: &str, path: &str, body: &str| {
            // Empty until the server hands one out: "I am a header client".
            let held = token.borrow().clone();
            let headers = [("x-session-token", held.as_str())];
            let reply =
                common::http_request_with_headers(&server.addr, method, path, body, &headers);
            assert_eq!(reply.status, 200, "{env:?} {method} {path}: {}", reply.body);
            assert!(reply.set_cookies.is_empty(), "{env:?}: no cookie");
            if let Some(new) = reply.header("x-session-token") {
                *token.borrow_mut() = new.to_owned();
            }
            reply
        };
        assert_eq!(
            send("PUT", "/session/user", r#""ann""#).body,
            r#"{"user":"ann"}"#
        );
        let reply = send("PUT", "/session/n", "1");
        assert!(
            reply
                .headers
                .iter()
                .any(|(name, value)| name == "vary" && value.contains("x-session-token")),
            "{env:?}"
        );
        assert_eq!(send("GET", "/session", "").body, r#"{"n":1,"user":"ann"}"#);
        send("POST", "/session/clear", "");
        assert!(
            token.borrow().is_empty(),
            "{env:?}: an ended session empties the header"
        );
        assert_eq!(send("GET", "/session", "").body, "{}");
    }
}

/// The stores a kv test runs on: memory and files always; each server
/// store that is built and reachable (in CI, one that is not fails); a
/// MongoDB-wire server of the test's own, kept running while the second
/// half of the answer lives.
fn every_store(dir: &std::path::Path) -> (Vec<String>, Vec<common::ServerProcess>) {
    let mut stores = vec![
        "memory".to_owned(),
        format!("file:{}", dir.join("files").display()),
    ];
    let servers = [
        (
            cfg!(feature = "redis-store"),
            "REDIS_URL",
            "redis://127.0.0.1:6379",
        ),
        (
            cfg!(feature = "postgres-store"),
            "POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        ),
        (
            cfg!(feature = "mysql-store"),
            "MYSQL_URL",
            "mysql://root@127.0.0.1:3306/test",
        ),
        (
            cfg!(feature = "memcached-store"),
            "MEMCACHED_URL",
            "memcache://127.0.0.1:11211",
        ),
    ];
    for (built, var, default) in servers {
        let url = std::env::var(var).unwrap_or_else(|_| default.into());
        if !built {
            continue;
        }
        if reachable(&url) {
            stores.push(url);
        } else {
            common::missing(&format!("{url} is unreachable"));
        }
    }
    if cfg!(feature = "sqlite-store") {
        stores.push(format!("sqlite:{}", dir.join("kv.db").display()));
    }
    if !cfg!(feature = "file-store") {
        stores.remove(1);
    }
    let mut servers = Vec::new();
    if cfg!(feature = "mongodb-store")
        && let Some(mongo) = common::ServerProcess::start_mongo(common::free_port())
    {
        stores.push(format!("{}/kv", mongo.url()));
        servers.push(mongo);
    }
    (stores, servers)
}

/// "Sign out everywhere": three devices of one user and one of another's,
/// listed by owner with their handles, one ended from the list, then all
/// the rest; on every store that can list (Memcached answers 501).
#[test]
fn a_users_sessions_are_listed_and_ended_on_every_store() {
    let dir = tempfile::tempdir().unwrap();
    let (stores, _servers) = every_store(dir.path());
    for store in stores {
        let server = start(&[("SESSION_STORE", &store)]);
        let unique = format!("{}-{}", std::process::id(), free_suffix());
        let (ann, bob) = (format!("ann-{unique}"), format!("bob-{unique}"));
        let device = |owner: &str| {
            let mut client = Client {
                server: &server,
                cookie: String::new(),
            };
            client.send("PUT", "/session/user", &format!("{owner:?}"));
            let reply = client.send("POST", "/session/owner", &format!("{owner:?}"));
            assert_eq!(reply.status, 200, "{store}: {}", reply.body);
            let handle = client.send("GET", "/session/handle", "").body;
            let handle: String = serde_json::from_str(&handle).unwrap();
            (client, handle)
        };
        let listing = request(&server, "GET", &format!("/owners/{ann}/sessions"), "", "");
        if store.starts_with("memcache") {
            assert_eq!(listing.status, 501, "{store}: {}", listing.body);
            continue;
        }
        assert_eq!(listing.body, "[]", "{store}");
        let mut phones: Vec<(Client, String)> = (0..3).map(|_| device(&ann)).collect();
        let (mut bobs, bobs_handle) = device(&bob);
        let list = |owner: &str| -> Vec<String> {
            let reply = request(&server, "GET", &format!("/owners/{owner}/sessions"), "", "");
            assert_eq!(reply.status, 200, "{store}: {}", reply.body);
            let listed: Vec<Value> = serde_json::from_str(&reply.body).unwrap();
            let mut handles: Vec<String> = (listed.iter())
                .map(|s| {
                    assert!(s["created_at"].as_u64().unwrap() <= s["last_used"].as_u64().unwrap());
                    assert!(s["last_used"].as_u64().unwrap() < s["expires_at"].as_u64().unwrap());
                    s["handle"].as_str().unwrap().to_owned()
                })
                .collect();
            handles.sort();
            handles
        };
        let mut expected: Vec<String> = phones.iter().map(|(_, h)| h.clone()).collect();
        expected.sort();
        assert_eq!(list(&ann), expected, "{store}: ann's three sessions");
        assert_eq!(list(&bob), vec![bobs_handle.clone()], "{store}");

        // One ended from the list; not through another owner's path.
        let path = |owner: &str, handle: &str| format!("/owners/{owner}/sessions/{handle}");
        let wrong = request(&server, "DELETE", &path(&bob, &phones[0].1), "", "");
        assert_eq!(wrong.body, r#"{"ended":false}"#, "{store}: not bob's");
        let one = request(&server, "DELETE", &path(&ann, &phones[0].1), "", "");
        assert_eq!(one.body, r#"{"ended":true}"#, "{store}");
        let user = |client: &mut Client| client.send("GET", "/session", "").body;
        assert_eq!(
            user(&mut phones[0].0),
            "{}",
            "{store}: that device is signed out"
        );
        assert!(
            user(&mut phones[1].0).contains("ann"),
            "{store}: the others are not"
        );
        assert_eq!(list(&ann).len(), 2, "{store}");

        // All the rest.
        let all = request(
            &server,
            "DELETE",
            &format!("/owners/{ann}/sessions"),
            "",
            "",
        );
        assert_eq!(all.body, r#"{"ended":2}"#, "{store}");
        for (client, _) in &mut phones {
            assert_eq!(user(client), "{}", "{store}: signed out everywhere");
        }
        assert_eq!(list(&ann), Vec::<String>::new(), "{store}");
        assert!(user(&mut bobs).contains("bob"), "{store}: bob is still in");
        request(
            &server,
            "DELETE",
            &format!("/owners/{bob}/sessions"),
            "",
            "",
        );
    }
}

/// A few random hex digits, so that runs sharing a server never share an
/// owner.
fn free_suffix() -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Twenty appends to one list at once, from one client (a double click,
/// many times over): with the merge operation all answer 200 and all are
/// kept; read-modify-written (`?naive=1`), every one answered 200 is in the
/// list and every other answered 409 and is not. On every store.
#[test]
fn concurrent_appends_are_all_kept_or_answered_409_on_every_store() {
    let dir = tempfile::tempdir().unwrap();
    let (stores, _servers) = every_store(dir.path());
    for store in stores {
        let server = start(&[("SESSION_STORE", &store)]);
        let mut client = Client {
            server: &server,
            cookie: String::new(),
        };
        let first = client.send("POST", "/session/cart/append", "\"first\"");
        assert_eq!(first.status, 200, "{store}: {}", first.body);
        assert_eq!(first.body, r#"["first"]"#);
        let cookie = client.cookie.clone();
        let twenty = |path: &str| {
            std::thread::scope(|scope| {
                let tasks: Vec<_> = (0..20)
                    .map(|i| {
                        let cookie = cookie.clone();
                        let server = &server;
                        scope.spawn(move || {
                            (i, request(server, "POST", path, &i.to_string(), &cookie))
                        })
                    })
                    .collect();
                tasks
                    .into_iter()
                    .map(|t| t.join().unwrap())
                    .collect::<Vec<_>>()
            })
        };
        for (i, reply) in twenty("/session/cart/append") {
            assert_eq!(reply.status, 200, "{store}: append {i}: {}", reply.body);
            let seen: Vec<Value> = serde_json::from_str(&reply.body).unwrap();
            assert_eq!(seen.first(), Some(&Value::from("first")));
            assert_eq!(
                seen.last(),
                Some(&Value::from(i)),
                "{store}: the list as the handler saw it"
            );
        }
        let cart = |client: &mut Client<'_>| -> Vec<Value> {
            let all: Value =
                serde_json::from_str(&client.send("GET", "/session", "").body).unwrap();
            serde_json::from_value(all["cart"].clone()).unwrap()
        };
        let kept = cart(&mut client);
        assert_eq!(kept.len(), 21, "{store}: every append kept: {kept:?}");
        for i in 0..20 {
            assert!(kept.contains(&Value::from(i)), "{store}: {i} lost");
        }
        let replies = twenty("/session/naive/append?naive=1");
        let all: Value = serde_json::from_str(&client.send("GET", "/session", "").body).unwrap();
        let naive: Vec<Value> = serde_json::from_value(all["naive"].clone()).unwrap();
        let mut saved = 0;
        for (i, reply) in replies {
            let kept = naive.contains(&Value::from(i));
            match reply.status {
                200 => {
                    saved += 1;
                    assert!(kept, "{store}: naive append {i} answered 200, then lost");
                }
                409 => assert!(!kept, "{store}: naive append {i} answered 409, yet kept"),
                other => panic!("{store}: naive append {i}: {other} {}", reply.body),
            }
        }
        assert!(saved >= 1, "{store}: one append at least wins");
        assert_eq!(
            cart(&mut client).len(),
            21,
            "{store}: the other list untouched"
        );
    }
}
