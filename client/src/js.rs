//! The JavaScript API (`#[wasm_bindgen]`): thin wrappers over [`crate::Client`] and
//! [`crate::Room`]. Values cross as plain objects; errors become JavaScript `Error`s with a
//! `code` property (and `status` / `current` for server refusals).
//!
//! ```js
//! import init, { Client } from 'tidewire';
//! await init();
//! const client = new Client({ url: 'http://127.0.0.1:8080' });
//! const room = client.room('board-1');
//! room.subscribe(({ items, seq, event }) => console.log(seq, items, event));
//! await room.put('slot-3', { free: false });
//! ```

use js_sys::{Function, Reflect};
use serde_json::Value;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::http::{from_js, to_js};
use crate::listeners::Subscription as RustSubscription;
use crate::options::JsOptions;
use crate::{Error, StateChange};

// The declarations of the types below (`ClientOptions`, `ConnectionState`, `RoomUpdate`, …),
// generated from the Rust types by `crate::ts` (`TIDEWIRE_UPDATE_TS=1 cargo test -p
// tidewire-client --features ts --lib`).
#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &'static str = include_str!("../types/client.d.ts");

#[wasm_bindgen]
extern "C" {
    /// The options object.
    #[wasm_bindgen(typescript_type = "ClientOptions")]
    pub type ClientOptionsArg;
    /// A state object.
    #[wasm_bindgen(typescript_type = "ConnectionState")]
    pub type ConnectionStateValue;
    /// A state listener.
    #[wasm_bindgen(typescript_type = "(state: ConnectionState) => void")]
    pub type StateCallback;
    /// A room update listener.
    #[wasm_bindgen(typescript_type = "(update: RoomUpdate) => void")]
    pub type UpdateCallback;
    /// A rollback listener.
    #[wasm_bindgen(typescript_type = "(rollback: RollbackInfo) => void")]
    pub type RollbackCallback;
    /// A presence listener.
    #[wasm_bindgen(typescript_type = "(update: PresenceUpdate) => void")]
    pub type PresenceCallback;
    /// A broadcast listener.
    #[wasm_bindgen(typescript_type = "(message: BroadcastMessage) => void")]
    pub type BroadcastCallback;
    /// An array of items.
    #[wasm_bindgen(typescript_type = "RoomItem[]")]
    pub type RoomItems;
    /// An array of presence members.
    #[wasm_bindgen(typescript_type = "PresenceMember[]")]
    pub type Members;
    /// Write options.
    #[wasm_bindgen(typescript_type = "WriteOptions")]
    pub type WriteOptionsArg;
    /// A transport name or undefined.
    #[wasm_bindgen(typescript_type = "'sse' | 'ws' | 'longpoll' | 'poll' | undefined")]
    pub type TransportValue;
    /// A promise of the server's event.
    #[wasm_bindgen(typescript_type = "Promise<TidewireEvent>")]
    pub type EventPromise;
    /// An error listener.
    #[wasm_bindgen(typescript_type = "(error: ErrorInfo) => void")]
    pub type ErrorCallback;
    /// The change of `room.expect`.
    #[wasm_bindgen(typescript_type = "ExpectedChange")]
    pub type ExpectedChangeArg;
    /// The options of `room.expect`.
    #[wasm_bindgen(typescript_type = "ExpectOptions")]
    pub type ExpectOptionsArg;
}

/// Converts an error into a JavaScript `Error` with `code` (and `status`, `current`).
pub fn to_js_error(err: &Error) -> JsValue {
    let e = js_sys::Error::new(&err.to_string());
    let _ = Reflect::set(&e, &"code".into(), &err.code().into());
    if let Error::Server {
        status, current, ..
    } = err
    {
        if *status != 0 {
            let _ = Reflect::set(&e, &"status".into(), &(*status).into());
        }
        if let Some(item) = current {
            let _ = Reflect::set(&e, &"current".into(), &to_js(item));
        }
    }
    e.into()
}

fn callback(f: JsValue) -> Result<Function, JsValue> {
    f.dyn_into::<Function>().map_err(|_| {
        to_js_error(&Error::BadOption {
            name: "callback",
            reason: "must be a function".into(),
        })
    })
}

fn call<T: serde::Serialize>(f: &Function, value: &T) {
    if let Err(e) = f.call1(&JsValue::NULL, &to_js(value)) {
        web_sys::console::error_2(&"tidewire: a listener threw".into(), &e);
    }
}

