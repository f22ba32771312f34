//! Browser tests of how the client sends writes and handles what the server sends: `publish`
//! over the WebSocket and retried with the same key, `Retry-After` on `429`, rollbacks for a
//! `403` and a `413`, a `resync`, an unknown `v`/`type` arriving in the browser (over SSE,
//! WebSocket and long-poll), and changes
//! the application makes through its own backend (`room.expect`, through the JavaScript API).
//!
//! Run in headless Chromium by `wasm-pack test --headless --chrome client` under
//! `tidewire-harness`, which starts the servers and sets the URLs below (read at compile
//! time); its proxy fails writes on request (`/fail-writes`) and its chaos proxy injects
//! frames (`/inject/<seed>`).
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;

use gloo_timers::future::TimeoutFuture;
use serde_json::{json, Value};
use tidewire_client::auth::TokenSource;
use tidewire_client::protocol::Envelope;
use tidewire_client::state::{ConnState, TransportKind};
use tidewire_client::{
    http, Cause, Client, Error, ErrorInfo, LocalCause, Options, Rollback, StateChange,
};
use wasm_bindgen::prelude::*;
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
const CHAOS: &str = match option_env!("TIDEWIRE_CHAOS_URL") {
    Some(u) => u,
    None => "http://127.0.0.1:18084",
};
const AUTH_URL: &str = match option_env!("TIDEWIRE_AUTH_URL") {
    Some(u) => u,
    None => "http://127.0.0.1:18083",
};

