//! `ResponseFuture`: what happens to the response on its way out.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::header::{SET_COOKIE, VARY};
use http::{HeaderMap, Response};
use pin_project_lite::pin_project;

use crate::backend::{Backend, CookieBackend, Shared, StoreBackend};
use crate::codec::Memory;
use crate::config::{Config, Transport};
use crate::cookie::{self, Via, chunk, header_value};
use crate::error::{Error, ErrorHandler, ErrorKind, LoadFailed};
use crate::id::{self, SessionId};
use crate::load::{Loaded, LoadedRecord, SessionHandle};
use crate::session::State;
use crate::store::{Changes, Merge, Record, STAMP_KEY, Value};

type Saving<B> = Pin<Box<dyn Future<Output = Response<B>> + Send>>;

pin_project! {
    /// The response future of [`SessionService`](crate::SessionService):
    /// once the inner service answers, it saves the session (into cookies,
    /// or through the store) and sets the cookie, or replaces the response
    /// through the error handler when the session cannot be saved.
    pub struct ResponseFuture<F, H, B> {
        #[pin]
        step: Step<F, B>,
        session: Option<(SessionHandle, H)>,
    }
}

pin_project! {
    #[project = StepProj]
    enum Step<F, B> {
        Inner { #[pin] future: F },
        Saving { future: Saving<B> },
        Done,
    }
}

impl<F, H, B> ResponseFuture<F, H, B> {
    pub(crate) fn new(future: F, handle: SessionHandle, error_handler: H) -> Self {
        Self {
            step: Step::Inner { future },
            session: Some((handle, error_handler)),
        }
    }

    pub(crate) fn untouched(future: F) -> Self {
        Self {
            step: Step::Inner { future },
            session: None,
        }
    }
}

impl<F, H, B> std::fmt::Debug for ResponseFuture<F, H, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, H, B, E> Future for ResponseFuture<F, H, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    H: ErrorHandler<B>,
    B: Send + 'static,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.step.as_mut().project() {
                StepProj::Inner { future } => {
                    let response = ready!(future.poll(cx))?;
                    let Some((handle, error_handler)) = this.session.take() else {
                        return Poll::Ready(Ok(response));
                    };
                    match finish(&handle, error_handler, response) {
                        Next::Ready(response) => {
                            this.step.set(Step::Done);
                            return Poll::Ready(Ok(response));
                        }
                        Next::Saving(future) => this.step.set(Step::Saving { future }),
                    }
                }
                StepProj::Saving { future } => {
                    let response = ready!(future.as_mut().poll(cx));
                    this.step.set(Step::Done);
                    return Poll::Ready(Ok(response));
                }
                StepProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

/// The session's lease, for the response to give back once saved.
fn take_lease(loaded: &Loaded) -> Option<crate::load::Lease> {
    (loaded.lease.lock())
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
}

enum Next<B> {
    Ready(Response<B>),
    Saving(Saving<B>),
}

/// What happens to the response the handler gave: `Vary`, then save
/// (into cookies, or through the store), or the error hook.
fn finish<B, H>(handle: &SessionHandle, error_handler: H, mut response: Response<B>) -> Next<B>
where
    H: ErrorHandler<B>,
    B: Send + 'static,
{
    // 1. The extractor could not read the store: answer through the hook.
    let transport = &handle.shared().config.transport;
    if let Some(LoadFailed(error)) = response.extensions_mut().remove::<LoadFailed>() {
        return Next::Ready(fail(&error_handler, transport, error));
    }
    // 2. A session no handler asked for was neither read nor changed.
    let Some(loaded) = handle.loaded() else {
        return Next::Ready(response);
    };
    let shared = handle.shared();
    let state = loaded.session.state();
    // 3. A session that was read varies the response.
    let accessed = state.accessed;
    if accessed {
        add_vary(response.headers_mut(), transport);
    }
    let out = Out::new(transport, loaded.via);
    // 4. A failed request leaves no half of its changes behind (and gives
    //    back the session's lease, if it holds one).
    if response.status().is_server_error() && !shared.config.persist_on_server_error {
        drop(state);
        return match take_lease(loaded) {
            Some(lease) => Next::Saving(Box::pin(async move {
                lease.release().await;
                response
            })),
            None => Next::Ready(response),
        };
    }
    // 5. Client-side, 6. server-side; 7. every Set-Cookie varies on
    //    Cookie (`Headers::append_cookies`), every failure goes through
    //    `fail`.
    match &shared.backend {
        Backend::Cookie(backend) => {
            let mut headers = Headers::new(response.headers_mut(), accessed, &shared.config, out);
            let saved = save_cookie(shared, backend, loaded, &state, &mut headers);
            drop(state);
            Next::Ready(match saved {
                Ok(()) => response,
                Err(error) => fail(&error_handler, transport, error),
            })
        }
        Backend::Store(backend) => {
            let plan = plan_store(shared, loaded, &state);
            drop(state);
            let lease = take_lease(loaded);
            if plan.is_none() && lease.is_none() {
                return Next::Ready(response);
            }
            let (shared, backend) = (shared.clone(), backend.clone());
            Next::Saving(Box::pin(async move {
                let response = match plan {
                    None => response,
                    Some(plan) => match run_store(&shared, &backend, plan).await {
                        Ok(lines) => {
                            Headers::new(response.headers_mut(), accessed, &shared.config, out)
                                .append_cookies(lines);
                            response
                        }
                        Err(error) => fail(&error_handler, &shared.config.transport, error),
                    },
                };
                // Saved (or failed): the next request of the session may go.
                if let Some(lease) = lease {
                    lease.release().await;
                }
                response
            }))
        }
    }
}

/// Replaces the response with the error handler's; the failure is logged
/// and rides in the extensions whatever the handler does.
fn fail<B, H: ErrorHandler<B>>(
    error_handler: &H,
    transport: &Transport,
    error: Error,
) -> Response<B> {
    tracing::error!(%error, source = ?std::error::Error::source(&error), "session could not be loaded or saved");
    let mut replacement = error_handler.handle(&error);
    // It answers for the request's session, whatever the hook built.
    add_vary(replacement.headers_mut(), transport);
    replacement.extensions_mut().insert(error);
    replacement
}

/// Client-side: delete when emptied; write when modified, when a permanent
/// session is due for a refresh, or when a fallback key verified it.
fn save_cookie(
    shared: &Shared,
    backend: &CookieBackend,
    loaded: &Loaded,
    state: &State,
    headers: &mut Headers<'_>,
) -> Result<(), Error> {
    let config = &shared.config;
    let now = config.now();
    if state.modified && state.is_empty() {
        if loaded.had_cookie {
            headers.append_cookies([cookie::removal_cookie(config, &config.name)]);
        }
        expire_chunks(headers, shared, loaded, 1);
        return Ok(());
    }
    let origin = loaded.origin.as_ref();
    // A permanent session's cookie expiry, and any session's idle timeout
    // (counted from the issue time), move forward on use.
    let refreshes = state.permanent || config.idle_timeout.is_some();
    let reissue = origin.is_some_and(|origin| {
        origin.by_fallback_key
            || (refreshes
                && config.refresh_each_request
                && now.saturating_sub(origin.issued_at) >= config.refresh_interval.as_secs())
    });
    if !state.modified && !reissue {
        return Ok(());
    }
    // The absolute timeout counts from the session's start, as a record's
    // does: a cycled or flushed session starts again now, a cleared one
    // does not.
    let created_at = origin
        .filter(|_| config.absolute_timeout.is_some() && !state.flushed && !state.cycle)
        .map(|origin| origin.created_at)
        .filter(|&created_at| created_at < now);
    // What the codec remembered of the old cookie (Flask's Python types)
    // is for values carried over from it, never for a session started
    // anew by `clear` or `flush`.
    let fresh = Memory::default();
    let memory = origin
        .filter(|_| !state.cleared)
        .map_or(&fresh, |origin| &origin.memory);
    let lines = backend.encode(
        config,
        &state.data,
        state.permanent,
        now,
        created_at,
        memory,
    )?;
    let written = lines.len();
    if written > 1 && headers.out.header {
        // A header carries one token: no chunks.
        return Err(Error::with_message(
            ErrorKind::CookieTooLarge,
            "the session does not fit in one token header",
        ));
    }
    headers.append_cookies(lines);
    expire_chunks(headers, shared, loaded, written);
    Ok(())
}

/// Deletes the chunk cookies the request carried from index `from` on: a
/// session that shrank, or was emptied, leaves none behind.
fn expire_chunks(headers: &mut Headers<'_>, shared: &Shared, loaded: &Loaded, from: usize) {
    let config = &shared.config;
    let stale = loaded.chunks.iter().filter(|&&i| i >= from);
    headers.append_cookies(
        stale.map(|&index| cookie::removal_cookie(config, &chunk::chunk_name(&config.name, index))),
    );
}

/// Where a response carries the session token: as the request did; a
/// request that carried none by cookie where the transport has cookies
/// (a browser's first request must not see its token in a header a script
/// can read), by header otherwise. Never both.
#[derive(Clone, Copy)]
struct Out {
    cookies: bool,
    header: bool,
}

impl Out {
    fn new(transport: &Transport, via: Via) -> Self {
        let by_header = match via {
            Via::Header => true,
            Via::Cookie => false,
            Via::Nothing => !transport.cookies(),
        } && transport.header().is_some();
        Self {
            cookies: !by_header,
            header: by_header,
        }
    }
}

/// The response's headers as the layer adds to them: `Set-Cookie` lines
/// (or the token header they become), and `Vary` with them, once.
struct Headers<'a> {
    map: &'a mut HeaderMap,
    /// `Vary` is already there.
    varied: bool,
    config: &'a Config,
    out: Out,
}

