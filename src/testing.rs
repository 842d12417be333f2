//! The store conformance suite: every behaviour the layer relies on from a
//! [`SessionStore`], checked against a real instance. Run it on your own
//! store (feature `testing`):
//!
//! ```no_run
//! # async fn demo() {
//! use std::sync::Arc;
//! use session_layer::store::MemoryStore;
//! session_layer::testing::check_store(Arc::new(MemoryStore::new())).await;
//! # }
//! ```
//!
//! Every check uses fresh random ids, so a store that already holds data
//! (a shared Redis, a database) can be checked in place. A check that fails
//! panics with what it expected.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::data::SessionData;
use crate::error::ErrorKind;
use crate::store::{Changes, Merge, OWNER_KEY, OWNER_META_KEY, Record, SessionId, SessionStore};

/// Runs every check against `store`. Takes a few seconds: one check waits
/// for a record to expire, so stores with native TTLs are checked too, and
/// one for a lease to run out (on stores with leases).
///
/// # Panics
/// On the first check the store fails.
pub async fn check_store<S: SessionStore + ?Sized>(store: Arc<S>) {
    round_trip(&*store).await;
    missing_records(&*store).await;
    create_never_overwrites(&*store).await;
    apply_is_per_key(&*store).await;
    many_keys_in_one_apply(&*store).await;
    delete_removes(&*store).await;
    expired_records_are_absent(&*store).await;
    cycle_moves_the_data(&*store).await;
    unusual_but_valid_ids(&*store).await;
    large_and_unicode_values(&*store).await;
    any_key_is_one_key(&*store).await;
    concurrent_writes_to_distinct_keys_all_survive(store.clone()).await;
    expectations_guard_what_was_read(&*store).await;
    merges_apply_to_what_the_store_holds(&*store).await;
    many_merges_in_one_apply(&*store).await;
    concurrent_read_modify_writes_never_lose_silently(store.clone()).await;
    concurrent_merges_all_survive(store.clone()).await;
    leases_exclude_each_other(&*store).await;
    writes_racing_a_delete_never_resurrect(store.clone()).await;
    the_layers_clock_rules(&*store).await;
    if owners_index_their_sessions(store.clone()).await {
        owners_index_many_sessions_at_once(store.clone()).await;
        owners_are_matched_exactly(&*store).await;
    }
    records_expire_in_time(&*store).await;
}

fn now() -> u64 {
    crate::store::now()
}

fn data(value: Value) -> SessionData {
    value.as_object().expect("an object").clone()
}

fn record(value: Value) -> Record {
    Record::new(data(value), false, now(), now() + 3600)
}

async fn created<S: SessionStore + ?Sized>(store: &S, record: &Record) -> SessionId {
    let id = SessionId::generate();
    assert!(
        store.create(&id, record).await.expect("create"),
        "create of a fresh id must succeed"
    );
    id
}

/// How far a record's times may read back from what was written, in
/// seconds. A store that keeps the expiry only as the server's TTL
/// (Flask-Session's records on Memcached) reads back the seconds left by
/// the server's clock, which Memcached advances on a timer that lags
/// behind on a busy machine; one whose format keeps no creation time
/// (Flask-Session's) gives the load's. The expiry itself is checked
/// exactly where it matters: `the_layers_clock_rules`,
/// `records_expire_in_time`.
const TIME_SLACK: u64 = 5;

/// `loaded` is `expected`, its times to within [`TIME_SLACK`].
#[track_caller]
fn assert_same(loaded: Option<Record>, expected: Option<Record>, what: &str) {
    let (Some(loaded), Some(expected)) = (&loaded, &expected) else {
        assert_eq!(loaded, expected, "{what}");
        return;
    };
    let close = |a: u64, b: u64| a.abs_diff(b) <= TIME_SLACK;
    assert!(
        loaded.data == expected.data
            && loaded.permanent == expected.permanent
            && close(loaded.created_at, expected.created_at)
            && close(loaded.expires_at, expected.expires_at),
        "{what}: loaded {loaded:?}, expected {expected:?}"
    );
}

async fn load<S: SessionStore + ?Sized>(store: &S, id: &SessionId) -> Option<Record> {
    store.load(id, now()).await.expect("load")
}

/// A created record loads back whole.
pub async fn round_trip<S: SessionStore + ?Sized>(store: &S) {
    let mut original = record(json!({"user": 42, "roles": ["a", "b"], "nested": {"x": null}}));
    original.permanent = true;
    let id = created(store, &original).await;
    assert_same(load(store, &id).await, Some(original), "round trip");
}

/// Unknown ids: nothing to load, nothing to apply to, deleting is fine.
pub async fn missing_records<S: SessionStore + ?Sized>(store: &S) {
    let id = SessionId::generate();
    assert_eq!(load(store, &id).await, None, "unknown id loads nothing");
    let applied = store
        .apply(&id, &Changes::expiry(now(), now() + 60))
        .await
        .expect("apply");
    assert!(!applied, "apply to an unknown id must report false");
    assert_eq!(
        load(store, &id).await,
        None,
        "apply must not create a record"
    );
    store
        .delete(&id)
        .await
        .expect("deleting an unknown id is not an error");
}

/// `create` on a taken id changes nothing and reports false.
pub async fn create_never_overwrites<S: SessionStore + ?Sized>(store: &S) {
    let first = record(json!({"owner": "first"}));
    let id = created(store, &first).await;
    let taken = store
        .create(&id, &record(json!({"owner": "second"})))
        .await
        .expect("create");
    assert!(!taken, "create on a taken id must report false");
    assert_same(
        load(store, &id).await,
        Some(first),
        "create must not overwrite",
    );
}

