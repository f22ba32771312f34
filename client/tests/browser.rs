//! Browser tests of the client against a real server, run in headless Chromium by
//! `wasm-pack test --headless --chrome client` under `tidewire-harness`, which starts the
//! server and sets the URLs below (read at compile time).
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;

use gloo_timers::future::TimeoutFuture;
use serde_json::{json, Value};
use tidewire_client::protocol::Envelope;
use tidewire_client::state::{ConnState, TransportKind};
use tidewire_client::{http, Cause, Client, Error, LocalCause, Options, StateChange};
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
const PROXY: &str = match option_env!("TIDEWIRE_PROXY_URL") {
    Some(u) => u,
    None => "http://127.0.0.1:18082",
};

thread_local! {
    static BUSY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs the tests one at a time: the restart and stall tests disturb every connection.
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

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        js_sys::Date::now() as u64,
        (js_sys::Math::random() * 1e9) as u64
    )
}

async fn ctl(path: &str) {
    let window = web_sys::window().unwrap();
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    let resp = JsFuture::from(window.fetch_with_str_and_init(&format!("{CTL}{path}"), &init))
        .await
        .expect("the harness control API answers");
    let resp: web_sys::Response = resp.dyn_into().unwrap();
    assert!(resp.ok(), "control {path} failed: {}", resp.status());
}

/// Polls `cond` every 20 ms for at most `ms`.
async fn wait_until(ms: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = js_sys::Date::now() + ms as f64;
    loop {
        if cond() {
            return true;
        }
        if js_sys::Date::now() > deadline {
            return false;
        }
        TimeoutFuture::new(20).await;
    }
}

fn options(url: &str, transport: Option<TransportKind>) -> Options {
    let mut o = Options::new(url);
    o.transport = transport;
    o.backoff.base_ms = 100;
    o.backoff.cap_ms = 1_000;
    o
}

fn record_states(
    client: &Client,
) -> (Rc<RefCell<Vec<StateChange>>>, tidewire_client::Subscription) {
    let states = Rc::new(RefCell::new(Vec::new()));
    let s = states.clone();
    let sub = client.on_state(move |c| s.borrow_mut().push(c.clone()));
    (states, sub)
}

/// A write straight to the server (not through the client), retried while the server restarts.
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

async fn connects_over(kind: TransportKind) {
    let mut o = options(URL, Some(kind));
    o.poll_interval_ms = 200;
    let client = Client::new(o).unwrap();
    let name = unique(kind.as_str());
    let room = client.room(&name).unwrap();
    assert!(
        wait_until(5_000, || client.state() == ConnState::Open).await,
        "{kind:?} never opened: {:?}",
        client.state()
    );
    assert_eq!(client.transport(), Some(kind));
    server_put(&name, "a", json!({"via": kind.as_str()})).await;
    assert!(
        wait_until(5_000, || room.items().iter().any(|i| i.id == "a")).await,
        "{kind:?} did not deliver the write"
    );
    assert_eq!(room.items()[0].version, 1);
    assert_eq!(client.seq(&name), Some(1));
    // Bad input is a typed error, never a panic.
    assert_eq!(
        client.room("no spaces").err().unwrap().code(),
        "bad_room_name"
    );
    let err = room.put("bad id!", json!(1)).await.unwrap_err();
    assert_eq!(err.code(), "bad_item_id");
    assert!(
        room.items().iter().all(|i| !i.pending),
        "a refused write leaves nothing pending"
    );
    client.close();
    assert_eq!(client.state(), ConnState::Closed);
    assert_eq!(room.put("b", json!(1)).await.unwrap_err().code(), "closed");
    assert_eq!(client.room("other").err().unwrap().code(), "closed");
}

#[wasm_bindgen_test]
async fn connects_over_sse() {
    let _serial = serial().await;
    connects_over(TransportKind::Sse).await;
}

#[wasm_bindgen_test]
async fn connects_over_websocket() {
    let _serial = serial().await;
    connects_over(TransportKind::Ws).await;
}

