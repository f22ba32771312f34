//! Failure drills of the SDK in headless Chromium, under `tidewire-harness` (which starts the
//! server, the chaos proxy and the control API and sets the URLs below at compile time):
//!
//! - Drill 3, duplicated and reordered delivery: the harness's chaos proxy duplicates and
//!   reorders the events of the SSE stream / WebSocket from a seed; the room listener must see
//!   each `(room, seq)` once, in increasing order, everything written must be covered (by
//!   events or a re-fetched snapshot), and the room must end equal to the REST snapshot.
//! - Drill 4, client clock skew: `Date.now` moved days forward and back, before the client is
//!   created and while it runs (across server restarts and a pending optimistic write).
//!
//! `TIDEWIRE_DRILLS_FULL=1` (at build time) selects the full sizes; `TIDEWIRE_DRILL_SEED`
//! replays a chaos run. Each drill prints its counts with `console_log!` (shown with
//! `wasm-pack test … -- --nocapture`).
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use gloo_timers::future::TimeoutFuture;
use serde_json::{json, Value};
use tidewire_client::protocol::Envelope;
use tidewire_client::state::{ConnState, TransportKind};
use tidewire_client::{http, Cause, Client, LocalCause, Options, Room, StateChange, Subscription};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const URL: &str = match option_env!("TIDEWIRE_TEST_URL") {
    Some(u) => u,
    None => "http://127.0.0.1:18080",
};
const CTL: &str = match option_env!("TIDEWIRE_CTL_URL") {
    Some(u) => u,
    None => "http://127.0.0.1:18081",
};
const CHAOS: &str = match option_env!("TIDEWIRE_CHAOS_URL") {
    Some(u) => u,
    None => "http://127.0.0.1:18083",
};

fn full() -> bool {
    option_env!("TIDEWIRE_DRILLS_FULL") == Some("1")
}

thread_local! {
    static BUSY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs the drills one at a time: the clock drill restarts the server and changes `Date.now`.
struct Serial;

async fn serial() -> Serial {
    while BUSY.with(|b| b.replace(true)) {
        TimeoutFuture::new(20).await;
    }
    Serial
}

impl Drop for Serial {
    fn drop(&mut self) {
        BUSY.with(|b| b.set(false));
    }
}

/// The page's monotonic clock: the drills' own waits must not follow a skewed `Date.now`.
fn mono_ms() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .expect("performance")
        .now()
}

/// Polls `cond` every 20 ms for at most `ms` (monotonic time).
async fn wait_until(ms: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = mono_ms() + ms as f64;
    loop {
        if cond() {
            return true;
        }
        if mono_ms() > deadline {
            return false;
        }
        TimeoutFuture::new(20).await;
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        mono_ms() as u64,
        (js_sys::Math::random() * 1e9) as u64
    )
}

async fn fetch(method: &str, url: &str) -> web_sys::Response {
    let window = web_sys::window().unwrap();
    let init = web_sys::RequestInit::new();
    init.set_method(method);
    let resp = JsFuture::from(window.fetch_with_str_and_init(url, &init))
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e:?}"));
    resp.dyn_into().unwrap()
}

async fn ctl(path: &str) {
    let resp = fetch("POST", &format!("{CTL}{path}")).await;
    assert!(resp.ok(), "control {path} failed: {}", resp.status());
}

fn options(url: &str, transport: Option<TransportKind>) -> Options {
    let mut o = Options::new(url);
    o.transport = transport;
    o.backoff.base_ms = 100;
    o.backoff.cap_ms = 1_000;
    o
}

/// A write straight to the server (not through the client or the chaos proxy), retried while
/// the server restarts.
async fn server_put(room: &str, id: &str, value: Value) -> Envelope {
    let key = unique("k");
    for _ in 0..200 {
        match http::put(&http::Endpoint::new(URL), room, id, &value, &key, None).await {
            Ok(env) => return env,
            Err(e) if e.is_retryable() => TimeoutFuture::new(50).await,
            Err(e) => panic!("server put failed: {e}"),
        }
    }
    panic!("server put never succeeded");
}