/// A listener registration; `unsubscribe()` removes it (`close()` removes them all).
/// Freeing or garbage-collecting this object does not remove the listener.
#[wasm_bindgen]
pub struct Subscription(Option<Box<dyn FnOnce()>>);

#[wasm_bindgen]
impl Subscription {
    /// Removes the listener.
    pub fn unsubscribe(&mut self) {
        if let Some(remove) = self.0.take() {
            remove();
        }
    }
}

impl Subscription {
    fn new(s: RustSubscription) -> Subscription {
        Subscription(Some(s.detach()))
    }
}

/// A Tidewire client: one live connection carrying all its rooms. It runs until `close()`
/// (freeing or garbage-collecting the object does not close it).
#[wasm_bindgen(js_name = Client)]
pub struct JsClient(crate::Client);

#[wasm_bindgen(js_class = Client)]
impl JsClient {
    /// `new Client({ url, transport?, … })`.
    #[wasm_bindgen(constructor)]
    pub fn new(options: ClientOptionsArg) -> Result<JsClient, JsValue> {
        let raw: JsValue = options.into();
        // The plain-data options are decoded as JSON; the function-valued ones (`random`,
        // `getToken`) are read separately below, so they are left out of that copy.
        let data = match raw.dyn_ref::<js_sys::Object>() {
            Some(obj) if !raw.is_function() => {
                let copy = js_sys::Object::assign(&js_sys::Object::new(), obj);
                for key in ["random", "getToken"] {
                    let _ = Reflect::delete_property(&copy, &key.into());
                }
                copy.into()
            }
            _ => raw.clone(),
        };
        let parsed: JsOptions = from_js(data).map_err(|e| {
            to_js_error(&Error::BadOption {
                name: "options",
                reason: format!("{e}; expected {{ url: string, … }}"),
            })
        })?;
        let mut o = parsed.into_options().map_err(|e| to_js_error(&e))?;
        if let Ok(f) = Reflect::get(&raw, &"random".into()).and_then(|f| f.dyn_into::<Function>()) {
            o.random = Some(Box::new(move || {
                f.call0(&JsValue::NULL)
                    .ok()
                    .and_then(|v| v.as_f64())
                    .unwrap_or(0.0)
            }));
        }
        match Reflect::get(&raw, &"getToken".into()) {
            Ok(f) if f.is_function() => {
                if let Ok(f) = f.dyn_into::<Function>() {
                    o.token = Some(std::rc::Rc::new(crate::auth::TokenSource::new(f)));
                }
            }
            Ok(f) if !f.is_undefined() && !f.is_null() => {
                return Err(to_js_error(&Error::BadOption {
                    name: "getToken",
                    reason: "must be a function answering a token (or a promise of one)".into(),
                }));
            }
            _ => {}
        }
        crate::Client::new(o)
            .map(|c| JsClient(c.without_close_on_drop()))
            .map_err(|e| to_js_error(&e))
    }

    /// Calls `cb({state, attempt?, delayMs?, transport})` on every state change.
    #[wasm_bindgen(js_name = onState)]
    pub fn on_state(&self, cb: StateCallback) -> Result<Subscription, JsValue> {
        let f = callback(cb.into())?;
        Ok(Subscription::new(self.0.on_state(move |s| call(&f, s))))
    }

    /// Calls `cb({code, message})` when something arrives that breaks the protocol (an
    /// unknown `v` or `type`, a malformed frame) or the server sends an error frame; the
    /// connection keeps running.
    #[wasm_bindgen(js_name = onError)]
    pub fn on_error(&self, cb: ErrorCallback) -> Result<Subscription, JsValue> {
        let f = callback(cb.into())?;
        Ok(Subscription::new(self.0.on_error(move |e| call(&f, e))))
    }

    /// The current state object.
    pub fn state(&self) -> ConnectionStateValue {
        to_js(&StateChange {
            state: self.0.state(),
            transport: self.0.transport(),
        })
        .unchecked_into()
    }

    /// The room `name` (the same room object state for the same name).
    pub fn room(&self, name: &str) -> Result<Room, JsValue> {
        self.0.room(name).map(Room).map_err(|e| to_js_error(&e))
    }

    /// The transport in use: `sse`, `ws`, `longpoll`, `poll`, or undefined before the first.
    pub fn transport(&self) -> TransportValue {
        match self.0.transport() {
            Some(t) => JsValue::from_str(t.as_str()).unchecked_into(),
            None => JsValue::UNDEFINED.unchecked_into(),
        }
    }