#[wasm_bindgen_test]
async fn connects_over_long_poll() {
    let _serial = serial().await;
    connects_over(TransportKind::LongPoll).await;
}

#[wasm_bindgen_test]
async fn connects_over_snapshot_polling() {
    let _serial = serial().await;
    connects_over(TransportKind::Poll).await;
}

#[wasm_bindgen_test]
async fn resumes_after_server_restart_without_loss_or_duplicates() {
    let _serial = serial().await;
    let client = Client::new(options(URL, None)).unwrap();
    let (states, _s) = record_states(&client);
    let name = unique("restart");
    let room = client.room(&name).unwrap();
    let seqs = Rc::new(RefCell::new(Vec::<u64>::new()));
    let s = seqs.clone();
    let _u = room.subscribe(move |u| {
        if let Cause::Event(env) = &u.event {
            s.borrow_mut().push(env.seq.unwrap());
        }
    });
    assert!(wait_until(5_000, || client.state() == ConnState::Open).await);
    for i in 0..15 {
        server_put(&name, &format!("i{i}"), json!(i)).await;
    }
    assert!(
        wait_until(5_000, || room.seq() == 15).await,
        "seq {}",
        room.seq()
    );
    ctl("/restart").await;
    for i in 15..30 {
        server_put(&name, &format!("i{i}"), json!(i)).await;
    }
    assert!(
        wait_until(15_000, || room.seq() == 30).await,
        "after restart: seq {}",
        room.seq()
    );
    assert_eq!(*seqs.borrow(), (1..=30).collect::<Vec<u64>>());
    assert_eq!(room.items().len(), 30);
    assert!(
        states
            .borrow()
            .iter()
            .any(|c| matches!(c.state, ConnState::Reconnecting { .. })),
        "the restart was seen as a reconnect: {:?}",
        states.borrow()
    );
    assert!(wait_until(5_000, || client.state() == ConnState::Open).await);
    client.close();
}

#[wasm_bindgen_test]
async fn stalled_sse_falls_back_to_long_poll_and_climbs_back() {
    let _serial = serial().await;
    ctl("/sse-stall?on=1").await;
    let mut o = options(PROXY, None);
    o.open_timeout_ms = 1_500;
    o.climb_ms = 2_000;
    o.long_poll_wait_secs = 2;
    let client = Client::new(o).unwrap();
    let name = unique("stall");
    let room = client.room(&name).unwrap();
    let degraded = wait_until(8_000, || {
        client.state() == ConnState::Degraded && client.transport() == Some(TransportKind::LongPoll)
    })
    .await;
    if !degraded {
        ctl("/sse-stall?on=0").await;
        panic!("no fallback: {:?} {:?}", client.state(), client.transport());
    }
    server_put(&name, "lp", json!(1)).await;
    assert!(
        wait_until(5_000, || room.seq() == 1).await,
        "long-poll delivers"
    );
    ctl("/sse-stall?on=0").await;
    assert!(
        wait_until(10_000, || client.state() == ConnState::Open
            && client.transport() == Some(TransportKind::Sse))
        .await,
        "climbed back: {:?} {:?}",
        client.state(),
        client.transport()
    );
    server_put(&name, "sse", json!(2)).await;
    assert!(wait_until(5_000, || room.seq() == 2).await, "SSE delivers");
    assert_eq!(room.items().len(), 2);
    client.close();
}

#[wasm_bindgen_test]
async fn optimistic_put_is_pending_then_confirmed() {
    let _serial = serial().await;
    optimistic_put(None).await;
}

#[wasm_bindgen_test]
async fn optimistic_put_over_websocket_is_confirmed_by_its_ack() {
    let _serial = serial().await;
    optimistic_put(Some(TransportKind::Ws)).await;
}

