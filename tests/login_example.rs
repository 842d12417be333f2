//! Black-box test of `examples/login.rs` over HTTP: fixation defence at
//! login, flash messages, logout.
#![cfg(all(feature = "axum", feature = "memory-store"))]

mod common;

use common::{http_request, start_example};

/// A browser's cookie for the session, updated from each reply.
fn update(cookie: &mut String, reply: &common::Reply) {
    for line in &reply.set_cookies {
        let pair = line.split(';').next().unwrap();
        *cookie = if line.contains("Max-Age=0") {
            String::new()
        } else {
            pair.to_owned()
        };
    }
}

#[test]
fn login_cycles_the_id_flashes_and_logout_ends_the_session() {
    let server = start_example("login", &[]);
    let addr = &server.addr;
    let mut cookie = String::new();

    let page = http_request(addr, "GET", "/", "", &cookie);
    assert!(page.body.contains("Not signed in"));
    assert!(page.set_cookies.is_empty(), "a visit alone stores nothing");

    // A wrong password: a flash, which creates a (pre-login) session.
    let reply = http_request(addr, "POST", "/login", "user=ann&password=nope", &cookie);
    assert_eq!(reply.status, 303);
    update(&mut cookie, &reply);
    let before_login = cookie.clone();
    assert!(!before_login.is_empty());
    let page = http_request(addr, "GET", "/", "", &cookie);
    assert!(
        page.body.contains("Wrong name or password."),
        "{}",
        page.body
    );
    let page = http_request(addr, "GET", "/", "", &cookie);
    assert!(!page.body.contains("Wrong name"), "a flash shows once");

    // The right password: a new id, the old one is dead.
    let reply = http_request(addr, "POST", "/login", "user=ann&password=letmein", &cookie);
    update(&mut cookie, &reply);
    assert_ne!(cookie, before_login, "the id changed at login");
    let page = http_request(addr, "GET", "/", "", &cookie);
    assert!(
        page.body.contains("Welcome, ann!") && page.body.contains("Signed in as ann"),
        "{}",
        page.body
    );
    let planted = http_request(addr, "GET", "/", "", &before_login);
    assert!(
        planted.body.contains("Not signed in"),
        "the pre-login id does not log in"
    );
    let page = http_request(addr, "GET", "/", "", &cookie);
    assert!(page.body.contains("2 visits"), "{}", page.body);

    // Logout: the record is gone; the flash lives in a fresh session.
    let logged_in = cookie.clone();
    let reply = http_request(addr, "POST", "/logout", "", &cookie);
    update(&mut cookie, &reply);
    assert_ne!(cookie, logged_in);
    let page = http_request(addr, "GET", "/", "", &cookie);
    assert!(
        page.body.contains("Signed out.") && page.body.contains("Not signed in"),
        "{}",
        page.body
    );
    let replay = http_request(addr, "GET", "/", "", &logged_in);
    assert!(
        replay.body.contains("Not signed in"),
        "a logged-out id cannot be replayed"
    );
}

