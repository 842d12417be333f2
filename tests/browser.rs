//! A real browser (the system's headless Chromium, driven by
//! playwright-core) stores a ~20 KB session spread over chunk cookies and
//! gets it back over several navigations, for each client-side codec.
//! scripts/test.sh installs Chromium and playwright-core.
#![cfg(feature = "axum")]

mod common;

use std::path::Path;
use std::process::Command;

use common::{missing, start_example};

fn browser_ready() -> bool {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return !missing("Chromium is not installed");
    }
    if Command::new("node").arg("--version").output().is_err() {
        return !missing("Node.js is not installed");
    }
    if !Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/browser/node_modules/playwright-core"
    ))
    .exists()
    {
        return !missing("playwright-core is not installed in tests/browser");
    }
    true
}

fn drive(codec: &str) {
    let server = start_example("notes", &[("SESSION_CODEC", codec)]);
    let output = Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/browser/chunks.mjs"
        ))
        .arg(format!("http://{}", server.addr))
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{stdout}");
    assert!(
        output.status.success(),
        "{codec}: browser run failed\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("the whole note came back"), "{stdout}");
}

#[test]
fn chromium_keeps_a_chunked_signed_session() {
    if browser_ready() {
        drive("signed");
    }
}

#[test]
fn chromium_keeps_a_chunked_private_session() {
    if browser_ready() {
        drive("private");
    }
}