async fn optimistic_put(transport: Option<TransportKind>) {
    let client = Client::new(options(URL, transport)).unwrap();
    let name = unique("opt");
    let room = client.room(&name).unwrap();
    let updates = Rc::new(RefCell::new(Vec::new()));
    let u = updates.clone();
    let _s = room.subscribe(move |up| u.borrow_mut().push(up.clone()));
    assert!(wait_until(5_000, || client.state() == ConnState::Open).await);
    let write = room.put("slot-1", json!({"free": false}));
    let shown = room.items();
    assert_eq!(shown.len(), 1, "shown before the write is sent");
    assert!(shown[0].pending);
    let env = write.await.unwrap();
    assert_eq!(env.seq, Some(1));
    {
        let ups = updates.borrow();
        let pending = ups
            .iter()
            .find(|u| matches!(u.event, Cause::Local(LocalCause::Pending { .. })))
            .expect("a pending update");
        assert_eq!(pending.items.len(), 1);
        assert!(pending.items[0].pending, "shown at once as pending");
        assert_eq!(pending.items[0].value, json!({"free": false}));
    }
    let items = room.items();
    assert_eq!(items.len(), 1);
    assert!(!items[0].pending);
    assert_eq!(items[0].version, 1);
    // The stream's copy of the same event is a duplicate: applied once.
    TimeoutFuture::new(300).await;
    let applied = updates
        .borrow()
        .iter()
        .filter(|u| matches!(&u.event, Cause::Event(e) if e.seq == Some(1)))
        .count();
    assert_eq!(applied, 1);
    client.close();
}

#[wasm_bindgen_test]
async fn stale_put_rolls_back_with_the_server_value() {
    let _serial = serial().await;
    stale_put(None).await;
}

#[wasm_bindgen_test]
async fn stale_put_over_websocket_rolls_back_with_the_server_value() {
    let _serial = serial().await;
    stale_put(Some(TransportKind::Ws)).await;
}

async fn stale_put(transport: Option<TransportKind>) {
    let client = Client::new(options(URL, transport)).unwrap();
    let name = unique("stale");
    server_put(&name, "x", json!("first")).await;
    let room = client.room(&name).unwrap();
    let rollbacks = Rc::new(RefCell::new(Vec::new()));
    let r = rollbacks.clone();
    let _s = room.on_rollback(move |rb| r.borrow_mut().push(rb.clone()));
    assert!(wait_until(5_000, || room.seq() == 1).await);
    server_put(&name, "x", json!("second")).await;
    let err = room
        .put_if("x", json!("mine"), Some(1))
        .await
        .expect_err("stale If-Match is refused");
    assert_eq!(err.code(), "version_conflict");
    let expected_status = if transport == Some(TransportKind::Ws) {
        0
    } else {
        409
    };
    match &err {
        Error::Server { status, .. } => assert_eq!(*status, expected_status),
        other => panic!("{other:?}"),
    }
    {
        let rb = rollbacks.borrow();
        assert_eq!(rb.len(), 1);
        assert_eq!(rb[0].id, "x");
        assert_eq!(rb[0].value, json!("second"));
        assert_eq!(rb[0].version, Some(2));
        assert_eq!(rb[0].error.code, "version_conflict");
    }
    assert!(wait_until(5_000, || room.seq() == 2).await);
    let items = room.items();
    assert_eq!(items[0].value, json!("second"));
    assert!(!items[0].pending);
    client.close();
}

fn fake_put(room: &str, seq: u64, id: &str, version: u64) -> Envelope {
    let text = json!({"v":1,"type":"item.put","room":room,"seq":seq,"id":format!("e{seq}"),
        "ts":"2026-01-01T00:00:00.000Z","key":null,"data":{"id":id,"value":seq,"version":version}})
    .to_string();
    Envelope::decode(&text).unwrap()
}

