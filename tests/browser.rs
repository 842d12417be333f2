//! A real browser (the system's headless Chromium, driven by
//! playwright-core) stores a ~20 KB session spread over chunk cookies and
//! gets it back over several navigations, for each client-side codec; and
//! signs in as two devices of one user, one ending the other from its
//! "your sessions" page.
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

/// Runs `script` (in tests/browser) against `server`; its output.
fn run(script: &str, server: &common::ExampleServer, what: &str) -> String {
    let output = Command::new("node")
        .arg(format!(
            "{}/tests/browser/{script}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg(format!("http://{}", server.addr))
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{stdout}");
    assert!(
        output.status.success(),
        "{what}: browser run failed\n{stdout}\n{stderr}"
    );
    stdout
}

fn drive(codec: &str) {
    let server = start_example("notes", &[("SESSION_CODEC", codec)]);
    let stdout = run("chunks.mjs", &server, codec);
    assert!(stdout.contains("the whole note came back"), "{stdout}");
}

/// Two devices of one user in two browser contexts: the laptop ends the
/// phone's session from its sessions page, and the phone is signed out on
/// its next request; "sign out everywhere else" ends a third.
#[test]
#[cfg(feature = "memory-store")]
fn chromium_signs_out_another_device_from_the_sessions_page() {
    if browser_ready() {
        let server = start_example("login", &[("SESSION_SECURE", "false")]);
        let stdout = run("devices.mjs", &server, "devices");
        assert!(
            stdout.contains("the phone is signed out on its next request"),
            "{stdout}"
        );
    }
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