/// `apply` sets, removes, clears and moves the flag and expiry.
pub async fn apply_is_per_key<S: SessionStore + ?Sized>(store: &S) {
    let id = created(store, &record(json!({"a": 1, "b": 2, "c": 3}))).await;
    let expires = now() + 7200;
    let changes = Changes {
        removed: vec!["b".into()],
        set: vec![("c".into(), json!(30)), ("d".into(), json!([4]))],
        permanent: Some(true),
        ..Changes::expiry(now(), expires)
    };
    assert!(store.apply(&id, &changes).await.expect("apply"));
    let loaded = load(store, &id).await.expect("record");
    assert_eq!(
        Value::Object(loaded.data),
        json!({"a": 1, "c": 30, "d": [4]})
    );
    assert!(loaded.permanent, "permanent flag applied");
    // To the second, as `assert_same` says.
    assert!(
        loaded.expires_at.abs_diff(expires) <= TIME_SLACK,
        "expiry applied"
    );

    let clear = Changes {
        cleared: true,
        set: vec![("fresh".into(), json!(true))],
        ..Changes::expiry(now(), expires)
    };
    assert!(store.apply(&id, &clear).await.expect("apply"));
    let loaded = load(store, &id).await.expect("record");
    assert_eq!(
        Value::Object(loaded.data),
        json!({"fresh": true}),
        "cleared, then set"
    );
    assert!(loaded.permanent, "a change without a flag keeps it");

    // The flag alone, no value changed: a store that takes such changes
    // for an expiry refresh must still move the flag.
    let flag = Changes {
        permanent: Some(false),
        ..Changes::expiry(now(), expires)
    };
    assert!(store.apply(&id, &flag).await.expect("apply"));
    let loaded = load(store, &id).await.expect("record");
    assert!(!loaded.permanent, "a change of the flag alone applied");
    assert_eq!(Value::Object(loaded.data), json!({"fresh": true}));
}

/// One request that sets and removes hundreds of keys at once (stores that
/// batch fields per command must split them).
pub async fn many_keys_in_one_apply<S: SessionStore + ?Sized>(store: &S) {
    let old: serde_json::Map<String, Value> =
        (0..450).map(|i| (format!("old{i}"), json!(i))).collect();
    let id = created(store, &record(Value::Object(old))).await;
    let expires = now() + 7200;
    let changes = Changes {
        removed: (0..400).map(|i| format!("old{i}")).collect(),
        set: (0..350).map(|i| (format!("new{i}"), json!(i))).collect(),
        permanent: Some(false),
        ..Changes::expiry(now(), expires)
    };
    assert!(store.apply(&id, &changes).await.expect("apply"));
    let loaded = load(store, &id).await.expect("record");
    assert_eq!(loaded.data.len(), 50 + 350, "400 of 450 removed, 350 set");
    assert!(loaded.data.contains_key("old449") && !loaded.data.contains_key("old399"));
    assert_eq!(loaded.data["new349"], json!(349));
    store.delete(&id).await.expect("delete");
}

/// `delete` removes the record for good.
pub async fn delete_removes<S: SessionStore + ?Sized>(store: &S) {
    let id = created(store, &record(json!({"x": 1}))).await;
    store.delete(&id).await.expect("delete");
    assert_eq!(load(store, &id).await, None, "deleted record must not load");
    let applied = store
        .apply(&id, &Changes::expiry(now(), now() + 60))
        .await
        .expect("apply");
    assert!(!applied, "apply after delete must report false");
    assert_eq!(
        load(store, &id).await,
        None,
        "a flushed id is not brought back"
    );
}

/// A record past its expiry is absent, and can be created anew.
pub async fn expired_records_are_absent<S: SessionStore + ?Sized>(store: &S) {
    let live = created(store, &record(json!({"live": true}))).await;
    let id = SessionId::generate();
    let expired = Record::new(data(json!({"old": true})), false, now() - 100, now() - 1);
    // A store with native TTLs may refuse to keep it at all; either way
    // it must not load.
    let _ = store.create(&id, &expired).await.expect("create");
    assert_eq!(load(store, &id).await, None, "expired record must not load");
    let applied = store
        .apply(&id, &Changes::expiry(now(), now() + 60))
        .await
        .expect("apply");
    assert!(!applied, "apply must not revive an expired record");
    store.delete_expired(now()).await.expect("delete_expired");
    assert!(
        load(store, &live).await.is_some(),
        "delete_expired keeps live records"
    );
    assert_eq!(load(store, &id).await, None);
    let again = record(json!({"new": true}));
    assert!(
        store.create(&id, &again).await.expect("create"),
        "an expired id is free again"
    );
    assert_same(load(store, &id).await, Some(again), "the new record");
}

/// What the layer does for `cycle_id`: create under a new id, take the old.
pub async fn cycle_moves_the_data<S: SessionStore + ?Sized>(store: &S) {
    let original = record(json!({"user": "ann"}));
    let old = created(store, &original).await;
    let new = created(store, &original).await;
    assert_same(
        store.take(&old, now()).await.expect("take"),
        Some(original.clone()),
        "take returns the record",
    );
    assert_eq!(load(store, &old).await, None, "old id gone after a cycle");
    assert_eq!(
        store.take(&old, now()).await.expect("take"),
        None,
        "nothing to take twice"
    );
    assert_same(
        load(store, &new).await,
        Some(original),
        "data under the new id",
    );
}

