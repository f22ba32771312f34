//! Browser tests of `getToken`: the client keeps a page live across token expiry, over SSE
//! (fresh ticket, resume from the cursor) and WebSocket (fresh `auth` frame), losing no event.
//! Run under `tidewire-harness`, which starts a second server with `--jwt-secret`
//! (`TIDEWIRE_AUTH_URL`) and mints its tokens at `POST {TIDEWIRE_CTL_URL}/token`.
#![cfg(target_arch = "wasm32")]

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use gloo_timers::future::TimeoutFuture;
use serde_json::json;
use tidewire_client::auth::TokenSource;
use tidewire_client::state::{ConnState, TransportKind};
use tidewire_client::{http, Cause, Client, Options};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const AUTH_URL: &str = match option_env!("TIDEWIRE_AUTH_URL") {
    Some(u) => u,
    None => "http://127.0.0.1:18083",
};
const CTL: &str = match option_env!("TIDEWIRE_CTL_URL") {
    Some(u) => u,
    None => "http://127.0.0.1:18081",
};

/// A token from the harness for rooms matching `rooms`, living `ttl` seconds.
async fn mint(sub: &str, rooms: &str, ttl: u32) -> Result<JsValue, JsValue> {
    let window = web_sys::window().ok_or("no window")?;
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    let url = format!("{CTL}/token?sub={sub}&read={rooms}&write={rooms}&ttl={ttl}");
    let resp: web_sys::Response = JsFuture::from(window.fetch_with_str_and_init(&url, &init))
        .await?
        .dyn_into()?;
    JsFuture::from(resp.text()?).await
}

/// A `getToken` answering tokens of `sub` for `rooms` living `ttl` seconds; counts its calls.
fn token_source(
    sub: &'static str,
    rooms: &'static str,
    ttl: u32,
) -> (Rc<TokenSource>, Rc<Cell<u32>>) {
    let calls = Rc::new(Cell::new(0));
    let c = calls.clone();
    let get = Closure::<dyn FnMut() -> js_sys::Promise>::new(move || {
        c.set(c.get() + 1);
        wasm_bindgen_futures::future_to_promise(mint(sub, rooms, ttl))
    });
    let f: js_sys::Function = get.into_js_value().unchecked_into();
    (Rc::new(TokenSource::new(f)), calls)
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

async fn stays_live_across_expiry(kind: TransportKind) {
    let (source, calls) = token_source("browser", "auth-*", 3);
    let writer = http::Endpoint::with_token(AUTH_URL, source.clone());
    let mut o = Options::new(AUTH_URL);
    o.token = Some(source);
    o.transport = Some(kind);
    o.backoff.base_ms = 100;
    o.backoff.cap_ms = 1_000;
    let client = Client::new(o).unwrap();
    let name = format!("auth-{}-{}", kind.as_str(), js_sys::Date::now() as u64);
    let states = Rc::new(RefCell::new(Vec::new()));
    let st = states.clone();
    let _s = client.on_state(move |c| st.borrow_mut().push(c.state.clone()));
    let room = client.room(&name).unwrap();
    let seqs = Rc::new(RefCell::new(Vec::<u64>::new()));
    let s = seqs.clone();
    let _u = room.subscribe(move |u| {
        if let Cause::Event(env) = &u.event {
            s.borrow_mut().extend(env.seq);
        }
    });
    assert!(
        wait_until(8_000, || client.state() == ConnState::Open).await,
        "{kind:?} never opened: {:?}",
        client.state()
    );
    // About 7 s of writes: each token (3 s) expires at least twice meanwhile.
    const N: u64 = 14;
    for i in 0..N {
        let key = format!("k-{name}-{i}");
        http::put(&writer, &name, &format!("i{i}"), &json!(i), &key, None)
            .await
            .expect("a write with a fresh Bearer token succeeds");
        TimeoutFuture::new(500).await;
    }
    assert!(
        wait_until(8_000, || room.seq() == N).await,
        "{kind:?}: seq {} of {N}",
        room.seq()
    );
    assert_eq!(
        *seqs.borrow(),
        (1..=N).collect::<Vec<_>>(),
        "{kind:?}: every event once, in order"
    );
    assert!(
        calls.get() >= 3,
        "getToken was called again before expiry ({})",
        calls.get()
    );
    assert_eq!(client.state(), ConnState::Open);
    if kind == TransportKind::Ws {
        // The refreshed token arrived as an auth frame: the socket never closed.
        let reconnects = states
            .borrow()
            .iter()
            .filter(|s| matches!(s, ConnState::Reconnecting { .. }))
            .count();
        assert_eq!(reconnects, 0, "states: {:?}", states.borrow());
    }
    client.close();
}

#[wasm_bindgen_test]
async fn get_token_keeps_sse_live_across_expiry() {
    stays_live_across_expiry(TransportKind::Sse).await;
}

#[wasm_bindgen_test]
async fn get_token_keeps_websocket_live_across_expiry() {
    stays_live_across_expiry(TransportKind::Ws).await;
}

#[wasm_bindgen_test]
async fn two_clients_of_one_server_each_use_their_own_get_token() {
    // Each token may only read and write its own client's rooms: a client using the other's
    // token would be refused (403 forbidden) and never open.
    let (source_a, calls_a) = token_source("alice", "auth-alice-*", 60);
    let (source_b, calls_b) = token_source("bob", "auth-bob-*", 60);
    let stamp = js_sys::Date::now() as u64;
    let mut clients = Vec::new();
    for (source, room) in [
        (source_a, format!("auth-alice-{stamp}")),
        (source_b, format!("auth-bob-{stamp}")),
    ] {
        let mut o = Options::new(AUTH_URL);
        o.transport = Some(TransportKind::Sse);
        o.backoff.base_ms = 100;
        o.backoff.cap_ms = 500;
        o.token = Some(source);
        let client = Client::new(o).unwrap();
        let r = client.room(&room).unwrap();
        clients.push((client, r));
    }
    for (client, room) in &clients {
        assert!(
            wait_until(8_000, || client.state() == ConnState::Open).await,
            "{} never opened: {:?}",
            room.name(),
            client.state()
        );
        // A write through the client carries its own token.
        room.put("x", json!(room.name()))
            .await
            .expect("a write allowed by this client's token");
        assert!(wait_until(5_000, || room.seq() == 1).await);
    }
    assert!(calls_a.get() >= 1, "alice's getToken was called");
    assert!(calls_b.get() >= 1, "bob's getToken was called");
    // And the other way round: alice's token does not open bob's room.
    let (alice_again, _) = token_source("alice", "auth-alice-*", 60);
    let err = http::snapshot(
        &http::Endpoint::with_token(AUTH_URL, alice_again),
        clients[1].1.name(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), "forbidden");
    for (client, _) in &clients {
        client.close();
    }
}