#[wasm_bindgen_test]
async fn duplicate_and_out_of_order_events_apply_once_in_order() {
    let _serial = serial().await;
    let mut o = options(URL, Some(TransportKind::Poll));
    o.poll_interval_ms = 60_000;
    o.reorder_ms = 5_000;
    let client = Client::new(o).unwrap();
    let name = unique("order");
    let room = client.room(&name).unwrap();
    assert!(wait_until(5_000, || client.state() == ConnState::Open).await);
    let applied = Rc::new(RefCell::new(Vec::new()));
    let a = applied.clone();
    let _s = room.subscribe(move |u| {
        if let Cause::Event(e) = &u.event {
            a.borrow_mut().push(e.seq.unwrap());
        }
    });
    for seq in [3, 1, 2, 2, 1, 3, 4, 4] {
        room.feed(fake_put(&name, seq, "a", seq));
    }
    assert_eq!(*applied.borrow(), vec![1, 2, 3, 4]);
    assert_eq!(room.seq(), 4);
    assert_eq!(room.items()[0].value, json!(4));
    client.close();
}

#[wasm_bindgen_test]
async fn a_gap_that_does_not_fill_refetches_the_snapshot() {
    let _serial = serial().await;
    let mut o = options(URL, Some(TransportKind::Poll));
    o.poll_interval_ms = 60_000;
    o.reorder_ms = 300;
    let client = Client::new(o).unwrap();
    let name = unique("gap");
    let room = client.room(&name).unwrap();
    let snapshots = Rc::new(RefCell::new(Vec::new()));
    let s = snapshots.clone();
    let _s = room.subscribe(move |u| {
        if let Cause::Local(LocalCause::Snapshot { seq, .. }) = &u.event {
            s.borrow_mut().push(*seq);
        }
    });
    assert!(wait_until(5_000, || client.state() == ConnState::Open).await);
    assert_eq!(*snapshots.borrow(), vec![0]);
    // The client misses seq 1 and only sees seq 2: the gap cannot fill.
    server_put(&name, "a", json!(1)).await;
    let second = server_put(&name, "b", json!(2)).await;
    room.feed(second);
    assert_eq!(room.seq(), 0, "buffered, not applied");
    assert!(
        wait_until(3_000, || room.seq() == 2).await,
        "the snapshot was re-fetched"
    );
    assert_eq!(*snapshots.borrow(), vec![0, 2]);
    let ids: Vec<String> = room.items().into_iter().map(|i| i.id).collect();
    assert_eq!(ids, vec!["a", "b"]);
    client.close();
}