/// What a room listener saw: event seqs in order and the seqs of loaded snapshots.
#[derive(Default)]
struct Seen {
    events: Vec<u64>,
    snapshots: Vec<u64>,
}

fn listen(room: &Room) -> (Rc<RefCell<Seen>>, Subscription) {
    let seen = Rc::new(RefCell::new(Seen::default()));
    let s = seen.clone();
    let sub = room.subscribe(move |u| match &u.event {
        Cause::Event(e) => s.borrow_mut().events.push(e.seq.unwrap_or(0)),
        Cause::Local(LocalCause::Snapshot { seq, .. }) => s.borrow_mut().snapshots.push(*seq),
        _ => {}
    });
    (seen, sub)
}

/// The room's items as (id, value, version), and whether any is still pending.
fn state_of(room: &Room) -> (Vec<(String, Value, u64)>, bool) {
    let items = room.items();
    let pending = items.iter().any(|i| i.pending);
    let mut v: Vec<_> = items
        .into_iter()
        .map(|i| (i.id, i.value, i.version))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    (v, pending)
}

/// Writes `n` more items straight to the server (item `i<k>` holds `k`, the event's expected
/// seq) and waits until `room` has applied them; answers the new count of writes.
async fn put_and_see(room: &Room, name: &str, written: u64, n: u64) -> u64 {
    let target = written + n;
    for k in written + 1..=target {
        server_put(name, &format!("i{k}"), json!(k)).await;
    }
    assert!(
        wait_until(5_000, || room.seq() == target).await,
        "seq {}",
        room.seq()
    );
    target
}

async fn rest_state(room: &str) -> Vec<(String, Value, u64)> {
    let snap = http::snapshot(&http::Endpoint::new(URL), room)
        .await
        .expect("REST snapshot");
    snap.items
        .into_iter()
        .map(|(id, i)| (id, i.value, i.version))
        .collect()
}

/// The account of one room's listener against `1..=written`.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    /// Distinct seqs delivered as events.
    delivered: usize,
    /// Seqs not delivered as events but covered by a loaded snapshot.
    via_snapshot: usize,
    /// Seqs neither delivered nor covered by a snapshot.
    lost: usize,
    /// Events whose seq was seen before.
    duplicated: usize,
    /// Events not above the one before (twice or backwards).
    out_of_order: usize,
}

impl Tally {
    fn of(seen: &Seen, written: u64) -> Tally {
        let events: BTreeSet<u64> = seen.events.iter().copied().collect();
        let by_snapshot = seen.snapshots.iter().copied().max().unwrap_or(0);
        let not_events = || (1..=written).filter(|s| !events.contains(s));
        Tally {
            delivered: events.len(),
            via_snapshot: not_events().filter(|s| *s <= by_snapshot).count(),
            lost: not_events().filter(|s| *s > by_snapshot).count(),
            duplicated: seen.events.len() - events.len(),
            out_of_order: seen.events.windows(2).filter(|w| w[0] >= w[1]).count(),
        }
    }

    fn add(self, o: Tally) -> Tally {
        Tally {
            delivered: self.delivered + o.delivered,
            via_snapshot: self.via_snapshot + o.via_snapshot,
            lost: self.lost + o.lost,
            duplicated: self.duplicated + o.duplicated,
            out_of_order: self.out_of_order + o.out_of_order,
        }
    }
}

fn seed(offset: u64) -> u64 {
    option_env!("TIDEWIRE_DRILL_SEED")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| js_sys::Date::now() as u64 % 1_000_000_007)
        + offset
}

async fn chaos_stats(seed: u64) -> Value {
    let resp = fetch("GET", &format!("{CHAOS}/stats/{seed}")).await;
    let text = JsFuture::from(resp.text().unwrap()).await.unwrap();
    serde_json::from_str(&text.as_string().unwrap()).expect("chaos stats JSON")
}

