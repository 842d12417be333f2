//! The primary measurement: cost per request in-process. Every
//! configuration is driven with `oneshot` by one virtual user carrying its
//! cookie, in short slices interleaved round by round, so that the noise of
//! a shared machine hits every configuration alike; each configuration's
//! added time is paired with bare Axum's in the same round.

use std::time::{Duration, Instant};

use axum::body::Body;
use http::Request;
use http::header::{COOKIE, SET_COOKIE};
use tower::ServiceExt;

use crate::configs::Config;

/// One configuration's figures for one workload, in nanoseconds per request.
#[derive(Debug, Clone)]
pub struct Added {
    pub config: &'static str,
    pub workload: &'static str,
    /// Absolute time per request, median over rounds.
    pub per_request: f64,
    /// Added over bare Axum, paired by round: median, 25th and 75th percentile.
    pub median: f64,
    pub p25: f64,
    pub p75: f64,
}

pub const WORKLOADS: [&str; 3] = ["rmw", "read", "untouched"];

/// A virtual user: its cookie jar, kept as the ready Cookie header, so the
/// harness costs every configuration the same little.
pub struct User {
    cookies: Vec<(String, String)>,
    header: Option<http::HeaderValue>,
}

impl User {
    pub fn new() -> Self {
        Self {
            cookies: Vec::new(),
            header: None,
        }
    }

    pub async fn request(&mut self, router: &axum::Router, path: &str) {
        let mut request = Request::get(path).body(Body::empty()).unwrap();
        if let Some(header) = &self.header {
            request.headers_mut().insert(COOKIE, header.clone());
        }
        let response = router.clone().oneshot(request).await.unwrap();
        assert!(
            response.status().is_success(),
            "{path} answered {}",
            response.status()
        );
        let mut changed = false;
        for line in response.headers().get_all(SET_COOKIE) {
            let pair = line.to_str().unwrap().split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != name);
            if !value.is_empty() {
                self.cookies.push((name.to_owned(), value.to_owned()));
            }
            changed = true;
        }
        if changed {
            let line = self
                .cookies
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            self.header = (!line.is_empty()).then(|| line.parse().unwrap());
        }
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let at = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo as f64)
}

/// Runs `rounds` interleaved rounds of every configuration and workload.
pub async fn run(configs: &[Config], rounds: usize, slice: Duration) -> Vec<Added> {
    let mut results = Vec::new();
    for workload in WORKLOADS {
        let path = format!("/{workload}");
        // Every user starts with a session holding a counter.
        let mut users = Vec::new();
        let mut sizes = Vec::new();
        for config in configs {
            let mut user = User::new();
            user.request(&config.router, "/rmw").await;
            // Calibrate: how many requests fill one slice.
            let started = Instant::now();
            for _ in 0..50 {
                user.request(&config.router, &path).await;
            }
            let each = started.elapsed().as_secs_f64() / 50.0;
            sizes.push(((slice.as_secs_f64() / each) as usize).clamp(20, 20_000));
            users.push(user);
        }
        let mut times = vec![Vec::with_capacity(rounds); configs.len()];
        for round in 0..rounds {
            // Rotate the order so no configuration always follows another.
            for k in 0..configs.len() {
                let i = (k + round) % configs.len();
                let started = Instant::now();
                for _ in 0..sizes[i] {
                    users[i].request(&configs[i].router, &path).await;
                }
                times[i].push(started.elapsed().as_nanos() as f64 / sizes[i] as f64);
            }
        }
        let bare = times[0].clone();
        for (i, config) in configs.iter().enumerate() {
            let mut added: Vec<f64> = times[i].iter().zip(&bare).map(|(t, b)| t - b).collect();
            added.sort_by(f64::total_cmp);
            let mut own = times[i].clone();
            own.sort_by(f64::total_cmp);
            results.push(Added {
                config: config.name,
                workload,
                per_request: quantile(&own, 0.5),
                median: quantile(&added, 0.5),
                p25: quantile(&added, 0.25),
                p75: quantile(&added, 0.75),
            });
        }
    }
    results
}
