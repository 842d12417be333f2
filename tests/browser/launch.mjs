// What every browser script shares: the system's headless Chromium,
// started as the tests need it, and a step check that prints its line.

import { chromium } from "playwright-core";

// One line per step passed; the first that fails throws.
export function check(condition, message) {
  if (!condition) throw new Error(message);
  console.log(`ok: ${message}`);
}

// The base URL from the command line, or the usage and exit 2.
export function baseUrl(script) {
  const base = process.argv[2];
  if (!base) {
    console.error(`usage: node ${script} BASE_URL`);
    process.exit(2);
  }
  return base;
}

// Chromium ($CHROMIUM or Debian's), headless, with nothing running in the
// background that could reach the network.
export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}