thread_local! {
    static BUSY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs the tests one at a time: `/fail-writes` is one switch for every client. A test that
/// panicked never releases it (wasm does not unwind), so the next one takes over after 60 s
/// and the run goes on to report every failure.
struct Serial;

async fn serial() -> Serial {
    let deadline = js_sys::Date::now() + 60_000.0;
    while BUSY.with(|b| b.replace(true)) && js_sys::Date::now() < deadline {
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

/// `method url` with an optional text body; the answer's text.
async fn fetch(method: &str, url: &str, body: Option<&str>) -> String {
    let window = web_sys::window().unwrap();
    let init = web_sys::RequestInit::new();
    init.set_method(method);
    if let Some(b) = body {
        init.set_body(&JsValue::from_str(b));
    }
    let resp = JsFuture::from(window.fetch_with_str_and_init(url, &init))
        .await
        .unwrap_or_else(|e| panic!("{method} {url} failed: {e:?}"));
    let resp: web_sys::Response = resp.dyn_into().unwrap();
    assert!(resp.ok(), "{method} {url}: {}", resp.status());
    JsFuture::from(resp.text().unwrap())
        .await
        .unwrap()
        .as_string()
        .unwrap()
}

/// Arms the harness proxy: the next `count` writes through it get `status`.
async fn fail_writes(status: u16, count: u32, retry_after: Option<u64>) {
    let mut url = format!("{CTL}/fail-writes?status={status}&count={count}");
    if let Some(r) = retry_after {
        url.push_str(&format!("&retry_after={r}"));
    }
    fetch("POST", &url, None).await;
}

/// What the proxy failed: `(writes still to fail, idempotency keys of those it failed)`.
async fn failed_writes() -> (u64, Vec<String>) {
    let v: Value =
        serde_json::from_str(&fetch("GET", &format!("{CTL}/fail-writes"), None).await).unwrap();
    let keys = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    (v["left"].as_u64().unwrap(), keys)
}

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

fn options(url: &str, transport: TransportKind) -> Options {
    let mut o = Options::new(url);
    o.transport = Some(transport);
    o.backoff.base_ms = 100;
    o.backoff.cap_ms = 1_000;
    o
}

/// A client on `url` with the room `name` (a client connects once it has a room), open.
async fn open_client(
    url: &str,
    transport: TransportKind,
    name: &str,
) -> (Client, tidewire_client::Room) {
    let client = Client::new(options(url, transport)).unwrap();
    let room = client.room(name).unwrap();
    assert!(
        wait_until(5_000, || client.state() == ConnState::Open).await,
        "{transport:?} never opened: {:?}",
        client.state()
    );
    (client, room)
}

fn record_states(
    client: &Client,
) -> (Rc<RefCell<Vec<StateChange>>>, tidewire_client::Subscription) {
    let states = Rc::new(RefCell::new(Vec::new()));
    let s = states.clone();
    let sub = client.on_state(move |c| s.borrow_mut().push(c.clone()));
    (states, sub)
}

/// A write straight to the server (not through the client), with idempotency key `key`.
async fn server_put_with_key(room: &str, id: &str, value: Value, key: &str) -> Envelope {
    http::put(&http::Endpoint::new(URL), room, id, &value, key, None)
        .await
        .unwrap_or_else(|e| panic!("server put failed: {e}"))
}

async fn server_put(room: &str, id: &str, value: Value) -> Envelope {
    server_put_with_key(room, id, value, &unique("k")).await
}

// ---- publish: over the WebSocket, retried with the same key, 4xx rejected ----

#[wasm_bindgen_test]
async fn publish_goes_over_an_open_websocket() {
    let _serial = serial().await;
    let name = unique("pubws");
    let (client, room) = open_client(PROXY, TransportKind::Ws, &name).await;
    // A publish over REST through the proxy would now be refused; over the WebSocket the
    // proxy only relays frames.
    fail_writes(403, 1, None).await;
    let env = room
        .publish("chat.msg", json!({"text": "hi"}))
        .await
        .expect("the publish goes over the WebSocket, not REST");
    let (left, keys) = failed_writes().await;
    fail_writes(503, 0, None).await;
    assert_eq!((left, keys.len()), (1, 0), "no REST write was made");
    assert_eq!(env.event.event_type(), "chat.msg");
    assert_eq!(env.seq, Some(1));
    assert!(wait_until(3_000, || room.seq() == 1).await);
    client.close();
}

#[wasm_bindgen_test]
async fn publish_over_rest_is_retried_with_the_same_key_after_a_5xx() {
    let _serial = serial().await;
    let name = unique("pub5xx");
    let (client, room) = open_client(PROXY, TransportKind::Sse, &name).await;
    fail_writes(503, 2, None).await;
    let env = room
        .publish("chat.msg", json!({"n": 1}))
        .await
        .expect("the publish succeeds on its third attempt");
    let (left, keys) = failed_writes().await;
    assert_eq!(left, 0);
    let key = env
        .key
        .clone()
        .expect("the event carries the publish's key");
    assert_eq!(
        keys,
        vec![key.clone(), key],
        "both retries used the same key"
    );
    assert_eq!(env.seq, Some(1));
    // Appended once: the log holds one event.
    let snap = http::snapshot(&http::Endpoint::new(URL), &name)
        .await
        .unwrap();
    assert_eq!(snap.seq, 1, "applied once");
    client.close();
}

#[wasm_bindgen_test]
async fn a_429_with_retry_after_is_waited_before_the_retry() {
    let _serial = serial().await;
    let name = unique("p429");
    let (client, room) = open_client(PROXY, TransportKind::Sse, &name).await;
    // The backoff alone would retry after 250 ms.
    fail_writes(429, 1, Some(2)).await;
    let started = js_sys::Date::now();
    let env = room.put("a", json!(1)).await.expect("the retry succeeds");
    let took = js_sys::Date::now() - started;
    assert!(
        took >= 1_950.0,
        "retried after {took} ms, before Retry-After: 2"
    );
    assert!(took < 4_000.0, "retried after {took} ms");
    let (_, keys) = failed_writes().await;
    assert_eq!(keys, vec![env.key.clone().unwrap()]);
    // The same for a publish.
    fail_writes(429, 1, Some(1)).await;
    let started = js_sys::Date::now();
    room.publish("chat.msg", json!(null)).await.unwrap();
    let took = js_sys::Date::now() - started;
    assert!(took >= 950.0, "publish retried after {took} ms");
    assert!(wait_until(3_000, || room.seq() == 2).await);
    client.close();
}

#[wasm_bindgen_test]
async fn a_4xx_is_not_retried_and_rejects_publish_with_a_clear_error() {
    let _serial = serial().await;
    let name = unique("p4xx");
    let (client, room) = open_client(PROXY, TransportKind::Sse, &name).await;
    fail_writes(403, 3, None).await;
    let err = room.publish("chat.msg", json!(1)).await.unwrap_err();
    let (left, keys) = failed_writes().await;
    fail_writes(503, 0, None).await;
    assert_eq!(err.code(), "forbidden");
    assert!(matches!(err, Error::Server { status: 403, .. }), "{err:?}");
    assert_eq!((left, keys.len()), (2, 1), "tried once");
    // Bad input is refused before anything is sent.
    let err = room.publish("item.put", json!(1)).await.unwrap_err();
    assert_eq!(err.code(), "bad_event_type");
    client.close();
}

// ---- rollbacks for a 4xx other than 409 ----

fn record_rollbacks(
    room: &tidewire_client::Room,
) -> (Rc<RefCell<Vec<Rollback>>>, tidewire_client::Subscription) {
    let rollbacks = Rc::new(RefCell::new(Vec::new()));
    let r = rollbacks.clone();
    let sub = room.on_rollback(move |rb| r.borrow_mut().push(rb.clone()));
    (rollbacks, sub)
}

async fn payload_too_large_rolls_back(transport: TransportKind) {
    let name = unique("p413");
    let (client, room) = open_client(URL, transport, &name).await;
    server_put(&name, "big", json!("small")).await;
    assert!(wait_until(3_000, || room.seq() == 1).await);
    let (rollbacks, _r) = record_rollbacks(&room);
    // Above the server's 256 KiB item limit, below its 1 MiB body and frame limit.
    let big = json!("x".repeat(300 * 1024));
    let write = room.put("big", big.clone());
    assert!(room.items()[0].pending, "shown at once");
    let err = write.await.unwrap_err();
    assert_eq!(err.code(), "payload_too_large", "{err:?}");
    let rb = rollbacks.borrow().clone();
    assert_eq!(rb.len(), 1, "{rb:?}");
    assert_eq!(rb[0].id, "big");
    assert_eq!(rb[0].error.code, "payload_too_large");
    assert_eq!(rb[0].value, json!("small"), "the server's value");
    assert_eq!(rb[0].version, Some(1));
    let items = room.items();
    assert_eq!(
        (items[0].value.clone(), items[0].pending),
        (json!("small"), false)
    );
    client.close();
}

#[wasm_bindgen_test]
async fn a_413_rolls_back_over_rest() {
    let _serial = serial().await;
    payload_too_large_rolls_back(TransportKind::Sse).await;
}

#[wasm_bindgen_test]
async fn a_413_rolls_back_over_websocket() {
    let _serial = serial().await;
    payload_too_large_rolls_back(TransportKind::Ws).await;
}

/// A token from the harness that may read `read` and write `write` (room patterns).
async fn mint(read: &str, write: &str) -> Result<JsValue, JsValue> {
    let url = format!("{CTL}/token?sub=reader&read={read}&write={write}&ttl=120");
    Ok(JsValue::from_str(&fetch("POST", &url, None).await))
}

fn read_only_token(rooms: &'static str) -> Rc<TokenSource> {
    let get = Closure::<dyn FnMut() -> js_sys::Promise>::new(move || {
        wasm_bindgen_futures::future_to_promise(mint(rooms, ""))
    });
    Rc::new(TokenSource::new(get.into_js_value().unchecked_into()))
}

async fn forbidden_rolls_back(transport: TransportKind) {
    let name = unique("ro");
    let writer_source = Rc::new(TokenSource::new(
        Closure::<dyn FnMut() -> js_sys::Promise>::new(move || {
            wasm_bindgen_futures::future_to_promise(mint("ro-*", "ro-*"))
        })
        .into_js_value()
        .unchecked_into(),
    ));
    let writer = http::Endpoint::with_token(AUTH_URL, writer_source);
    http::put(&writer, &name, "a", &json!(1), &unique("k"), None)
        .await
        .expect("the writer may write");
    let mut o = options(AUTH_URL, transport);
    o.token = Some(read_only_token("ro-*"));
    let client = Client::new(o).unwrap();
    let room = client.room(&name).unwrap();
    assert!(
        wait_until(5_000, || client.state() == ConnState::Open
            && room.seq() == 1)
        .await,
        "a read-only token reads: {:?}",
        client.state()
    );
    let (rollbacks, _r) = record_rollbacks(&room);
    let write = room.put("a", json!(2));
    assert_eq!(room.items()[0].value, json!(2), "shown at once");
    let err = write.await.unwrap_err();
    assert_eq!(err.code(), "forbidden", "{err:?}");
    let rb = rollbacks.borrow().clone();
    assert_eq!(rb.len(), 1, "{rb:?}");
    assert_eq!(
        (rb[0].id.as_str(), rb[0].error.code.as_str()),
        ("a", "forbidden")
    );
    assert_eq!(rb[0].value, json!(1));
    assert_eq!(
        room.items()[0].value,
        json!(1),
        "back to the server's value"
    );
    assert!(!room.items()[0].pending);
    // A publish is refused the same way, without retries.
    let err = room.publish("chat.msg", json!(1)).await.unwrap_err();
    assert_eq!(err.code(), "forbidden");
    client.close();
}

#[wasm_bindgen_test]
async fn a_403_rolls_back_over_rest() {
    let _serial = serial().await;
    forbidden_rolls_back(TransportKind::Sse).await;
}

#[wasm_bindgen_test]
async fn a_403_rolls_back_over_websocket() {
    let _serial = serial().await;
    forbidden_rolls_back(TransportKind::Ws).await;
}

// ---- resync ----

fn fake_put(room: &str, seq: u64, id: &str, value: Value) -> Envelope {
    let text = json!({"v":1,"type":"item.put","room":room,"seq":seq,"id":format!("fake{seq}"),
        "ts":"t","key":null,"data":{"id":id,"value":value,"version":seq}})
    .to_string();
    Envelope::decode(&text).unwrap()
}

async fn resync_refetches_the_snapshot(transport: TransportKind) {
    let name = unique("resync");
    let (client, room) = open_client(URL, transport, &name).await;
    server_put(&name, "a", json!("real")).await;
    server_put(&name, "b", json!("real")).await;
    assert!(wait_until(3_000, || room.seq() == 2).await);
    // The client believes in two events the server never had: its cursor is past the head.
    room.feed(fake_put(&name, 3, "a", json!("ghost")));
    room.feed(fake_put(&name, 4, "ghost", json!(1)));
    assert_eq!(room.seq(), 4);
    assert_eq!(room.items().len(), 3);
    let snapshots = Rc::new(RefCell::new(Vec::new()));
    let s = snapshots.clone();
    let _u = room.subscribe(move |u| {
        if let Cause::Local(LocalCause::Snapshot { seq, .. }) = &u.event {
            s.borrow_mut().push(*seq);
        }
    });
    // On reconnect it subscribes from seq 4; the server answers `resync`.
    client.drop_connection();
    assert!(
        wait_until(8_000, || !snapshots.borrow().is_empty()).await,
        "no snapshot re-fetched after the resync: {:?}",
        client.state()
    );
    assert_eq!(
        *snapshots.borrow(),
        vec![2],
        "the snapshot at the server's head"
    );
    assert_eq!(room.seq(), 2);
    let items: Vec<(String, Value)> = room.items().into_iter().map(|i| (i.id, i.value)).collect();
    assert_eq!(
        items,
        vec![("a".into(), json!("real")), ("b".into(), json!("real"))],
        "the state is the server's"
    );
    // And the stream goes on from there.
    assert!(wait_until(5_000, || client.state() == ConnState::Open).await);
    server_put(&name, "c", json!("next")).await;
    assert!(
        wait_until(5_000, || room.seq() == 3).await,
        "seq {}",
        room.seq()
    );
    assert_eq!(room.items().len(), 3);
    assert!(room.items().iter().all(|i| i.id != "ghost"));
    client.close();
}

#[wasm_bindgen_test]
async fn a_resync_over_sse_refetches_the_snapshot() {
    let _serial = serial().await;
    resync_refetches_the_snapshot(TransportKind::Sse).await;
}

#[wasm_bindgen_test]
async fn a_resync_over_websocket_refetches_the_snapshot() {
    let _serial = serial().await;
    resync_refetches_the_snapshot(TransportKind::Ws).await;
}

// ---- unknown `v` and `type` ----

async fn unknown_frames_are_reported(transport: TransportKind, seed: u64) {
    let base = format!("{CHAOS}/seed/{seed}");
    let name = unique("unknown");
    let (client, room) = open_client(&base, transport, &name).await;
    let (states, _s) = record_states(&client);
    let errors = Rc::new(RefCell::new(Vec::<ErrorInfo>::new()));
    let e = errors.clone();
    let _e = client.on_error(move |info| e.borrow_mut().push(info.clone()));
    server_put(&name, "a", json!(1)).await;
    assert!(wait_until(5_000, || room.seq() == 1).await);
    let opened_before = states.borrow().len();
    // Sent again only while no stream took it (a long-poll between two requests).
    let inject = |text: String| {
        let url = format!("{CHAOS}/inject/{seed}");
        async move {
            for _ in 0..250 {
                let got: u32 = fetch("POST", &url, Some(&text)).await.parse().unwrap_or(0);
                if got >= 1 {
                    return;
                }
                TimeoutFuture::new(20).await;
            }
            panic!("no stream of seed {seed} took the frame");
        }
    };
    let v2 = json!({"v":2,"type":"item.put","room":name,"seq":2,"id":"x","ts":"t","key":null,
        "data":{"id":"v2","value":1,"version":1}})
    .to_string();
    let unknown = json!({"v":1,"type":"item.moved","room":name,"id":"y","ts":"t","key":null,
        "data":{}})
    .to_string();
    inject(v2).await;
    inject(unknown).await;
    if transport == TransportKind::LongPoll {
        // A long-poll answers when an event comes: the injected ones go before it.
        server_put(&name, "b", json!(2)).await;
    }
    assert!(
        wait_until(3_000, || errors.borrow().len() == 2).await,
        "errors {:?}",
        errors.borrow()
    );
    let codes: Vec<String> = errors.borrow().iter().map(|e| e.code.clone()).collect();
    assert_eq!(codes, vec!["unsupported_version", "unknown_type"]);
    assert!(
        errors.borrow()[1].message.contains("item.moved"),
        "{:?}",
        errors.borrow()
    );
    // The connection keeps running and later events still apply.
    if transport != TransportKind::LongPoll {
        server_put(&name, "b", json!(2)).await;
    }
    assert!(
        wait_until(5_000, || room.seq() == 2).await,
        "seq {}",
        room.seq()
    );
    let ids: Vec<String> = room.items().into_iter().map(|i| i.id).collect();
    assert_eq!(ids, vec!["a", "b"], "nothing of the bad frames was applied");
    assert_eq!(
        states.borrow().len(),
        opened_before,
        "no reconnect: {:?}",
        states.borrow()
    );
    assert_eq!(client.state(), ConnState::Open);
    client.close();
}

#[wasm_bindgen_test]
async fn unknown_v_and_type_over_sse_are_reported_and_the_stream_goes_on() {
    let _serial = serial().await;
    unknown_frames_are_reported(TransportKind::Sse, 9_001).await;
}

#[wasm_bindgen_test]
async fn unknown_v_and_type_over_long_poll_are_reported_and_polling_goes_on() {
    let _serial = serial().await;
    unknown_frames_are_reported(TransportKind::LongPoll, 9_003).await;
}

#[wasm_bindgen_test]
async fn unknown_v_and_type_over_websocket_are_reported_and_the_socket_goes_on() {
    let _serial = serial().await;
    unknown_frames_are_reported(TransportKind::Ws, 9_002).await;
}

// ---- room.expect, through the JavaScript API ----

fn js(value: Value) -> JsValue {
    js_sys::JSON::parse(&value.to_string()).unwrap()
}

fn rust(value: &JsValue) -> Value {
    serde_json::from_str(&String::from(js_sys::JSON::stringify(value).unwrap())).unwrap()
}

/// The room's items as `(id, value, pending)`.
fn js_items(room: &tidewire_client::js::Room) -> Vec<(String, Value, bool)> {
    let items: JsValue = room.items().into();
    rust(&items)
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_owned(),
                i["value"].clone(),
                i["pending"].as_bool().unwrap(),
            )
        })
        .collect()
}

