//! The secondary measurement: an HTTP load run over loopback. Each
//! configuration is served by a real Axum server; a fixed number of
//! virtual users, each on its own keep-alive connection with its own
//! cookie, send read-modify-write requests back to back for a fixed time.

use std::time::{Duration, Instant};

use http::header::{COOKIE, SET_COOKIE};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::configs::Config;

#[derive(Debug, Clone)]
pub struct Load {
    pub config: &'static str,
    pub requests_per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: usize,
}

/// A user sending `path` back to back (after one `/rmw` that starts its
/// session).
async fn user(addr: std::net::SocketAddr, until: Instant, path: &'static str) -> (Vec<u32>, usize) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut cookie: Option<String> = None;
    let mut latencies = Vec::new();
    let mut errors = 0;
    while Instant::now() < until {
        let uri = if cookie.is_some() { path } else { "/rmw" };
        let mut request = http::Request::get(uri).header("host", "bench");
        if let Some(cookie) = &cookie {
            request = request.header(COOKIE, cookie.as_str());
        }
        let request = request.body(Empty::<Bytes>::new()).unwrap();
        let started = Instant::now();
        match sender.send_request(request).await {
            Ok(response) => {
                if !response.status().is_success() {
                    errors += 1;
                }
                if let Some(line) = response.headers().get_all(SET_COOKIE).iter().next_back() {
                    cookie = Some(line.to_str().unwrap().split(';').next().unwrap().to_owned());
                }
                let _ = response.into_body().collect().await;
                latencies.push(started.elapsed().as_micros() as u32);
            }
            Err(_) => {
                errors += 1;
                break;
            }
        }
    }
    (latencies, errors)
}

/// Serves `config` and loads it with `users` virtual users for `duration`.
pub async fn run(config: &Config, users: usize, duration: Duration, path: &'static str) -> Load {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = config.router.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    // Warm up, then measure.
    let warm = Instant::now() + Duration::from_millis(300);
    let _ = futures_join((0..users).map(|_| user(addr, warm, path))).await;
    let started = Instant::now();
    let until = started + duration;
    let results = futures_join((0..users).map(|_| user(addr, until, path))).await;
    let elapsed = started.elapsed().as_secs_f64();
    server.abort();
    let mut all: Vec<u32> = results
        .iter()
        .flat_map(|(l, _)| l.iter().copied())
        .collect();
    let errors = results.iter().map(|(_, e)| e).sum();
    all.sort_unstable();
    let pick = |q: f64| f64::from(all[((all.len() - 1) as f64 * q) as usize]);
    Load {
        config: config.name,
        requests_per_second: all.len() as f64 / elapsed,
        p50_us: pick(0.5),
        p99_us: pick(0.99),
        errors,
    }
}

async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}