impl<'a> Headers<'a> {
    fn new(map: &'a mut HeaderMap, varied: bool, config: &'a Config, out: Out) -> Self {
        Self {
            map,
            varied,
            config,
            out,
        }
    }

    /// Appends session `Set-Cookie` lines, and `Vary` with them: a
    /// response that sets or deletes a session cookie depends on the
    /// request's cookie even when no handler read the session (a refresh,
    /// a re-sign after key rotation), and a shared cache must never hand
    /// it to another user. Where the token travels in a header, the
    /// session cookie's value goes there instead (empty when the cookie
    /// is deleted: the client drops its token); chunk cookies have no
    /// header form.
    fn append_cookies(&mut self, lines: impl IntoIterator<Item = String>) {
        let mut any = false;
        let transport = &self.config.transport;
        let token_header = transport.header().filter(|_| self.out.header);
        for line in lines {
            if let Some(name) = token_header
                && let Some(token) = cookie::token_of(&line, &self.config.name)
            {
                self.map
                    .insert(name.clone(), header_value(token.to_owned()));
                any = true;
            }
            if self.out.cookies {
                self.map.append(SET_COOKIE, header_value(line));
                any = true;
            }
        }
        if any && !self.varied {
            add_vary(self.map, transport);
            self.varied = true;
        }
    }
}