#[wasm_bindgen_test]
async fn backoff_delays_grow_jittered_and_capped() {
    let _serial = serial().await;
    let randoms = [0.99, 0.5, 0.99, 0.25, 0.99, 0.99, 0.0];
    let mut i = 0;
    let mut o = options("http://127.0.0.1:9", Some(TransportKind::Sse));
    o.backoff.base_ms = 40;
    o.backoff.cap_ms = 200;
    o.random = Some(Box::new(move || {
        let r = randoms[i % randoms.len()];
        i += 1;
        r
    }));
    let client = Client::new(o).unwrap();
    let (states, _s) = record_states(&client);
    let _room = client.room("backoff").unwrap();
    let delays = || {
        states
            .borrow()
            .iter()
            .filter_map(|c| match c.state {
                ConnState::Reconnecting { attempt, delay_ms } => Some((attempt, delay_ms)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(8_000, || delays().len() >= 7).await,
        "{:?}",
        delays()
    );
    // Windows 40, 80, 160, 200 (cap), 200 …; delay = floor(random * window).
    assert_eq!(
        delays()[..7],
        [
            (1, 39),
            (2, 40),
            (3, 158),
            (4, 50),
            (5, 198),
            (6, 198),
            (7, 0)
        ]
    );
    client.close();
    let n = delays().len();
    TimeoutFuture::new(300).await;
    assert_eq!(delays().len(), n, "nothing happens after close");
}

#[wasm_bindgen_test]
async fn presence_and_broadcast_over_websocket() {
    let _serial = serial().await;
    let a = Client::new(options(URL, None)).unwrap();
    let b = Client::new(options(URL, None)).unwrap();
    let name = unique("presence");
    let ra = a.room(&name).unwrap();
    let rb = b.room(&name).unwrap();
    let got = Rc::new(RefCell::new(Vec::new()));
    let g = got.clone();
    let _s = ra.on_broadcast(move |m| g.borrow_mut().push(m.clone()));
    ra.join(json!({"name": "Ada"})).unwrap();
    rb.join(json!({"name": "Bob"})).unwrap();
    assert!(
        wait_until(8_000, || a.transport() == Some(TransportKind::Ws)
            && a.state() == ConnState::Open
            && b.transport() == Some(TransportKind::Ws)
            && b.state() == ConnState::Open)
        .await,
        "both switched to WebSocket: {:?} {:?}",
        a.transport(),
        b.transport()
    );
    assert!(
        wait_until(5_000, || ra.members().len() == 2).await,
        "members {:?}",
        ra.members()
    );
    let names: Vec<Value> = ra
        .members()
        .into_iter()
        .map(|m| m.meta["name"].clone())
        .collect();
    assert!(names.contains(&json!("Bob")));
    rb.broadcast("cursor", json!({"x": 1, "y": 2})).unwrap();
    assert!(
        wait_until(5_000, || !got.borrow().is_empty()).await,
        "broadcast arrived"
    );
    assert_eq!(got.borrow()[0].event, "cursor");
    assert_eq!(got.borrow()[0].data, json!({"x": 1, "y": 2}));
    assert_eq!(got.borrow()[0].from.as_deref(), Some(b.client_id()));
    a.close();
    b.close();
}

fn dispatch(target: &web_sys::EventTarget, name: &str) {
    let event = web_sys::Event::new(name).unwrap();
    target.dispatch_event(&event).unwrap();
}

fn is_reconnecting(c: &StateChange) -> bool {
    matches!(c.state, ConnState::Reconnecting { .. })
}

#[wasm_bindgen_test]
async fn waits_while_offline_and_reconnects_at_once_on_online_or_visible() {
    let _serial = serial().await;
    let mut o = options(URL, Some(TransportKind::Sse));
    o.backoff.base_ms = 60_000;
    o.backoff.cap_ms = 60_000;
    o.random = Some(Box::new(|| 0.5)); // every backoff delay is 30 s (above the retry floor)
    let client = Client::new(o).unwrap();
    let (states, _s) = record_states(&client);
    let name = unique("online");
    let room = client.room(&name).unwrap();
    assert!(wait_until(5_000, || client.state() == ConnState::Open).await);
    let window = web_sys::window().unwrap();

    dispatch(&window, "offline");
    assert!(wait_until(2_000, || client.state() == ConnState::Offline).await);
    server_put(&name, "a", json!(1)).await;
    TimeoutFuture::new(500).await;
    assert_eq!(room.seq(), 0, "nothing is received while offline");
    assert_eq!(
        client.state(),
        ConnState::Offline,
        "nothing is attempted while offline"
    );
    dispatch(&window, "online");
    assert!(wait_until(3_000, || client.state() == ConnState::Open).await);
    assert!(
        wait_until(3_000, || room.seq() == 1).await,
        "resumed after going online"
    );

    // A 30 s backoff wait is cut short by `online` …
    client.drop_connection();
    assert!(
        wait_until(2_000, || states
            .borrow()
            .last()
            .is_some_and(is_reconnecting))
        .await
    );
    let delay = match client.state() {
        ConnState::Reconnecting { delay_ms, .. } => delay_ms,
        other => panic!("{other:?}"),
    };
    // The stream announced `retry: 1000`: the floor, with the backoff delay above it.
    assert_eq!(delay, 1_000 + 30_000);
    dispatch(&window, "online");
    assert!(
        wait_until(3_000, || client.state() == ConnState::Open).await,
        "online reconnects at once"
    );
    // … and by the tab becoming visible.
    client.drop_connection();
    assert!(
        wait_until(2_000, || states
            .borrow()
            .last()
            .is_some_and(is_reconnecting))
        .await
    );
    dispatch(&window.document().unwrap(), "visibilitychange");
    assert!(
        wait_until(3_000, || client.state() == ConnState::Open).await,
        "visible reconnects at once"
    );
    client.close();
}

#[wasm_bindgen_test]
async fn honours_the_reconnect_hint_of_a_draining_server() {
    let _serial = serial().await;
    let mut o = options(URL, Some(TransportKind::Sse));
    o.backoff.base_ms = 2_000;
    o.backoff.cap_ms = 2_000;
    o.random = Some(Box::new(|| 0.5)); // backoff delays are 1000 ms
    let client = Client::new(o).unwrap();
    let (states, _s) = record_states(&client);
    let name = unique("drain");
    let room = client.room(&name).unwrap();
    assert!(wait_until(5_000, || client.state() == ConnState::Open).await);
    server_put(&name, "a", json!(1)).await;
    assert!(wait_until(3_000, || room.seq() == 1).await);
    ctl("/stop?graceful=1").await;
    let first = states.borrow().iter().find_map(|c| match c.state {
        ConnState::Reconnecting { delay_ms, .. } => Some(delay_ms),
        _ => None,
    });
    ctl("/start").await;
    let first = first.expect("a reconnect after the drain");
    assert!(
        first <= 300,
        "the server's retry_ms (within its 300 ms drain window) is used, not the 1000 ms backoff: {first}"
    );
    server_put(&name, "b", json!(2)).await;
    assert!(
        wait_until(5_000, || room.seq() == 2).await,
        "resumed after the restart"
    );
    client.close();
}

#[wasm_bindgen_test]
async fn one_connection_carries_every_room_and_adding_one_loses_nothing() {
    let _serial = serial().await;
    let client = Client::new(options(URL, None)).unwrap();
    let first = unique("multi-a");
    let second = unique("multi-b");
    let a = client.room(&first).unwrap();
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    let _u = a.subscribe(move |u| {
        if let Cause::Event(e) = &u.event {
            s.borrow_mut().push(e.seq.unwrap());
        }
    });
    assert!(wait_until(5_000, || client.state() == ConnState::Open).await);
    server_put(&first, "x", json!(1)).await;
    assert!(wait_until(3_000, || a.seq() == 1).await);
    // Adding a room reconnects the one SSE stream with the full cursor.
    let b = client.room(&second).unwrap();
    server_put(&first, "y", json!(2)).await;
    server_put(&second, "z", json!(3)).await;
    server_put(&first, "w", json!(4)).await;
    assert!(
        wait_until(5_000, || a.seq() == 3 && b.seq() == 1).await,
        "a {} b {}",
        a.seq(),
        b.seq()
    );
    assert_eq!(*seen.borrow(), vec![1, 2, 3]);
    assert_eq!(client.transport(), Some(TransportKind::Sse));
    assert_eq!(b.items()[0].value, json!(3));
    client.close();
}

/// The harness server's `--heartbeat-secs`, in milliseconds.
const HEARTBEAT_MS: u64 = 2_000;

#[wasm_bindgen_test]
async fn sse_frozen_after_it_opened_is_detected_by_the_heartbeat_watchdog() {
    let _serial = serial().await;
    let slack = 500;
    let mut o = options(PROXY, None);
    o.heartbeat_slack_ms = slack;
    o.open_timeout_ms = 1_500;
    o.climb_ms = 3_000;
    o.long_poll_wait_secs = 2;
    let client = Client::new(o).unwrap();
    let (states, _s) = record_states(&client);
    let name = unique("freeze");
    let room = client.room(&name).unwrap();
    let seqs = Rc::new(RefCell::new(Vec::<u64>::new()));
    let s = seqs.clone();
    let _u = room.subscribe(move |u| {
        if let Cause::Event(env) = &u.event {
            s.borrow_mut().push(env.seq.unwrap());
        }
    });
    assert!(
        wait_until(5_000, || client.state() == ConnState::Open
            && client.transport() == Some(TransportKind::Sse))
        .await
    );
    for i in 0..3 {
        server_put(&name, &format!("before{i}"), json!(i)).await;
    }
    assert!(wait_until(5_000, || room.seq() == 3).await);
    let seen_before = states.borrow().len();

    ctl("/sse-freeze?on=1").await;
    let frozen_at = js_sys::Date::now();
    for i in 0..5 {
        server_put(&name, &format!("during{i}"), json!(i)).await;
    }
    let bound = 2 * HEARTBEAT_MS + slack;
    let detected = wait_until(bound + 5_000, || {
        states.borrow().len() > seen_before && client.state() != ConnState::Open
    })
    .await;
    let after_ms = (js_sys::Date::now() - frozen_at) as u64;
    let fell_back = detected
        && wait_until(5_000, || {
            client.state() == ConnState::Degraded
                && client.transport() == Some(TransportKind::LongPoll)
        })
        .await;
    if !fell_back {
        ctl("/sse-freeze?on=0").await;
        panic!(
            "the frozen stream was not detected: {:?} {:?}",
            client.state(),
            client.transport()
        );
    }
    web_sys::console::log_1(
        &format!("frozen stream detected after {after_ms} ms (bound {bound} ms)").into(),
    );
    // The last byte came at most one heartbeat interval before the freeze.
    assert!(
        after_ms <= bound + 2_000,
        "detected after {after_ms} ms, bound {bound} ms"
    );
    assert!(
        wait_until(6_000, || room.seq() == 8).await,
        "long-poll delivers what was written during the freeze: seq {}",
        room.seq()
    );

    ctl("/sse-freeze?on=0").await;
    for i in 0..2 {
        server_put(&name, &format!("after{i}"), json!(i)).await;
    }
    assert!(
        wait_until(12_000, || client.state() == ConnState::Open
            && client.transport() == Some(TransportKind::Sse))
        .await,
        "climbed back to SSE: {:?} {:?}",
        client.state(),
        client.transport()
    );
    server_put(&name, "sse", json!(1)).await;
    assert!(
        wait_until(5_000, || room.seq() == 11).await,
        "seq {}",
        room.seq()
    );
    assert_eq!(
        *seqs.borrow(),
        (1..=11).collect::<Vec<u64>>(),
        "every event once, in order"
    );
    assert_eq!(room.items().len(), 11);
    client.close();
}

#[wasm_bindgen_test]
async fn the_sse_retry_hint_is_the_floor_of_the_next_reconnect_delay() {
    let _serial = serial().await;
    // The harness server announces the default `retry: 1000`; the backoff alone would wait
    // at most 20 ms.
    const RETRY_MS: u64 = 1_000;
    let mut o = options(URL, Some(TransportKind::Sse));
    o.backoff.base_ms = 20;
    o.backoff.cap_ms = 20;
    let client = Client::new(o).unwrap();
    let (states, _s) = record_states(&client);
    let name = unique("retry");
    let room = client.room(&name).unwrap();
    assert!(wait_until(5_000, || client.state() == ConnState::Open).await);
    server_put(&name, "a", json!(1)).await;
    assert!(wait_until(3_000, || room.seq() == 1).await);
    ctl("/restart").await;
    let delays = || {
        states
            .borrow()
            .iter()
            .filter_map(|c| match c.state {
                ConnState::Reconnecting { delay_ms, .. } => Some(delay_ms),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert!(wait_until(5_000, || !delays().is_empty()).await);
    let first = delays()[0];
    assert!(
        (RETRY_MS..RETRY_MS + 20).contains(&first),
        "retry: {RETRY_MS} plus at most the 20 ms jitter window, got {first} ({:?})",
        delays()
    );
    server_put(&name, "b", json!(2)).await;
    assert!(
        wait_until(8_000, || room.seq() == 2).await,
        "resumed after the restart"
    );
    client.close();
}

#[wasm_bindgen_test]
async fn websocket_frozen_after_it_opened_is_detected_by_its_pings() {
    let _serial = serial().await;
    let ping = 500;
    let slack = 500;
    let mut o = options(PROXY, Some(TransportKind::Ws));
    o.ws_ping_ms = ping;
    o.heartbeat_slack_ms = slack;
    o.open_timeout_ms = 2_000;
    let bound = 2 * ping + slack;
    let client = Client::new(o).unwrap();
    let (states, _s) = record_states(&client);
    let name = unique("wsfreeze");
    let room = client.room(&name).unwrap();
    let seqs = Rc::new(RefCell::new(Vec::<u64>::new()));
    let s = seqs.clone();
    let _u = room.subscribe(move |u| {
        if let Cause::Event(env) = &u.event {
            s.borrow_mut().push(env.seq.unwrap());
        }
    });
    assert!(
        wait_until(5_000, || client.state() == ConnState::Open).await,
        "the WebSocket through the proxy never opened: {:?}",
        client.state()
    );
    assert_eq!(client.transport(), Some(TransportKind::Ws));
    for i in 0..3 {
        server_put(&name, &format!("before{i}"), json!(i)).await;
    }
    assert!(wait_until(5_000, || room.seq() == 3).await);
    // Idle for well over the bound: the pongs to the client's pings keep the socket alive.
    let seen_before = states.borrow().len();
    TimeoutFuture::new((2 * bound) as u32).await;
    assert_eq!(
        states.borrow().len(),
        seen_before,
        "an idle but healthy WebSocket is not a stall: {:?}",
        &states.borrow()[seen_before..]
    );

    ctl("/ws-freeze?on=1").await;
    let frozen_at = js_sys::Date::now();
    for i in 0..5 {
        server_put(&name, &format!("during{i}"), json!(i)).await;
    }
    let detected = wait_until(bound + 5_000, || {
        states.borrow().len() > seen_before && client.state() != ConnState::Open
    })
    .await;
    let after_ms = (js_sys::Date::now() - frozen_at) as u64;
    if !detected {
        ctl("/ws-freeze?on=0").await;
        panic!(
            "the frozen WebSocket was not detected: {:?}",
            client.state()
        );
    }
    web_sys::console::log_1(
        &format!("frozen WebSocket detected after {after_ms} ms (bound {bound} ms)").into(),
    );
    let stall_reconnect = states
        .borrow()
        .iter()
        .skip(seen_before)
        .any(|c| matches!(c.state, ConnState::Reconnecting { .. }));
    // The last frame came before the freeze, so the watchdog fires within the bound of it.
    let margin = 1_500;
    if after_ms > bound + margin || !stall_reconnect {
        ctl("/ws-freeze?on=0").await;
        panic!(
            "detected after {after_ms} ms, bound {bound} ms; states {:?}",
            &states.borrow()[seen_before..]
        );
    }
    assert_eq!(room.seq(), 3, "nothing passes the frozen proxy");

    ctl("/ws-freeze?on=0").await;
    assert!(
        wait_until(8_000, || client.state() == ConnState::Open
            && room.seq() == 8)
        .await,
        "reconnected and resumed after the thaw: {:?}, seq {}",
        client.state(),
        room.seq()
    );
    assert_eq!(client.transport(), Some(TransportKind::Ws));
    for i in 0..2 {
        server_put(&name, &format!("after{i}"), json!(i)).await;
    }
    assert!(
        wait_until(5_000, || room.seq() == 10).await,
        "seq {}",
        room.seq()
    );
    assert_eq!(
        *seqs.borrow(),
        (1..=10).collect::<Vec<u64>>(),
        "every event once, in order"
    );
    assert_eq!(room.items().len(), 10);
    client.close();
}