/// Ids made only of `-` and `_` (valid, if unlikely) are stored like any.
pub async fn unusual_but_valid_ids<S: SessionStore + ?Sized>(store: &S) {
    for text in [
        format!("{}A", "-".repeat(42)),
        format!("{}A", "_".repeat(42)),
    ] {
        let id = SessionId::parse(&text).expect("a valid id");
        store.delete(&id).await.expect("delete");
        let value = record(json!({"id": text}));
        assert!(store.create(&id, &value).await.expect("create"));
        assert_same(load(store, &id).await, Some(value), "an unusual id");
        store.delete(&id).await.expect("delete");
    }
    for hostile in ["../../etc/passwd", "a/b", "", "*", "session:*", "{tag}"] {
        assert!(
            SessionId::parse(hostile).is_none(),
            "{hostile:?} must never become an id"
        );
    }
}

/// 100 KB of data and non-ASCII keys and values survive.
pub async fn large_and_unicode_values<S: SessionStore + ?Sized>(store: &S) {
    let big = "x".repeat(100_000);
    let value = record(json!({"big": big, "zoë 日本": "😀 \u{0} \"quoted\" \\", "n": 1.5}));
    let id = created(store, &value).await;
    assert_same(
        load(store, &id).await,
        Some(value),
        "large and unicode values",
    );
}

/// Keys are opaque: quotes, backslashes, dots, `$`, `*`, spaces, U+0000 and
/// the empty key are each one key, set and removed on their own.
pub async fn any_key_is_one_key<S: SessionStore + ?Sized>(store: &S) {
    let keys = [
        "",
        "a.b",
        "$",
        "*",
        "a\"b",
        "a\\b",
        "[0]",
        "d:x",
        "m:e",
        "sp ace",
        "nul\u{0}key",
        "\u{10FFFF}0",
    ];
    let id = created(store, &record(json!({"keep": 1}))).await;
    let expires = now() + 3600;
    let set = Changes {
        set: keys.iter().map(|k| ((*k).to_owned(), json!(k))).collect(),
        ..Changes::expiry(now(), expires)
    };
    assert!(store.apply(&id, &set).await.expect("apply"));
    let loaded = load(store, &id).await.expect("record");
    for key in keys {
        assert_eq!(loaded.data.get(key), Some(&json!(key)), "key {key:?}");
    }
    let removed = Changes {
        removed: keys.iter().map(|k| (*k).to_owned()).collect(),
        ..Changes::expiry(now(), expires)
    };
    assert!(store.apply(&id, &removed).await.expect("apply"));
    assert_eq!(
        load(store, &id).await.expect("record").data,
        data(json!({"keep": 1})),
        "every odd key removed, and nothing else"
    );
}

/// 100 concurrent applies to one record, each setting its own key: none is
/// lost (per-key atomicity).
pub async fn concurrent_writes_to_distinct_keys_all_survive<S: SessionStore + ?Sized>(
    store: Arc<S>,
) {
    let id = created(&*store, &record(json!({}))).await;
    let expires = now() + 3600;
    let writes = (0..100).map(|i| {
        let (store, id) = (store.clone(), id.clone());
        async move {
            let changes = Changes {
                set: vec![(format!("key{i}"), json!(i))],
                ..Changes::expiry(now(), expires)
            };
            store.apply(&id, &changes).await.expect("apply")
        }
    });
    let results = join_all(writes).await;
    assert!(
        results.iter().all(|&applied| applied),
        "every apply found the record"
    );
    let loaded = load(&*store, &id).await.expect("record");
    let missing: Vec<_> = (0..100)
        .filter(|i| !loaded.data.contains_key(&format!("key{i}")))
        .collect();
    assert!(
        missing.is_empty(),
        "writes lost under concurrency: keys {missing:?}"
    );
}

fn is_conflict(result: &Result<bool, crate::Error>) -> bool {
    matches!(result, Err(error) if error.kind() == ErrorKind::Conflict)
}

/// A write that carries what the request read ([`Changes::expected`])
/// applies only while the store still holds it; otherwise the store answers
/// [`ErrorKind::Conflict`] and applies none of the changes. A blind write
/// applies as ever.
pub async fn expectations_guard_what_was_read<S: SessionStore + ?Sized>(store: &S) {
    // Values whose text a store might write differently (key order,
    // escapes, floats, large integers): a value read back whole must
    // compare equal to what the store holds.
    let odd = json!({"z": [1.5, -0.25, 1e300], "a": {"ü": "\u{0}\"x\"", "": null},
        "big": 18446744073709551615_u64, "neg": i64::MIN});
    let id = created(store, &record(json!({"n": 1, "other": "x", "odd": odd}))).await;
    let expires = now() + 3600;
    let write = |expected: Vec<(&str, Option<Value>)>, set: Vec<(&str, Value)>| Changes {
        expected: (expected.into_iter())
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        set: set.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        ..Changes::expiry(now(), expires)
    };
    let applied = store
        .apply(
            &id,
            &write(vec![("n", Some(json!(1)))], vec![("n", json!(2))]),
        )
        .await;
    assert!(
        matches!(applied, Ok(true)),
        "an expectation that holds: {applied:?}"
    );
    let stale = Changes {
        removed: vec!["other".into()],
        permanent: Some(true),
        ..write(
            vec![("n", Some(json!(1)))],
            vec![("n", json!(3)), ("z", json!(1))],
        )
    };
    let refused = store.apply(&id, &stale).await;
    assert!(
        is_conflict(&refused),
        "a stale expectation must conflict: {refused:?}"
    );
    let loaded = load(store, &id).await.expect("record");
    assert_eq!(
        loaded.data["n"],
        json!(2),
        "the conflicting write is not applied"
    );
    assert_eq!(
        loaded.data.get("other"),
        Some(&json!("x")),
        "nor its removal"
    );
    assert!(!loaded.data.contains_key("z"), "nor any of its other keys");
    assert!(!loaded.permanent, "nor its flag");
    // Absent when read: applies once, then the key exists.
    let fresh = write(vec![("new", None)], vec![("new", json!(1))]);
    assert!(matches!(store.apply(&id, &fresh).await, Ok(true)));
    assert!(
        is_conflict(&store.apply(&id, &fresh).await),
        "no longer absent"
    );
    // A removal of a key read: applies while it holds what was read.
    let remove = Changes {
        removed: vec!["other".into()],
        ..write(vec![("other", Some(json!("x")))], vec![])
    };
    assert!(matches!(store.apply(&id, &remove).await, Ok(true)));
    assert!(
        is_conflict(&store.apply(&id, &remove).await),
        "already removed"
    );
    // The odd value, read whole and written back.
    let odd_back = write(
        vec![("odd", Some(odd.clone()))],
        vec![("odd", json!("done"))],
    );
    let applied = store.apply(&id, &odd_back).await;
    assert!(
        matches!(applied, Ok(true)),
        "a value read as stored compares equal: {applied:?}"
    );
    // Blind writes apply whatever the key holds.
    assert!(matches!(
        store
            .apply(&id, &write(vec![], vec![("n", json!(9))]))
            .await,
        Ok(true)
    ));
    let loaded = load(store, &id).await.expect("record");
    assert_eq!(
        Value::Object(loaded.data),
        json!({"n": 9, "new": 1, "odd": "done"})
    );
    // No record: false, as for any apply, not a conflict.
    store.delete(&id).await.expect("delete");
    let gone = write(vec![("n", Some(json!(9)))], vec![("n", json!(10))]);
    let gone = store.apply(&id, &gone).await;
    assert!(
        matches!(gone, Ok(false)),
        "no record is not a conflict: {gone:?}"
    );
}