/// What a server-side session needs done after the handler, at `now`.
struct StorePlan {
    now: u64,
    op: StoreOp,
    /// Whether the id cookie is (re)written, and until when.
    cookie: CookieAction,
}

/// The store's part. The ops that make a new id also say until when its
/// cookie lasts (`Some` for a permanent session): the cookie can only be
/// written once the id exists.
enum StoreOp {
    None,
    /// A new record under a fresh id.
    Create {
        record: Record,
        cookie_expires: Option<u64>,
        stamp: Option<String>,
    },
    /// A new record under a fresh id, then the old one taken, and what
    /// other requests wrote to it meanwhile carried over.
    Cycle {
        record: Record,
        old: SessionId,
        touched: Touched,
        cookie_expires: Option<u64>,
        stamp: Option<String>,
    },
    Apply(SessionId, Changes),
    Delete(SessionId),
}

/// What happens to the cookie of the id the request already had;
/// `expires` is `Some` for a permanent session.
enum CookieAction {
    None,
    Remove,
    Rewrite {
        id: SessionId,
        expires: Option<u64>,
        stamp: Option<String>,
    },
}

/// Decides, under the session's lock, what the store and the cookie need;
/// `None` when nothing does.
fn plan_store(shared: &Shared, loaded: &Loaded, state: &State) -> Option<StorePlan> {
    let now = shared.config.now();
    if state.modified && state.is_empty() {
        return Some(plan_emptied(loaded, now));
    }
    if state.modified {
        return Some(plan_modified(shared, loaded, state, now));
    }
    plan_refresh(shared, loaded, state, now)
}

/// Emptied: the record and the cookie go.
fn plan_emptied(loaded: &Loaded, now: u64) -> StorePlan {
    StorePlan {
        now,
        op: (loaded.record.as_ref()).map_or(StoreOp::None, |r| StoreOp::Delete(r.id.clone())),
        cookie: if loaded.had_cookie {
            CookieAction::Remove
        } else {
            CookieAction::None
        },
    }
}