/// Drill 3 over one transport: two rooms on one connection through the chaos proxy; most
/// writes go straight to the server, every tenth through the client (optimistic, confirmed by
/// its answer and again by the shuffled stream).
async fn duplicated_and_reordered(kind: TransportKind, seed: u64) {
    let per_room: u64 = if full() { 500 } else { 40 };
    let label = format!("drill chaos {}", kind.as_str());
    console_log!("[{label}] seed {seed} (replay with TIDEWIRE_DRILL_SEED={seed})");
    let mut o = options(&format!("{CHAOS}/seed/{seed}"), Some(kind));
    // Shorter than the longest hold of the proxy (150 ms): some gaps do not fill in time and
    // the room re-fetches its snapshot; the held events that come after it must be dropped.
    o.reorder_ms = 100;
    let client = Client::new(o).unwrap();
    let states = Rc::new(RefCell::new(Vec::<StateChange>::new()));
    let st = states.clone();
    let _states = client.on_state(move |c| st.borrow_mut().push(c.clone()));
    let names = [unique("chaos-a"), unique("chaos-b")];
    let rooms: Vec<_> = names.iter().map(|n| client.room(n).unwrap()).collect();
    let listeners: Vec<_> = rooms.iter().map(listen).collect();
    assert!(
        wait_until(10_000, || client.state() == ConnState::Open).await,
        "{label}: never opened: {:?}",
        client.state()
    );
    assert_eq!(client.transport(), Some(kind));
    let mut sent = 0u64;
    let mut acked = 0u64;
    for i in 0..per_room {
        for (r, name) in names.iter().enumerate() {
            sent += 1;
            let value = json!({"i": i, "room": r});
            let id = format!("item-{}", i % 7);
            if i % 10 == 9 {
                rooms[r].put(&id, value).await.expect("client write");
            } else {
                server_put(name, &id, value).await;
            }
            acked += 1;
        }
        if i % 5 == 4 {
            // Let events go out in several frames, so the proxy has something to reorder.
            TimeoutFuture::new(5).await;
        }
    }
    let done = wait_until(20_000, || rooms.iter().all(|r| r.seq() == per_room)).await;
    assert!(
        done,
        "{label}: rooms at {:?} of {per_room}",
        rooms.iter().map(|r| r.seq()).collect::<Vec<_>>()
    );
    // A moment for late duplicates from the proxy to arrive (and be dropped).
    TimeoutFuture::new(400).await;
    let mut total = Tally::default();
    let mut per_name = Vec::new();
    for (r, name) in names.iter().enumerate() {
        let t = Tally::of(&listeners[r].0.borrow(), per_room);
        total = total.add(t);
        per_name.push((name, t, listeners[r].0.borrow().events.clone()));
    }
    let stats = chaos_stats(seed).await;
    let snapshots: usize = listeners.iter().map(|l| l.0.borrow().snapshots.len()).sum();
    console_log!(
        "[{label}] sent={sent} acknowledged={acked} delivered={} (+{} by a re-fetched snapshot; \
         {snapshots} snapshot loads) lost={} duplicated={} out_of_order={}; proxy: {stats}; \
         client states: {:?}",
        total.delivered,
        total.via_snapshot,
        total.lost,
        total.duplicated,
        total.out_of_order,
        states
            .borrow()
            .iter()
            .map(|c| format!("{:?}", c.state))
            .collect::<Vec<_>>()
    );
    for (name, t, events) in &per_name {
        assert!(
            t.lost == 0 && t.duplicated == 0 && t.out_of_order == 0,
            "{label} {name}: {t:?}, events {events:?}"
        );
    }
    for (r, name) in names.iter().enumerate() {
        let (state, pending) = state_of(&rooms[r]);
        assert!(!pending, "{label}: a write is still pending");
        assert_eq!(
            state,
            rest_state(name).await,
            "{label}: room state = REST snapshot"
        );
    }
    assert!(
        stats["duplicated"].as_u64().unwrap_or(0) > 0 && stats["delayed"].as_u64().unwrap_or(0) > 0,
        "{label}: the proxy duplicated and delayed nothing: {stats}"
    );
    client.close();
}