/// Merge operations ([`Changes::merges`]) apply to what the store holds,
/// as [`Merge::apply`] says, several to one key in order; one that meets a
/// value of another kind, or overflows, is a conflict that applies none of
/// the changes. A map keeps the form any store writes, so that a value read
/// back after merges compares equal to what the store holds.
pub async fn merges_apply_to_what_the_store_holds<S: SessionStore + ?Sized>(store: &S) {
    let big = 9_007_199_254_740_993_i64; // 2^53 + 1: not a double
    let id = created(
        store,
        &record(json!({"n": 1, "big": big, "list": [], "s": "text",
            "map": {"m": 1, "t": {"x": "}],\"{[\\"}, "u": [1, {"y": "]"}, []], "zz": -1.5e-7}})),
    )
    .await;
    let expires = now() + 3600;
    let merging = |merges: Vec<(&str, Merge)>| Changes {
        merges: (merges.into_iter())
            .map(|(k, m)| (k.to_owned(), m))
            .collect(),
        ..Changes::expiry(now(), expires)
    };
    let members = ["b", "", "a\"b", "ü", "nul\u{0}", "\u{10FFFF}", "a", "B"];
    let mut merges = vec![
        ("n", Merge::Add(41)),
        ("big", Merge::Add(1)),
        ("fresh", Merge::Add(-3)),
        ("list", Merge::Push(json!({"sku": 1, "a": [true]}))),
        ("list", Merge::Push(json!("two"))),
        ("new list", Merge::Push(json!(null))),
        ("map", Merge::Remove("m".into())),
        ("map", Merge::Remove("absent".into())),
        ("no map", Merge::Remove("x".into())),
    ];
    for (i, member) in members.iter().enumerate() {
        merges.push(("map", Merge::Insert((*member).into(), json!(i))));
        merges.push(("new map", Merge::Insert((*member).into(), json!([i]))));
    }
    merges.push(("map", Merge::Insert("b".into(), json!("again"))));
    merges.push(("new map", Merge::Remove("a".into())));
    let applied = store.apply(&id, &merging(merges)).await;
    assert!(matches!(applied, Ok(true)), "merges apply: {applied:?}");
    let loaded = load(store, &id).await.expect("record");
    let mut map: serde_json::Map<String, Value> = (members.iter().enumerate())
        .map(|(i, m)| ((*m).to_owned(), json!(i)))
        .collect();
    map.insert("b".into(), json!("again"));
    // Members already there, whose text holds brackets and quotes, stay.
    map.insert("t".into(), json!({"x": "}],\"{[\\"}));
    map.insert("u".into(), json!([1, {"y": "]"}, []]));
    map.insert("zz".into(), json!(-1.5e-7));
    let mut new_map: serde_json::Map<String, Value> = (members.iter().enumerate())
        .map(|(i, m)| ((*m).to_owned(), json!([i])))
        .collect();
    new_map.remove("a");
    let expected = json!({
        "n": 42, "big": big + 1, "fresh": -3,
        "list": [{"sku": 1, "a": [true]}, "two"], "new list": [null],
        "map": map, "new map": new_map, "s": "text",
    });
    assert_eq!(
        Value::Object(loaded.data.clone()),
        expected,
        "merged values"
    );
    // What was merged reads back as the store holds it.
    let read_back = Changes {
        expected: (["map", "new map", "list", "big"].iter())
            .map(|k| ((*k).to_owned(), Some(loaded.data[*k].clone())))
            .collect(),
        set: vec![("after".into(), json!(true))],
        ..Changes::expiry(now(), expires)
    };
    let applied = store.apply(&id, &read_back).await;
    assert!(
        matches!(applied, Ok(true)),
        "merged values compare equal when read back: {applied:?}"
    );
    // Merges that do not fit: nothing of the changes applies.
    for misfit in [
        ("s", Merge::Push(json!(1))),
        ("s", Merge::Add(1)),
        ("list", Merge::Insert("k".into(), json!(1))),
        ("map", Merge::Add(1)),
        ("n", Merge::Remove("k".into())),
        ("big", Merge::Add(i64::MAX)),
    ] {
        let changes = Changes {
            set: vec![("leak".into(), json!(1))],
            merges: vec![
                ("n".into(), Merge::Add(1)),
                (misfit.0.into(), misfit.1.clone()),
            ],
            ..Changes::expiry(now(), expires)
        };
        let refused = store.apply(&id, &changes).await;
        assert!(
            is_conflict(&refused),
            "{misfit:?} must conflict: {refused:?}"
        );
    }
    let after = load(store, &id).await.expect("record");
    assert_eq!(
        after.data["n"],
        json!(42),
        "a refused merge changes nothing"
    );
    assert!(!after.data.contains_key("leak"), "nor anything beside it");
    // After a clear, merges start from nothing.
    let cleared = Changes {
        cleared: true,
        merges: vec![
            ("n".into(), Merge::Add(2)),
            ("list".into(), Merge::Push(json!(1))),
        ],
        ..Changes::expiry(now(), expires)
    };
    assert!(matches!(store.apply(&id, &cleared).await, Ok(true)));
    assert_eq!(
        Value::Object(load(store, &id).await.expect("record").data),
        json!({"n": 2, "list": [1]})
    );
    store.delete(&id).await.expect("delete");
}