/// Changed: a new record (first write, cycle, or a write after a flush,
/// which starts over under a new id), or the changes applied per key.
fn plan_modified(shared: &Shared, loaded: &Loaded, state: &State, now: u64) -> StorePlan {
    let config = &shared.config;
    // A store that answers from copies gets every write stamped, and the
    // client the stamp (see `SessionStore::stamps_writes`).
    let stamp = matches!(&shared.backend, Backend::Store(b) if b.stamps).then(id::stamp);
    let fresh = || {
        let expires = config.record_expiry(now, now);
        let mut record = Record::new(state.data.clone(), state.permanent, now, expires);
        if let Some(stamp) = &stamp {
            record.data.insert(STAMP_KEY.into(), stamp.as_str().into());
        }
        (record, state.permanent.then_some(expires))
    };
    match &loaded.record {
        None => {
            let (record, cookie_expires) = fresh();
            StorePlan {
                now,
                op: StoreOp::Create {
                    record,
                    cookie_expires,
                    stamp,
                },
                cookie: CookieAction::None,
            }
        }
        Some(r) if state.cycle || state.flushed => {
            let (record, cookie_expires) = fresh();
            let mut keys: BTreeSet<String> = state.changed.union(&state.removed).cloned().collect();
            // A merged key holds the request's merged value already.
            keys.extend(state.merges.iter().map(|(key, _)| key.clone()));
            // The new stamp wins over the old record's.
            keys.insert(STAMP_KEY.into());
            let request = state.changes(now, now);
            let touched = Touched {
                cleared: state.cleared,
                keys,
                expected: request.expected,
                merges: request.merges,
            };
            StorePlan {
                now,
                op: StoreOp::Cycle {
                    record,
                    old: r.id.clone(),
                    touched,
                    cookie_expires,
                    stamp,
                },
                cookie: CookieAction::None,
            }
        }
        Some(r) => {
            let expires = config.record_expiry(r.created_at, now);
            let by_fallback = loaded.origin.as_ref().is_some_and(|o| o.by_fallback_key);
            let rewrite = state.permanent || state.permanent_changed || by_fallback;
            let mut changes = state.changes(now, expires);
            if let Some(stamp) = &stamp {
                changes.set.push((STAMP_KEY.into(), stamp.as_str().into()));
            }
            StorePlan {
                now,
                op: StoreOp::Apply(r.id.clone(), changes),
                cookie: if rewrite || stamp.is_some() {
                    keep(r, state.permanent, expires, stamp)
                } else {
                    CookieAction::None
                },
            }
        }
    }
}

/// Unchanged: refresh the expiry (throttled), re-sign a fallback id.
fn plan_refresh(shared: &Shared, loaded: &Loaded, state: &State, now: u64) -> Option<StorePlan> {
    let config = &shared.config;
    let r = loaded.record.as_ref()?;
    let by_fallback = loaded.origin.as_ref().is_some_and(|o| o.by_fallback_key);
    let expires = config.record_expiry(r.created_at, now);
    let refresh = config.refresh_each_request
        && expires.saturating_sub(r.expires_at) >= config.refresh_interval.as_secs()
        && expires > r.expires_at;
    if !refresh && !by_fallback {
        return None;
    }
    let expires = if refresh { expires } else { r.expires_at };
    Some(StorePlan {
        now,
        op: if refresh {
            StoreOp::Apply(r.id.clone(), Changes::expiry(now, expires))
        } else {
            StoreOp::None
        },
        cookie: if state.permanent || by_fallback {
            keep(r, state.permanent, expires, r.stamp.clone())
        } else {
            CookieAction::None
        },
    })
}

fn keep(
    record: &LoadedRecord,
    permanent: bool,
    expires: u64,
    stamp: Option<String>,
) -> CookieAction {
    CookieAction::Rewrite {
        id: record.id.clone(),
        expires: permanent.then_some(expires),
        stamp,
    }
}