#[wasm_bindgen_test]
async fn duplicated_and_reordered_sse_events_apply_once_in_order() {
    let _serial = serial().await;
    duplicated_and_reordered(TransportKind::Sse, seed(0)).await;
}

#[wasm_bindgen_test]
async fn duplicated_and_reordered_websocket_events_apply_once_in_order() {
    let _serial = serial().await;
    duplicated_and_reordered(TransportKind::Ws, seed(1)).await;
}

const DAY_MS: f64 = 86_400_000.0;

/// Moves the page's `Date.now` by `offset_ms` from the real clock; [`Skew`]'s drop restores it.
struct Skew;

impl Skew {
    fn set(offset_ms: f64) -> Skew {
        js_sys::eval(&format!(
            "(function() {{ if (!Date.__tidewireRealNow) {{ Date.__tidewireRealNow = Date.now; }} \
             const real = Date.__tidewireRealNow; Date.now = function() {{ return real() + ({offset_ms}); }}; }})()"
        ))
        .expect("Date.now overridden");
        Skew
    }
}

impl Drop for Skew {
    fn drop(&mut self) {
        let _ = js_sys::eval(
            "if (Date.__tidewireRealNow) { Date.now = Date.__tidewireRealNow; delete Date.__tidewireRealNow; }",
        );
    }
}