/// One request making thousands of merges (a handler pushing every item
/// of a long form): all apply, each key's in its order, the pushes in a
/// row onto one list beside pushes onto another, and a run of pushes onto
/// a value that is no list conflicts as one push does.
pub async fn many_merges_in_one_apply<S: SessionStore + ?Sized>(store: &S) {
    let id = created(store, &record(json!({"old": ["x"], "s": "text"}))).await;
    let expires = now() + 3600;
    let mut merges = Vec::new();
    for i in 0..3000 {
        merges.push(("old".to_owned(), Merge::Push(json!(i))));
        merges.push(("old".to_owned(), Merge::Push(json!({"i": [i, "],"]}))));
        if i % 1000 == 0 {
            merges.push(("other".to_owned(), Merge::Push(json!(i))));
            merges.push(("n".to_owned(), Merge::Add(1)));
        }
    }
    let changes = Changes {
        merges,
        ..Changes::expiry(now(), expires)
    };
    let applied = store.apply(&id, &changes).await;
    assert!(
        matches!(applied, Ok(true)),
        "many merges apply: {applied:?}"
    );
    let loaded = load(store, &id).await.expect("record");
    let mut old = vec![json!("x")];
    for i in 0..3000 {
        old.extend([json!(i), json!({"i": [i, "],"]})]);
    }
    assert_eq!(loaded.data["old"], Value::Array(old), "in order");
    assert_eq!(loaded.data["other"], json!([0, 1000, 2000]));
    assert_eq!(loaded.data["n"], json!(3));
    // Thousands of members set and removed in one map ("mark these as
    // seen"), between members already there.
    let mut merges = vec![("seen".to_owned(), Merge::Insert("m".into(), json!(0)))];
    for i in 0..5000 {
        merges.push((
            "seen".to_owned(),
            Merge::Insert(format!("k{i}\"}}"), json!([i])),
        ));
        if i % 2 == 1 {
            merges.push(("seen".to_owned(), Merge::Remove(format!("k{}\"}}", i - 1))));
        }
    }
    merges.push(("seen".to_owned(), Merge::Remove("m".into())));
    merges.push(("seen".to_owned(), Merge::Insert("a".into(), json!(null))));
    let changes = Changes {
        merges,
        ..Changes::expiry(now(), expires)
    };
    let applied = store.apply(&id, &changes).await;
    assert!(
        matches!(applied, Ok(true)),
        "many map merges apply: {applied:?}"
    );
    let mut seen: serde_json::Map<String, Value> = (1..5000)
        .step_by(2)
        .map(|i| (format!("k{i}\"}}"), json!([i])))
        .collect();
    seen.insert("a".into(), Value::Null);
    let loaded = load(store, &id).await.expect("record");
    assert_eq!(loaded.data["seen"], Value::Object(seen), "every member");
    let misfit = Changes {
        merges: (0..3)
            .map(|i| ("s".to_owned(), Merge::Push(json!(i))))
            .collect(),
        ..Changes::expiry(now(), expires)
    };
    let refused = store.apply(&id, &misfit).await;
    assert!(is_conflict(&refused), "pushes onto a string: {refused:?}");
    assert_eq!(
        load(store, &id).await.expect("record").data["s"],
        json!("text")
    );
    store.delete(&id).await.expect("delete");
}

/// Fifty requests that each read one key and write it back changed, at
/// once: every write the store acknowledged is in the stored value, every
/// other one was answered [`ErrorKind::Conflict`] (never a silent loss).
pub async fn concurrent_read_modify_writes_never_lose_silently<S: SessionStore + ?Sized>(
    store: Arc<S>,
) {
    let id = created(&*store, &record(json!({"cart": []}))).await;
    let expires = now() + 3600;
    let writes = (0..50).map(|i| {
        let (store, id) = (store.clone(), id.clone());
        async move {
            let read = load(&*store, &id).await.expect("record").data["cart"].clone();
            let mut cart = read.as_array().expect("a list").clone();
            cart.push(json!(i));
            let changes = Changes {
                expected: vec![("cart".into(), Some(read))],
                set: vec![
                    ("cart".into(), Value::Array(cart)),
                    (format!("k{i}"), json!(i)),
                ],
                ..Changes::expiry(now(), expires)
            };
            (i, store.apply(&id, &changes).await)
        }
    });
    let outcomes = join_all(writes).await;
    let stored = load(&*store, &id).await.expect("record");
    let cart = stored.data["cart"].as_array().expect("a list").clone();
    let mut acknowledged = 0;
    for (i, outcome) in &outcomes {
        match outcome {
            Ok(true) => {
                acknowledged += 1;
                assert!(
                    cart.contains(&json!(i)),
                    "write {i} acknowledged, then lost"
                );
                assert!(stored.data.contains_key(&format!("k{i}")));
            }
            Err(error) if error.kind() == ErrorKind::Conflict => {
                assert!(!cart.contains(&json!(i)), "write {i} refused, yet stored");
                assert!(
                    !stored.data.contains_key(&format!("k{i}")),
                    "write {i} refused, yet its other key stored"
                );
            }
            other => panic!("write {i}: {other:?}"),
        }
    }
    assert!(acknowledged >= 1, "one write at least must win");
    assert_eq!(
        cart.len(),
        acknowledged,
        "the cart holds the acknowledged writes only"
    );
    store.delete(&id).await.expect("delete");
}