    /// The last applied seq of a room, or undefined.
    pub fn seq(&self, room: &str) -> Option<f64> {
        self.0.seq(room).map(|s| s as f64)
    }

    /// This client's id.
    #[wasm_bindgen(getter, js_name = clientId)]
    pub fn client_id(&self) -> String {
        self.0.client_id().to_owned()
    }

    /// Cuts the live connection; the client recovers by itself.
    #[wasm_bindgen(js_name = dropConnection)]
    pub fn drop_connection(&self) {
        self.0.drop_connection()
    }

    /// Closes the connection and removes every listener.
    pub fn close(&self) {
        self.0.close()
    }
}

/// A room on a client's connection.
#[wasm_bindgen]
pub struct Room(crate::Room);

fn write_if_match(opts: Option<WriteOptionsArg>) -> Option<u64> {
    let v: JsValue = opts.map(Into::into).unwrap_or(JsValue::UNDEFINED);
    if v.is_undefined() || v.is_null() {
        return None;
    }
    Reflect::get(&v, &"ifMatch".into())
        .ok()
        .and_then(|m| m.as_f64())
        .filter(|m| *m >= 0.0)
        .map(|m| m as u64)
}

/// `{ id, value }` (a put) or `{ id, deleted: true }` (a delete).
fn expected_change(v: JsValue) -> Result<crate::ExpectedChange, Error> {
    let bad = || Error::BadOption {
        name: "change",
        reason: "expected { id, value } or { id, deleted: true }".into(),
    };
    if !v.is_object() {
        return Err(bad());
    }
    let get = |name: &str| Reflect::get(&v, &name.into()).unwrap_or(JsValue::UNDEFINED);
    let id = get("id").as_string().ok_or_else(bad)?;
    if get("deleted").as_bool() == Some(true) {
        return Ok(crate::ExpectedChange::delete(id));
    }
    let value = get("value");
    if value.is_undefined() {
        return Err(bad());
    }
    Ok(crate::ExpectedChange::put(id, from_js(value)?))
}

thread_local! {
    static NOOP: Closure<dyn FnMut(JsValue)> = Closure::new(|_: JsValue| {});
}

/// A change expected by `room.expect`: `confirmed` resolves with the event that carries its
/// key, or rejects (after a `rollback`) with code `failed` or `timeout`.
#[wasm_bindgen]
pub struct Expectation {
    inner: crate::expect::ExpectedHandle,
    confirmed: js_sys::Promise,
}

#[wasm_bindgen]
impl Expectation {
    /// The idempotency key the change is expected with.
    #[wasm_bindgen(getter)]
    pub fn key(&self) -> String {
        self.inner.key().to_owned()
    }

    /// Resolves with the confirming event; rejects with a `TidewireError` whose code is
    /// `failed` (after `fail(reason)`) or `timeout`.
    #[wasm_bindgen(getter)]
    pub fn confirmed(&self) -> EventPromise {
        self.confirmed.clone().unchecked_into()
    }

    /// The backend said the change failed: rolls it back now (`rollback` with code `failed`
    /// and `reason` as its message). False when it was already confirmed or rolled back.
    pub fn fail(&self, reason: Option<String>) -> bool {
        let reason = reason.unwrap_or_else(|| "the application said the change failed".into());
        self.inner.fail(&reason)
    }
}

fn promise(
    fut: impl std::future::Future<Output = Result<JsValue, Error>> + 'static,
) -> EventPromise {
    wasm_bindgen_futures::future_to_promise(async move { fut.await.map_err(|e| to_js_error(&e)) })
        .unchecked_into()
}

#[wasm_bindgen]
impl Room {
    /// The room's name.
    #[wasm_bindgen(getter)]
    pub fn name(&self) -> String {
        self.0.name().to_owned()
    }

    /// The items (pending ones with `pending: true`), sorted by id.
    pub fn items(&self) -> RoomItems {
        to_js(&self.0.items()).unchecked_into()
    }

    /// The last applied seq.
    pub fn seq(&self) -> f64 {
        self.0.seq() as f64
    }

    /// Calls `cb({items, seq, event})` on every change.
    pub fn subscribe(&self, cb: UpdateCallback) -> Result<Subscription, JsValue> {
        let f = callback(cb.into())?;
        Ok(Subscription::new(self.0.subscribe(move |u| call(&f, u))))
    }