/// The sessions page over plain HTTP: two sign-ins of one user list each
/// other, one ends the other with its button's form, and the ended one is
/// signed out on its next request. (tests/browser.rs drives the same page
/// in Chromium.)
#[test]
fn one_device_signs_another_out_from_the_sessions_page() {
    let server = start_example("login", &[]);
    let addr = &server.addr;
    let sign_in = || {
        let mut cookie = String::new();
        let reply = http_request(addr, "POST", "/login", "user=ann&password=letmein", &cookie);
        update(&mut cookie, &reply);
        cookie
    };
    let (phone, laptop) = (sign_in(), sign_in());
    let page = http_request(addr, "GET", "/", "", &laptop).body;
    assert_eq!(page.matches("<li class=\"session").count(), 2, "{page}");
    assert_eq!(page.matches("this device").count(), 1, "{page}");
    // The other row's form names the phone's session by its handle.
    let action = page
        .split("action=\"")
        .map(|rest| rest.split('"').next().unwrap())
        .find(|action| action.starts_with("/sessions/") && action.ends_with("/end"))
        .expect("a sign-out button for the other device")
        .to_owned();
    let mut laptop = laptop;
    let reply = http_request(addr, "POST", &action, "", &laptop);
    assert_eq!(reply.status, 303);
    update(&mut laptop, &reply);
    let page = http_request(addr, "GET", "/", "", &phone).body;
    assert!(page.contains("Not signed in"), "{page}");
    let page = http_request(addr, "GET", "/", "", &laptop).body;
    assert!(
        page.contains("Signed in as ann") && page.contains("That session is signed out."),
        "{page}"
    );
    assert_eq!(page.matches("<li class=\"session").count(), 1, "{page}");
    // The ended handle no longer ends anything, and bob cannot end ann's.
    let bob = {
        let mut cookie = String::new();
        let reply = http_request(addr, "POST", "/login", "user=bob&password=letmein", &cookie);
        update(&mut cookie, &reply);
        cookie
    };
    let page = http_request(addr, "GET", "/", "", &laptop).body;
    assert!(!page.contains("Sign out everywhere else"), "{page}");
    let laptop_handle = page
        .split("data-handle=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    http_request(
        addr,
        "POST",
        &format!("/sessions/{laptop_handle}/end"),
        "",
        &bob,
    );
    let page = http_request(addr, "GET", "/", "", &laptop).body;
    assert!(
        page.contains("Signed in as ann"),
        "bob cannot end ann's session: {page}"
    );
}

/// The current device's own handle posted to its row's sign-out route (the
/// page shows no button for it, but the route takes any handle) signs this
/// device out like the sign-out button does, rather than failing the
/// request: the flash it wrote went to a session the request had just
/// ended, which the layer refuses (409).
#[test]
fn ending_this_devices_own_handle_signs_it_out() {
    let server = start_example("login", &[]);
    let addr = &server.addr;
    let mut laptop = String::new();
    let reply = http_request(addr, "POST", "/login", "user=ann&password=letmein", &laptop);
    update(&mut laptop, &reply);
    let page = http_request(addr, "GET", "/", "", &laptop).body;
    let own = page
        .split("data-handle=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let reply = http_request(addr, "POST", &format!("/sessions/{own}/end"), "", &laptop);
    assert_eq!(reply.status, 303, "{}", reply.body);
    update(&mut laptop, &reply);
    let page = http_request(addr, "GET", "/", "", &laptop).body;
    assert!(page.contains("Not signed in"), "{page}");
}

/// A double click on "add to cart" (two requests at once with one cookie,
/// each having read the session): both answer the redirect, and the cart
/// keeps both items, as it does after twenty clicks at once.
#[test]
fn a_double_click_on_add_to_cart_keeps_both_items() {
    let server = start_example("login", &[]);
    let addr = &server.addr;
    let mut cookie = String::new();
    let reply = http_request(addr, "POST", "/login", "user=ann&password=letmein", &cookie);
    assert_eq!(reply.status, 303);
    update(&mut cookie, &reply);
    http_request(addr, "GET", "/", "", &cookie);
    for clicks in [2, 20] {
        let statuses: Vec<u16> = std::thread::scope(|scope| {
            let tasks: Vec<_> = (0..clicks)
                .map(|_| scope.spawn(|| http_request(addr, "POST", "/cart", "item=book", &cookie)))
                .collect();
            tasks
                .into_iter()
                .map(|t| t.join().unwrap().status)
                .collect()
        });
        assert!(statuses.iter().all(|&s| s == 303), "{statuses:?}");
    }
    let page = http_request(addr, "GET", "/", "", &cookie);
    assert!(
        page.body.contains("<p id=\"cart-size\">22 items</p>"),
        "{}",
        page.body
    );
}