/// Fifty requests that each append, add, and insert into a map, on one
/// session at once: every one applies and all survive.
pub async fn concurrent_merges_all_survive<S: SessionStore + ?Sized>(store: Arc<S>) {
    let id = created(&*store, &record(json!({"cart": ["first"]}))).await;
    let expires = now() + 3600;
    let writes = (0..50).map(|i| {
        let (store, id) = (store.clone(), id.clone());
        async move {
            let changes = Changes {
                merges: vec![
                    ("cart".into(), Merge::Push(json!(i))),
                    ("count".into(), Merge::Add(1)),
                    ("seen".into(), Merge::Insert(format!("m{i}"), json!(true))),
                ],
                ..Changes::expiry(now(), expires)
            };
            store.apply(&id, &changes).await
        }
    });
    for outcome in join_all(writes).await {
        assert!(
            matches!(outcome, Ok(true)),
            "a merge must apply: {outcome:?}"
        );
    }
    let stored = load(&*store, &id).await.expect("record");
    let mut cart = stored.data["cart"].as_array().expect("a list").clone();
    assert_eq!(
        cart.remove(0),
        json!("first"),
        "appended after what was there"
    );
    cart.sort_by_key(|item| item.as_i64());
    assert_eq!(
        Value::Array(cart),
        json!((0..50).collect::<Vec<_>>()),
        "every item once"
    );
    assert_eq!(stored.data["count"], json!(50), "every addition");
    assert_eq!(stored.data["seen"].as_object().map(|m| m.len()), Some(50));
    store.delete(&id).await.expect("delete");
}