    /// Optimistic put: resolves with the server's event, rejects (and rolls back) on refusal.
    pub fn put(
        &self,
        id: String,
        value: JsValue,
        options: Option<WriteOptionsArg>,
    ) -> EventPromise {
        let if_match = write_if_match(options);
        // The optimistic value shows at once, before the promise is awaited.
        let write = from_js::<Value>(value).map(|v| self.0.put_if(&id, v, if_match));
        promise(async move { Ok(to_js(&write?.await?)) })
    }

    /// Optimistic delete.
    pub fn delete(&self, id: String, options: Option<WriteOptionsArg>) -> EventPromise {
        let write = self.0.delete_if(&id, write_if_match(options));
        promise(async move { Ok(to_js(&write.await?)) })
    }

    /// Appends an application event `{type, data}` to the room's log (over the WebSocket
    /// when one is open, else REST; retried with the same idempotency key).
    pub fn publish(&self, event: String, data: JsValue) -> EventPromise {
        let data = if data.is_undefined() {
            Ok(Value::Null)
        } else {
            from_js::<Value>(data)
        };
        let write = data.map(|d| self.0.publish(&event, d));
        promise(async move { Ok(to_js(&write?.await?)) })
    }

    /// Shows a change the application makes through its own backend at once (`pending`),
    /// confirmed by the room's first event whose envelope `key` is `key`, rolled back by
    /// `fail(reason)` or after `timeoutMs` (default 10 000).
    pub fn expect(
        &self,
        key: &str,
        change: ExpectedChangeArg,
        options: Option<ExpectOptionsArg>,
    ) -> Result<Expectation, JsValue> {
        let change = expected_change(change.into()).map_err(|e| to_js_error(&e))?;
        let timeout_ms = options
            .map(JsValue::from)
            .filter(|o| o.is_object())
            .and_then(|o| Reflect::get(&o, &"timeoutMs".into()).ok())
            .and_then(|t| t.as_f64())
            .filter(|t| t.is_finite() && *t >= 0.0)
            .map(|t| t as u64);
        let expected = self
            .0
            .expect(key, change, timeout_ms)
            .map_err(|e| to_js_error(&e))?;
        let (handle, done) = expected.into_parts();
        let confirmed: js_sys::Promise =
            promise(async move { Ok(to_js(&done.await?)) }).unchecked_into();
        // Marks this promise as handled, so an app that only listens to rollbacks sees no
        // "uncaught (in promise)"; promises made from it with `then` still reject as usual.
        NOOP.with(|noop| {
            let _ = confirmed.catch(noop);
        });
        Ok(Expectation {
            inner: handle,
            confirmed,
        })
    }

    /// Calls `cb({id, value, version, error: {code, message}})` when a write is rolled back.
    #[wasm_bindgen(js_name = onRollback)]
    pub fn on_rollback(&self, cb: RollbackCallback) -> Result<Subscription, JsValue> {
        let f = callback(cb.into())?;
        Ok(Subscription::new(self.0.on_rollback(move |r| call(&f, r))))
    }

    /// Joins the room's presence set with `meta`.
    pub fn join(&self, meta: JsValue) -> Result<(), JsValue> {
        let meta: Value = if meta.is_undefined() {
            Value::Null
        } else {
            from_js(meta).map_err(|e| to_js_error(&e))?
        };
        self.0.join(meta).map_err(|e| to_js_error(&e))
    }

    /// Present members.
    pub fn members(&self) -> Members {
        to_js(&self.0.members()).unchecked_into()
    }

    /// Calls `cb({type, member, members})` on presence changes.
    #[wasm_bindgen(js_name = onPresence)]
    pub fn on_presence(&self, cb: PresenceCallback) -> Result<Subscription, JsValue> {
        let f = callback(cb.into())?;
        Ok(Subscription::new(self.0.on_presence(move |p| call(&f, p))))
    }

    /// Sends an ephemeral message to the others in the room.
    pub fn broadcast(&self, event: &str, data: JsValue) -> Result<(), JsValue> {
        let data: Value = if data.is_undefined() {
            Value::Null
        } else {
            from_js(data).map_err(|e| to_js_error(&e))?
        };
        self.0.broadcast(event, data).map_err(|e| to_js_error(&e))
    }

    /// Calls `cb({event, data, from})` on broadcasts from others.
    #[wasm_bindgen(js_name = onBroadcast)]
    pub fn on_broadcast(&self, cb: BroadcastCallback) -> Result<Subscription, JsValue> {
        let f = callback(cb.into())?;
        Ok(Subscription::new(self.0.on_broadcast(move |b| call(&f, b))))
    }
}