async fn settled(p: js_sys::Promise) -> Result<Value, Value> {
    match JsFuture::from(p).await {
        Ok(v) => Ok(rust(&v)),
        Err(e) => {
            let get = |k: &str| js_sys::Reflect::get(&e, &k.into()).unwrap().as_string();
            Err(json!({"code": get("code"), "message": get("message")}))
        }
    }
}

#[wasm_bindgen_test]
async fn expect_shows_a_change_made_elsewhere_and_confirms_or_rolls_it_back() {
    let _serial = serial().await;
    let opts = js(json!({"url": URL, "transport": "sse"}));
    let client = tidewire_client::js::JsClient::new(opts.unchecked_into()).unwrap();
    let name = unique("expect");
    let room = client.room(&name).unwrap();
    let state = || rust(&JsValue::from(client.state()));
    assert!(
        wait_until(5_000, || state()["state"] == "open").await,
        "{}",
        state()
    );
    server_put(&name, "gone", json!("here")).await;
    assert!(wait_until(3_000, || room.seq() == 1.0).await);
    let rollbacks = Rc::new(RefCell::new(Vec::<Value>::new()));
    let r = rollbacks.clone();
    let on_rollback = Closure::<dyn FnMut(JsValue)>::new(move |rb: JsValue| {
        r.borrow_mut().push(rust(&rb));
    });
    let mut _sub = room
        .on_rollback(on_rollback.into_js_value().unchecked_into())
        .unwrap();
    let opts = |ms: u64| Some(js(json!({ "timeoutMs": ms })).unchecked_into());

    // 1. The app's backend makes the change with key k1: pending at once, then confirmed.
    let k1 = unique("k1");
    let e1 = room
        .expect(
            &k1,
            js(json!({"id": "a", "value": {"by": "app"}})).unchecked_into(),
            opts(10_000),
        )
        .unwrap();
    assert_eq!(e1.key(), k1);
    assert_eq!(
        js_items(&room),
        vec![
            ("a".to_owned(), json!({"by": "app"}), true),
            ("gone".to_owned(), json!("here"), false)
        ],
        "pending at once"
    );
    let env = server_put_with_key(&name, "a", json!({"by": "app"}), &k1).await;
    let event = settled(e1.confirmed().unchecked_into())
        .await
        .expect("confirmed");
    assert_eq!(event["key"], json!(k1));
    assert_eq!(event["seq"], json!(env.seq));
    assert_eq!(event["data"]["value"], json!({"by": "app"}));
    assert_eq!(
        js_items(&room)[0],
        ("a".to_owned(), json!({"by": "app"}), false)
    );
    assert!(
        !e1.fail(Some("too late".into())),
        "a confirmed change cannot fail"
    );
    assert!(!js_items(&room)[0].2);

    // 2. A delete, confirmed the same way.
    let kd = unique("kd");
    let ed = room
        .expect(
            &kd,
            js(json!({"id": "gone", "deleted": true})).unchecked_into(),
            None,
        )
        .unwrap();
    assert_eq!(js_items(&room).len(), 1, "hidden at once");
    http::delete(&http::Endpoint::new(URL), &name, "gone", &kd, None)
        .await
        .unwrap();
    let event = settled(ed.confirmed().unchecked_into())
        .await
        .expect("confirmed");
    assert_eq!(event["type"], "item.deleted");
    assert_eq!(js_items(&room).len(), 1);

    // 3. Nothing comes: rolled back after the timeout, with reason `timeout`.
    let k2 = unique("k2");
    let started = js_sys::Date::now();
    let e2 = room
        .expect(
            &k2,
            js(json!({"id": "b", "value": 2})).unchecked_into(),
            opts(600),
        )
        .unwrap();
    assert_eq!(js_items(&room)[1], ("b".to_owned(), json!(2), true));
    let err = settled(e2.confirmed().unchecked_into()).await.unwrap_err();
    let took = js_sys::Date::now() - started;
    assert_eq!(err["code"], "timeout", "{err}");
    assert!(
        (550.0..3_000.0).contains(&took),
        "rolled back after {took} ms"
    );
    assert!(js_items(&room).iter().all(|i| i.0 != "b"), "gone again");

    // 4. The app says it failed: rolled back at once with its reason.
    let k3 = unique("k3");
    let e3 = room
        .expect(
            &k3,
            js(json!({"id": "a", "value": "nope"})).unchecked_into(),
            opts(60_000),
        )
        .unwrap();
    assert_eq!(js_items(&room)[0], ("a".to_owned(), json!("nope"), true));
    assert!(e3.fail(Some("app said no".into())));
    assert!(!e3.fail(Some("twice".into())), "once");
    let err = settled(e3.confirmed().unchecked_into()).await.unwrap_err();
    assert_eq!(err, json!({"code": "failed", "message": "app said no"}));
    assert_eq!(
        js_items(&room)[0],
        ("a".to_owned(), json!({"by": "app"}), false),
        "back to the confirmed value"
    );

    let rb = rollbacks.borrow().clone();
    assert_eq!(rb.len(), 2, "{rb:?}");
    assert_eq!(
        (rb[0]["id"].clone(), rb[0]["error"]["code"].clone()),
        (json!("b"), json!("timeout"))
    );
    assert_eq!(
        rb[0]["value"],
        Value::Null,
        "b does not exist on the server"
    );
    assert_eq!(
        rb[1],
        json!({"id": "a", "value": {"by": "app"}, "version": 1,
               "error": {"code": "failed", "message": "app said no"}})
    );

    // Bad input is a clear error, never a panic; a key waits once at a time.
    let k4 = unique("k4");
    let _e4 = room
        .expect(
            &k4,
            js(json!({"id": "c", "value": 1})).unchecked_into(),
            None,
        )
        .unwrap();
    for (key, change, code) in [
        (k4.as_str(), json!({"id": "c", "value": 1}), "bad_request"),
        ("k", json!({"id": "bad id!", "value": 1}), "bad_item_id"),
        ("k", json!({"id": "c"}), "bad_request"),
        ("k", json!(null), "bad_request"),
        ("", json!({"id": "c", "value": 1}), "bad_idempotency_key"),
    ] {
        let err = room
            .expect(key, js(change.clone()).unchecked_into(), None)
            .err()
            .unwrap_or_else(|| panic!("{key} {change} accepted"));
        let got = js_sys::Reflect::get(&err, &"code".into())
            .unwrap()
            .as_string();
        assert_eq!(got.as_deref(), Some(code), "{key} {change}");
    }
    _sub.unsubscribe();
    client.close();
}