/// What the request itself changed, so that a cycle can carry the rest of
/// the old record over as it was when taken: a write another request made
/// between this one's load and the cycle was acknowledged, and must not be
/// lost with the old id. (Writes after the take find no record and fail.)
struct Touched {
    /// The request cleared the session (a flush, a login that starts
    /// clean): nothing of the old record is carried.
    cleared: bool,
    /// Keys the request set, removed or merged: its own value wins.
    keys: BTreeSet<String>,
    /// What the request read of keys it set or removed: the old record, as
    /// taken, must still hold it.
    expected: Vec<(String, Option<Value>)>,
    /// The request's merges, made again on the old record as taken, so
    /// that what other requests merged meanwhile is kept.
    merges: Vec<(String, Merge)>,
}

enum Carry {
    Nothing,
    Changes(Changes),
    /// The old record was gone: another request ended the session.
    Ended,
    /// Another request changed a key this one read and then wrote, or a
    /// merge no longer fits: nothing of this request can be saved.
    Conflict(Error),
}

impl Touched {
    fn carry(&self, taken: Option<&Record>, new: &Record) -> Carry {
        if self.cleared {
            return Carry::Nothing;
        }
        let Some(taken) = taken else {
            return Carry::Ended;
        };
        // The new record was made at the request's now.
        let mut changes = Changes::expiry(new.created_at, new.expires_at);
        changes.expected.clone_from(&self.expected);
        changes.merges.clone_from(&self.merges);
        // `apply_to`, the one judge of expectations and merges, on a copy
        // of the old record: its merged values go to the new one.
        let mut merged = taken.clone();
        if let Err(conflict) = changes.apply_to(&mut merged) {
            return Carry::Conflict(conflict);
        }
        changes.expected.clear();
        changes.merges.clear();
        let untouched = |key: &String| !self.keys.contains(key);
        changes.removed = (new.data.keys())
            .filter(|&key| untouched(key) && !taken.data.contains_key(key))
            .cloned()
            .collect();
        let merged_keys: BTreeSet<&String> = self.merges.iter().map(|(key, _)| key).collect();
        for key in merged_keys {
            match merged.data.get(key) {
                Some(value) if new.data.get(key) != Some(value) => {
                    changes.set.push((key.clone(), value.clone()));
                }
                None if new.data.contains_key(key) => changes.removed.push(key.clone()),
                _ => {}
            }
        }
        changes.set.extend(
            (taken.data.iter())
                .filter(|(key, value)| untouched(key) && new.data.get(*key) != Some(*value))
                .map(|(key, value)| (key.clone(), value.clone())),
        );
        if changes.is_expiry_only() {
            Carry::Nothing
        } else {
            Carry::Changes(changes)
        }
    }
}

/// How many fresh ids are tried before giving up: with 256-bit ids a
/// collision means a broken random source, not bad luck.
const CREATE_ATTEMPTS: usize = 4;

/// Undoes a cycle that cannot finish: the old record goes back under its
/// id first, as taken (it holds writes already acknowledged), then the new
/// one goes, which no cookie names (it expires if its delete fails).
async fn put_back(
    store: &dyn crate::store::SessionStore,
    old: &SessionId,
    taken: Option<&Record>,
    new: &SessionId,
) -> Result<(), Error> {
    if let Some(taken) = taken
        && !store.create(old, taken).await?
    {
        tracing::error!("a session taken by an unfinished cycle_id could not be put back");
    }
    if let Err(error) = store.delete(new).await {
        tracing::warn!(%error, "the new record of an unfinished cycle_id is left to expire");
    }
    Ok(())
}

