// Drives examples/login.rs in the system's headless Chromium as two
// "devices" (two browser contexts, each with its own cookies) of one user:
// both sign in, each sees both sessions on its "your sessions" list, one
// signs the other out from that list, and the other is signed out on its
// next request; then "sign out everywhere else" does the same for a third.
//
// Usage: node devices.mjs http://127.0.0.1:PORT
// Prints one line per step; exits non-zero on the first failure.

import { baseUrl, check, launch } from "./launch.mjs";

const base = baseUrl("devices.mjs");

const browser = await launch();

async function device(name) {
  const context = await browser.newContext({ userAgent: `${name} HeadlessChrome/1` });
  const page = await context.newPage();
  await page.goto(base + "/");
  await page.fill("#user", "ann");
  await page.fill("#password", "letmein");
  await Promise.all([page.waitForURL(base + "/"), page.click("#login")]);
  check((await page.textContent("#who")) === "Signed in as ann", `${name} signed in`);
  return page;
}

const sessionsShown = async (page) => page.locator("#sessions li.session").count();
const who = async (page) => {
  await page.goto(base + "/");
  return page.textContent("#who");
};

try {
  const phone = await device("phone");
  const laptop = await device("laptop");
  await laptop.goto(base + "/");
  check((await sessionsShown(laptop)) === 2, "the laptop lists both sessions");
  check((await laptop.locator("#sessions li.current").count()) === 1, "one is marked as this device");
  check(
    (await laptop.textContent("#sessions li.current")).includes("this device"),
    "the current one says so",
  );
  await phone.goto(base + "/");
  check((await sessionsShown(phone)) === 2, "the phone lists both sessions too");

  // From the laptop, sign the phone out.
  const other = laptop.locator("#sessions li.session:not(.current)");
  await Promise.all([laptop.waitForURL(base + "/"), other.locator("button.end").click()]);
  check((await sessionsShown(laptop)) === 1, "the laptop's list is down to itself");
  check((await laptop.textContent("body")).includes("That session is signed out."), "the laptop is told");
  check((await who(phone)) === "Not signed in", "the phone is signed out on its next request");
  check((await who(laptop)) === "Signed in as ann", "the laptop is still signed in");

  // A third device, then "sign out everywhere else" from the laptop.
  const tablet = await device("tablet");
  await laptop.goto(base + "/");
  check((await sessionsShown(laptop)) === 2, "the tablet shows up on the laptop's list");
  await Promise.all([laptop.waitForURL(base + "/"), laptop.click("#end-others")]);
  check((await laptop.textContent("body")).includes("Signed out 1 other session(s)."), "one other ended");
  check((await who(tablet)) === "Not signed in", "the tablet is signed out");
  check((await who(laptop)) === "Signed in as ann", "the laptop stays signed in");
  check((await sessionsShown(laptop)) === 1, "only the laptop is left");
} finally {
  await browser.close();
}
