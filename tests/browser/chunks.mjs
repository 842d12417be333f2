// Drives examples/notes.rs in the system's headless Chromium: stores a
// ~20 KB note, reads it back over several navigations, shrinks it and
// clears it, checking the browser's cookie store at each step.
//
// Usage: node chunks.mjs http://127.0.0.1:PORT
// Prints one line per step; exits non-zero on the first failure.

import { baseUrl, check, launch } from "./launch.mjs";

const base = baseUrl("chunks.mjs");

// About 20 KB with non-ASCII characters (no newlines: forms send them as
// CRLF, pages show LF), so the form encoding, JSON
// escaping and chunk boundaries all meet multi-byte text.
function note(length) {
  const words = ["session", "chunk", "cookie", "zoë", "naïve", "日本", "ok"];
  let text = "";
  for (let i = 0; text.length < length; i++) text += words[i % words.length] + " ";
  return text.slice(0, length);
}

const browser = await launch();
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  const family = async () =>
    (await context.cookies(base))
      .map((c) => c.name)
      .filter((n) => n === "session" || /^session\.\d+$/.test(n));

  await page.goto(base + "/");
  check((await page.textContent("#size")) === "0 characters", "a new visitor has an empty note");

  const big = note(20_000);
  await page.fill("#note", big);
  await Promise.all([page.waitForURL(base + "/"), page.click("#save")]);
  const chunks = await family();
  check(chunks.length >= 5, `the browser stored ${chunks.length} session cookies`);
  check((await page.textContent("#size")) === `${big.length} characters`, "the note's size is shown after saving");

  for (let round = 1; round <= 3; round++) {
    await page.goto(base + "/note");
    const text = await page.textContent("#text");
    check(text === big, `navigation ${round}: the whole note came back`);
    await page.goto(base + "/");
    check((await page.textContent("#size")) === `${big.length} characters`, `navigation ${round}: size still right`);
  }

  const small = note(500);
  await page.fill("#note", small);
  await Promise.all([page.waitForURL(base + "/"), page.click("#save")]);
  check((await family()).length === 1, "shrinking to one cookie expired every chunk");
  await page.goto(base + "/note");
  check((await page.textContent("#text")) === small, "the small note came back");

  await page.goto(base + "/");
  await Promise.all([page.waitForURL(base + "/"), page.click("#clear")]);
  check((await family()).length === 0, "clearing deleted every session cookie");
  check((await page.textContent("#size")) === "0 characters", "the note is gone");
} finally {
  await browser.close();
}