/// Drill 4: `Date.now` three days ahead when the client is created, then two days behind,
/// four ahead and four behind while it runs, across a server restart and an outage with a
/// pending optimistic write.
#[wasm_bindgen_test]
async fn client_clock_skew_changes_nothing() {
    let _serial = serial().await;
    let label = "drill clock skew";
    let real = js_sys::Date::now();
    let skew = Skew::set(3.0 * DAY_MS);
    assert!(
        js_sys::Date::now() - real > 2.9 * DAY_MS,
        "Date.now is skewed"
    );
    let cap_ms = 1_000u64;
    let client = Client::new(options(URL, Some(TransportKind::Sse))).unwrap();
    let states = Rc::new(RefCell::new(Vec::<(f64, StateChange)>::new()));
    let st = states.clone();
    let _s = client.on_state(move |c| st.borrow_mut().push((mono_ms(), c.clone())));
    let name = unique("skew");
    let room = client.room(&name).unwrap();
    let (seen, _l) = listen(&room);
    let rollbacks = Rc::new(RefCell::new(Vec::new()));
    let rb = rollbacks.clone();
    let _r = room.on_rollback(move |r| rb.borrow_mut().push(r.clone()));
    assert!(
        wait_until(10_000, || client.state() == ConnState::Open).await,
        "{label}: never opened with the clock 3 days ahead: {:?}",
        client.state()
    );
    let mut written = 0u64;
    written = put_and_see(&room, &name, written, 10).await;

    // The clock jumps five days back while the connection is open; then the server restarts.
    drop(skew);
    let skew = Skew::set(-2.0 * DAY_MS);
    written = put_and_see(&room, &name, written, 5).await;
    ctl("/restart").await;
    assert!(
        wait_until(10_000, || client.state() == ConnState::Open
            && states.borrow().iter().any(|(_, c)| matches!(
                c.state,
                ConnState::Reconnecting { .. }
            )))
        .await,
        "{label}: no reconnect after the restart with the clock 2 days behind: {:?}",
        client.state()
    );
    written = put_and_see(&room, &name, written, 5).await;

    // An outage: the server stops, an optimistic write is made, and the clock jumps four days
    // ahead and then eight days back while the client waits between attempts.
    let stopped_at = mono_ms();
    ctl("/stop").await;
    assert!(
        wait_until(5_000, || matches!(
            client.state(),
            ConnState::Reconnecting { .. }
        ))
        .await,
        "{label}: the stop was not noticed: {:?}",
        client.state()
    );
    let write = room.put("mine", json!({"made": "during the skew"}));
    assert!(
        room.items().iter().any(|i| i.id == "mine" && i.pending),
        "shown as pending"
    );
    drop(skew);
    let skew = Skew::set(4.0 * DAY_MS);
    TimeoutFuture::new(1_500).await;
    drop(skew);
    let _skew = Skew::set(-4.0 * DAY_MS);
    TimeoutFuture::new(500).await;
    let restarted_at = mono_ms();
    ctl("/start").await;
    assert!(
        wait_until(10_000, || client.state() == ConnState::Open).await,
        "{label}: did not reconnect after the clock jumped back: {:?}",
        client.state()
    );
    let reopened_after = mono_ms() - restarted_at;
    let env = write.await.expect("the optimistic write is confirmed");
    written += 1;
    assert_eq!(env.seq, Some(written), "the write is the next event");
    written = put_and_see(&room, &name, written, 5).await;
    TimeoutFuture::new(300).await;

    // Order: every event once, in order, none lost.
    let events = seen.borrow().events.clone();
    let tally = Tally::of(&seen.borrow(), written);
    assert_eq!(
        events,
        (1..=written).collect::<Vec<_>>(),
        "{label}: events in order, once"
    );
    // The write: confirmed once, never rolled back, not pending, equal to the server's state.
    let mine = events
        .iter()
        .filter(|s| **s == env.seq.unwrap_or(0))
        .count();
    assert_eq!(mine, 1, "the write's event applied once");
    assert!(
        rollbacks.borrow().is_empty(),
        "rolled back: {:?}",
        rollbacks.borrow()
    );
    let (state, pending) = state_of(&room);
    assert!(!pending, "the write is still pending");
    assert_eq!(state, rest_state(&name).await, "room state = REST snapshot");
    // Backoff: every announced delay within the cap, and the attempts really that close in
    // monotonic time (an attempt fails fast while the server is down).
    // A copy: the client may still emit while the drill checks.
    let states = states.borrow().clone();
    let reconnecting: Vec<(f64, u64)> = states
        .iter()
        .filter_map(|(t, c)| match c.state {
            ConnState::Reconnecting { delay_ms, .. } => Some((*t, delay_ms)),
            _ => None,
        })
        .collect();
    let delays: Vec<u64> = reconnecting.iter().map(|(_, d)| *d).collect();
    let longest_gap = reconnecting
        .iter()
        .filter(|(t, _)| *t >= stopped_at && *t <= restarted_at)
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .fold(0.0, f64::max);
    console_log!(
        "[{label}] sent={written} acknowledged={written} delivered={} lost={} duplicated={}; \
         reconnecting delays {delays:?} ms (cap {cap_ms}), longest gap between attempts \
         {longest_gap:.0} ms, reopened {reopened_after:.0} ms after the server came back",
        tally.delivered,
        tally.lost,
        tally.duplicated
    );
    // The first delay after an SSE stream ends is the server's `retry:` floor (its default,
    // 1,000 ms) plus the jittered backoff; every later one is within the cap.
    const SSE_RETRY_FLOOR_MS: u64 = 1_000;
    assert!(
        delays.iter().all(|d| *d <= cap_ms + SSE_RETRY_FLOOR_MS),
        "{label}: a delay over the retry floor + cap: {delays:?}"
    );
    assert!(
        delays.iter().filter(|d| **d > cap_ms).count() <= 2,
        "{label}: only a reconnect right after a stream ended may exceed the cap: {delays:?}"
    );
    assert!(
        delays.len() >= 3,
        "{label}: too few reconnect attempts seen: {delays:?}"
    );
    // Bounded by the cap plus the time a refused attempt takes (generous): a wait measured
    // with a clock that jumped back would last days.
    assert!(
        longest_gap <= (cap_ms + SSE_RETRY_FLOOR_MS + 4_000) as f64,
        "{label}: {longest_gap:.0} ms between two attempts during the outage (cap {cap_ms} ms)"
    );
    client.close();
}