/// Carries out a plan against the store; the Set-Cookie lines to add.
async fn run_store(
    shared: &Shared,
    backend: &StoreBackend,
    plan: StorePlan,
) -> Result<Vec<String>, Error> {
    let store = &*backend.store;
    let created = match plan.op {
        StoreOp::None => None,
        StoreOp::Create {
            record,
            cookie_expires,
            stamp,
        } => Some((create(backend, &record).await?, cookie_expires, stamp)),
        StoreOp::Cycle {
            record,
            old,
            touched,
            cookie_expires,
            stamp,
        } => {
            let id = create(backend, &record).await?;
            let taken = store.take(&old, plan.now).await?;
            match touched.carry(taken.as_ref(), &record) {
                Carry::Nothing => {}
                Carry::Changes(changes) => match store.apply(&id, &changes).await {
                    Ok(true) => {}
                    Ok(false) => return Err(Error::new(ErrorKind::SessionEnded)),
                    // The cookie keeps naming the old id: it must hold the
                    // session again, with what was acknowledged to it.
                    Err(error) => {
                        put_back(store, &old, taken.as_ref(), &id).await?;
                        return Err(error);
                    }
                },
                Carry::Ended => {
                    store.delete(&id).await?;
                    return Err(Error::new(ErrorKind::SessionEnded));
                }
                // Nothing of this request may be saved: the old record goes
                // back under its id, as taken (with what other requests
                // wrote to it), and the new one goes. A write that came in
                // between found no record and was answered 409 itself.
                //
                // The old record goes back first: it holds writes already
                // acknowledged. The new one is only clean-up (unreachable,
                // it expires if its delete fails).
                Carry::Conflict(conflict) => {
                    put_back(store, &old, taken.as_ref(), &id).await?;
                    return Err(conflict);
                }
            }
            Some((id, cookie_expires, stamp))
        }
        StoreOp::Apply(id, changes) => {
            if !store.apply(&id, &changes).await? {
                return Err(Error::new(ErrorKind::SessionEnded));
            }
            None
        }
        StoreOp::Delete(id) => {
            store.delete(&id).await?;
            None
        }
    };
    let config = &shared.config;
    let set = |id: &SessionId, expires: Option<u64>, stamp: Option<String>| {
        let value = backend.id_value(&config.name, id, stamp.as_deref());
        vec![cookie::set_cookie(
            config,
            &config.name,
            &value,
            expires,
            config.now(),
        )]
    };
    if let Some((id, expires, stamp)) = created {
        return Ok(set(&id, expires, stamp));
    }
    Ok(match plan.cookie {
        CookieAction::None => Vec::new(),
        CookieAction::Remove => vec![cookie::removal_cookie(config, &config.name)],
        CookieAction::Rewrite { id, expires, stamp } => set(&id, expires, stamp),
    })
}

async fn create(backend: &StoreBackend, record: &Record) -> Result<SessionId, Error> {
    for _ in 0..CREATE_ATTEMPTS {
        let id = SessionId::generate();
        if backend.store.create(&id, record).await? {
            return Ok(id);
        }
        tracing::warn!("session id collision; drawing another");
    }
    Err(Error::store(
        "no free session id after several random draws",
    ))
}

/// Adds what the session token travels in (`Cookie`, the token header,
/// `Authorization`) to `Vary`, each unless it (or `*`) is already there, so
/// caches never serve one user's page to another.
fn add_vary(headers: &mut HeaderMap, transport: &Transport) {
    if transport.cookies() {
        add_vary_name(headers, "Cookie");
    }
    if let Some(name) = transport.request_header() {
        add_vary_name(headers, name.as_str());
    }
}

fn add_vary_name(headers: &mut HeaderMap, name: &str) {
    let present = headers.get_all(VARY).iter().any(|value| {
        value.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|token| token.trim() == "*" || token.trim().eq_ignore_ascii_case(name))
        })
    });
    if !present {
        headers.append(VARY, header_value(name.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn vary_is_added_once() {
        let cookie = Transport::Cookie;
        let mut headers = HeaderMap::new();
        add_vary(&mut headers, &cookie);
        add_vary(&mut headers, &cookie);
        assert_eq!(headers.get_all(VARY).iter().count(), 1);

        let mut headers = HeaderMap::new();
        headers.insert(VARY, HeaderValue::from_static("Accept-Encoding, cookie"));
        add_vary(&mut headers, &cookie);
        assert_eq!(headers.get_all(VARY).iter().count(), 1);

        let mut headers = HeaderMap::new();
        headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
        add_vary(&mut headers, &cookie);
        let all: Vec<_> = headers.get_all(VARY).iter().collect();
        assert_eq!(all, ["Accept-Encoding", "Cookie"]);

        let both = Transport::HeaderOrCookie(http::HeaderName::from_static("x-session-token"));
        let mut headers = HeaderMap::new();
        add_vary(&mut headers, &both);
        add_vary(&mut headers, &both);
        let all: Vec<_> = headers.get_all(VARY).iter().collect();
        assert_eq!(all, ["Cookie", "x-session-token"]);

        let bearer = Transport::Bearer(http::HeaderName::from_static("x-session-token"));
        let mut headers = HeaderMap::new();
        add_vary(&mut headers, &bearer);
        let all: Vec<_> = headers.get_all(VARY).iter().collect();
        assert_eq!(all, ["authorization"]);
    }
}