/// Leases ([`SessionStore::lease`]), where the store has them: one holder
/// at a time, released only by its holder, free again once its hold ran
/// out. Returns false when the store answers `Unsupported`.
pub async fn leases_exclude_each_other<S: SessionStore + ?Sized>(store: &S) -> bool {
    let id = SessionId::generate();
    let long = Duration::from_secs(30);
    match store.lease(&id, "a", long).await {
        Err(error) if error.kind() == ErrorKind::Unsupported => return false,
        taken => assert!(taken.expect("lease"), "a free session's lease is taken"),
    }
    assert!(
        !store.lease(&id, "b", long).await.expect("lease"),
        "held by a"
    );
    store.release(&id, "b").await.expect("release");
    assert!(
        !store.lease(&id, "b", long).await.expect("lease"),
        "only a releases it"
    );
    store.release(&id, "a").await.expect("release");
    assert!(
        store.lease(&id, "b", long).await.expect("lease"),
        "released"
    );
    store.release(&id, "b").await.expect("release");
    let other = SessionId::generate();
    assert!(
        store.lease(&other, "a", long).await.expect("lease"),
        "per session"
    );
    store.release(&other, "a").await.expect("release");
    // A holder that never releases (its server died) holds for its hold
    // (a second: Memcached counts in seconds, and its clock ticks once a
    // second).
    let short = SessionId::generate();
    assert!((store.lease(&short, "a", Duration::from_secs(1)).await).expect("lease"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        store.lease(&short, "b", long).await.expect("lease"),
        "a lease past its hold is free"
    );
    store.release(&short, "b").await.expect("release");
    true
}

/// Writes racing a delete (a logout in another tab) or a cycle (a login in
/// another tab: the old record is taken, atomically, and its data moves to
/// a new id) never bring the old record back, and a write racing the take
/// is either in the taken record or told it found no record: never
/// acknowledged and then lost.
pub async fn writes_racing_a_delete_never_resurrect<S: SessionStore + ?Sized>(store: Arc<S>) {
    for attempt in 0..20 {
        let cycle = attempt % 2 == 1;
        let original = record(json!({"user": "ann"}));
        let id = created(&*store, &original).await;
        let expires = now() + 3600;
        let writes = (0..20).map(|i| {
            let (store, id) = (store.clone(), id.clone());
            async move {
                if i == 10 {
                    let taken = if cycle {
                        store.take(&id, now()).await.expect("take")
                    } else {
                        store.delete(&id).await.expect("delete");
                        None
                    };
                    Outcome::Ended(taken)
                } else {
                    let changes = Changes {
                        set: vec![(format!("k{i}"), json!(i))],
                        ..Changes::expiry(now(), expires)
                    };
                    Outcome::Applied(i, store.apply(&id, &changes).await.expect("apply"))
                }
            }
        });
        let outcomes = join_all(writes).await;
        assert_eq!(
            load(&*store, &id).await,
            None,
            "a deleted or cycled-away session came back"
        );
        if !cycle {
            continue;
        }
        let taken = outcomes
            .iter()
            .find_map(|outcome| match outcome {
                Outcome::Ended(taken) => Some(taken.clone()),
                Outcome::Applied(..) => None,
            })
            .flatten()
            .expect("take returns the live record");
        assert_eq!(taken.data["user"], "ann", "take returns the data");
        for outcome in &outcomes {
            if let Outcome::Applied(i, applied) = outcome {
                assert_eq!(
                    taken.data.contains_key(&format!("k{i}")),
                    *applied,
                    "write {i}: an apply that returned {applied} must {}be in the taken record",
                    if *applied { "" } else { "not " }
                );
            }
        }
        assert_eq!(
            store.take(&id, now()).await.expect("take"),
            None,
            "taken once"
        );
    }
}

/// An owner name no other run shares, with what makes key names hard
/// (separators, braces of Redis hash tags, quotes, non-ASCII).
fn unique_owner() -> String {
    let id = SessionId::generate();
    format!(
        "user:{{{}}}/\"ü\" {}",
        &id.as_str()[..8],
        &id.as_str()[8..16]
    )
}

fn owned_record(owner: &str, meta: Value) -> Record {
    let mut value = record(json!({"user": 1}));
    value.data.insert(OWNER_KEY.into(), json!(owner));
    value.data.insert(OWNER_META_KEY.into(), meta);
    value
}

async fn owned_ids<S: SessionStore + ?Sized>(store: &S, owner: &str, at: u64) -> Vec<SessionId> {
    let owned = store.owned(owner, at).await.expect("owned");
    for (_, record) in &owned {
        assert_eq!(record.owner(), Some(owner), "listed under another owner");
    }
    let mut ids: Vec<SessionId> = owned.into_iter().map(|(id, _)| id).collect();
    ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    ids
}

fn sorted(mut ids: Vec<SessionId>) -> Vec<SessionId> {
    ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    ids
}

/// The owner index (`owned`): a store lists exactly the live sessions whose
/// record names the owner, through every way a record changes (owner set,
/// moved, removed, cleared; record taken, deleted, expired). Returns false
/// when the store answers `Unsupported` (it cannot enumerate), true when it
/// passed.
pub async fn owners_index_their_sessions<S: SessionStore + ?Sized>(store: Arc<S>) -> bool {
    let store = &*store;
    let (ann, bob) = (unique_owner(), unique_owner());
    match store.owned(&ann, now()).await {
        Err(error) if error.kind() == ErrorKind::Unsupported => return false,
        result => assert!(result.expect("owned").is_empty(), "a new owner has none"),
    }
    let a = created(store, &owned_record(&ann, json!({"device": "phone"}))).await;
    let b = created(store, &owned_record(&ann, json!(null))).await;
    let c = created(store, &owned_record(&bob, json!("laptop"))).await;
    let d = created(store, &record(json!({"anonymous": true}))).await;
    assert_eq!(
        owned_ids(store, &ann, now()).await,
        sorted(vec![a.clone(), b.clone()])
    );
    assert_eq!(owned_ids(store, &bob, now()).await, vec![c.clone()]);
    let listed = store.owned(&ann, now()).await.expect("owned");
    let (_, record_a) = listed.iter().find(|(id, _)| *id == a).expect("a listed");
    assert_eq!(
        record_a.data[OWNER_META_KEY],
        json!({"device": "phone"}),
        "the record comes whole"
    );

    let expires = now() + 3600;
    let set_owner = |owner: &str| Changes {
        set: vec![(OWNER_KEY.into(), json!(owner))],
        ..Changes::expiry(now(), expires)
    };
    assert!(store.apply(&b, &set_owner(&bob)).await.expect("apply"));
    assert_eq!(
        owned_ids(store, &ann, now()).await,
        vec![a.clone()],
        "b moved away"
    );
    assert_eq!(
        owned_ids(store, &bob, now()).await,
        sorted(vec![b.clone(), c.clone()]),
        "b moved in"
    );
    let unowned = Changes {
        removed: vec![OWNER_KEY.into()],
        ..Changes::expiry(now(), expires)
    };
    assert!(store.apply(&a, &unowned).await.expect("apply"));
    assert_eq!(owned_ids(store, &ann, now()).await, vec![], "owner removed");
    assert!(store.apply(&d, &set_owner(&ann)).await.expect("apply"));
    assert_eq!(
        owned_ids(store, &ann, now()).await,
        vec![d.clone()],
        "owner set on a write"
    );
    let cleared = Changes {
        cleared: true,
        set: vec![("after".into(), json!(1))],
        ..Changes::expiry(now(), expires)
    };
    assert!(store.apply(&d, &cleared).await.expect("apply"));
    assert_eq!(
        owned_ids(store, &ann, now()).await,
        vec![],
        "a clear removes the owner"
    );
    let unrelated = Changes {
        set: vec![("other".into(), json!(2))],
        ..Changes::expiry(now(), expires)
    };
    assert!(store.apply(&c, &unrelated).await.expect("apply"));
    assert_eq!(
        owned_ids(store, &bob, now()).await,
        sorted(vec![b.clone(), c.clone()]),
        "other writes keep the owner"
    );

    // Ended: taken (a cycle's first half), deleted.
    let taken = store.take(&b, now()).await.expect("take").expect("b live");
    assert_eq!(
        owned_ids(store, &bob, now()).await,
        vec![c.clone()],
        "taken"
    );
    let moved = created(store, &taken).await;
    assert_eq!(
        owned_ids(store, &bob, now()).await,
        sorted(vec![c.clone(), moved.clone()]),
        "cycled: the new id only"
    );
    store.delete(&c).await.expect("delete");
    assert_eq!(
        owned_ids(store, &bob, now()).await,
        vec![moved.clone()],
        "deleted"
    );

    // Expired, by the time the store is handed.
    let later = expires + 60;
    assert_eq!(
        owned_ids(store, &bob, later).await,
        vec![],
        "expired sessions are not listed"
    );
    let short = Record::new(owned_record(&ann, json!(1)).data, false, now(), now() + 1);
    let e = created(store, &short).await;
    assert_eq!(owned_ids(store, &ann, now()).await, vec![e.clone()]);
    assert_eq!(
        owned_ids(store, &ann, now() + 5).await,
        vec![],
        "judged at the now given"
    );
    for id in [&a, &d, &e, &moved] {
        store.delete(id).await.expect("delete");
    }
    assert_eq!(owned_ids(store, &ann, now()).await, vec![]);
    assert_eq!(owned_ids(store, &bob, now()).await, vec![]);
    true
}

/// Owners are any string, matched exactly: ones that look like paths,
/// Redis hash tags, MongoDB operators or SQL, that hold U+0000 or the
/// layer's reserved U+10FFFF, the empty string, and owners that differ
/// only in case, accents or a trailing space each list their own session
/// and nothing else's.
pub async fn owners_are_matched_exactly<S: SessionStore + ?Sized>(store: &S) {
    let tag = SessionId::generate().as_str()[..8].to_owned();
    let owners: Vec<String> = [
        "",
        "ann",
        "ann ",
        "Ann",
        "änn",
        "a\0b",
        "a\0",
        "a\u{10FFFF}0b",
        "../../etc/passwd",
        "{ann}",
        "$gt",
        "{\"$ne\": null}",
        "' OR '1'='1",
        "a.b",
        "%",
        "\\",
    ]
    .iter()
    .map(|owner| format!("{tag}{owner}"))
    .collect();
    let mut ids = Vec::new();
    for owner in &owners {
        ids.push(created(store, &owned_record(owner, json!(null))).await);
    }
    for (owner, id) in owners.iter().zip(&ids) {
        assert_eq!(
            owned_ids(store, owner, now()).await,
            vec![id.clone()],
            "{owner:?} lists its own session only"
        );
    }
    assert!(owned_ids(store, &tag[..7], now()).await.is_empty());
    for id in &ids {
        store.delete(id).await.expect("delete");
    }
}

/// Forty sessions of one owner created at once (logins racing), and forty
/// of another moved in at once: none is missing from the index.
pub async fn owners_index_many_sessions_at_once<S: SessionStore + ?Sized>(store: Arc<S>) {
    let (ann, bob) = (unique_owner(), unique_owner());
    let creates = (0..40).map(|_| {
        let (store, ann) = (store.clone(), ann.clone());
        async move { created(&*store, &owned_record(&ann, json!(null))).await }
    });
    let ids = sorted(join_all(creates).await);
    assert_eq!(
        owned_ids(&*store, &ann, now()).await,
        ids,
        "every login indexed"
    );
    let expires = now() + 3600;
    let moves = ids.iter().map(|id| {
        let (store, id, bob) = (store.clone(), id.clone(), bob.clone());
        async move {
            let changes = Changes {
                set: vec![(OWNER_KEY.into(), json!(bob))],
                ..Changes::expiry(now(), expires)
            };
            assert!(store.apply(&id, &changes).await.expect("apply"));
        }
    });
    join_all(moves).await;
    assert_eq!(
        owned_ids(&*store, &ann, now()).await,
        vec![],
        "every one moved out"
    );
    assert_eq!(
        owned_ids(&*store, &bob, now()).await,
        ids,
        "every one moved in"
    );
    for id in &ids {
        store.delete(id).await.expect("delete");
    }
    assert_eq!(owned_ids(&*store, &bob, now()).await, vec![]);
}

enum Outcome {
    Applied(usize, bool),
    Ended(Option<Record>),
}

/// Every time a store is handed is the layer's (a test clock, say): a record
/// that is live by the system clock but expired at the `now` the store is
/// given is gone for `load`, `apply` and `take`, and its id is free for a
/// record created at that time.
pub async fn the_layers_clock_rules<S: SessionStore + ?Sized>(store: &S) {
    let value = record(json!({"clock": "the layer's"}));
    let later = value.expires_at + 60;
    let id = created(store, &value).await;
    assert_eq!(
        store.load(&id, later).await.expect("load"),
        None,
        "load judges expiry at the now it is given"
    );
    let changes = Changes {
        set: vec![("revived".into(), json!(true))],
        ..Changes::expiry(later, later + 3600)
    };
    assert!(
        !store.apply(&id, &changes).await.expect("apply"),
        "apply judges expiry at changes.now: an expired record is not revived"
    );
    assert_eq!(
        store.take(&id, later).await.expect("take"),
        None,
        "take judges expiry at the now it is given"
    );
    let id = created(store, &value).await;
    let again = Record::new(data(json!({"again": true})), false, later, later + 3600);
    assert!(
        store.create(&id, &again).await.expect("create"),
        "an id whose record expired by the new record's creation is free"
    );
    assert_same(
        store.load(&id, later).await.expect("load"),
        Some(again),
        "the new record, not the old one",
    );
    store.delete(&id).await.expect("delete");
}

/// A record expires when its time comes (native TTLs included).
pub async fn records_expire_in_time<S: SessionStore + ?Sized>(store: &S) {
    // Four seconds: a busy machine may take a while between the create
    // and the first load, and native TTLs run on the server's clock.
    let created_at = now();
    let value = Record::new(
        data(json!({"short": true})),
        false,
        created_at,
        created_at + 4,
    );
    let id = created(store, &value).await;
    let live = store.load(&id, created_at).await.expect("load");
    assert!(live.is_some(), "live before its expiry");
    tokio::time::sleep(Duration::from_millis(5100)).await;
    assert_eq!(load(store, &id).await, None, "gone after its expiry");
}

/// Runs the futures as concurrent Tokio tasks (in parallel on a
/// multi-threaded runtime) and waits for all of them.
async fn join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for future in futures {
        tasks.spawn(future);
    }
    let mut outputs = Vec::new();
    while let Some(output) = tasks.join_next().await {
        outputs.push(output.expect("a store task panicked"));
    }
    outputs
}
