//! One room's state on the client: items with versions, the last applied `seq`, a reorder
//! buffer, presence members, and pending optimistic writes.
//!
//! Durable events are applied strictly in `seq` order: an event at or below the applied `seq`
//! is a duplicate and ignored; an event beyond the next `seq` waits in the reorder buffer until
//! the gap fills. A gap that stays open longer than the reorder window (see
//! [`RoomState::gap_expired`]) or a `resync` means the caller re-fetches the snapshot and calls
//! [`RoomState::load_snapshot`], which keeps whatever buffered events come after it.
//!
//! Optimistic writes ([`RoomState::begin_write`]) show in [`RoomState::items`] at once with
//! `pending: true`; they are confirmed when the event carrying their idempotency key is applied
//! (from the stream or from the write's own response) and dropped by [`RoomState::rollback`].
//!
//! ```
//! use tidewire_client::room::{RoomState, WriteOp};
//! use tidewire_protocol::{Envelope, Snapshot};
//! let mut room = RoomState::new("board", 500);
//! room.load_snapshot(Snapshot { room: "board".into(), seq: 0, items: Default::default() }, 0);
//! room.begin_write("k1", "a", WriteOp::Put(serde_json::json!(1)));
//! assert!(room.items()[0].pending);
//! let env: Envelope = Envelope::decode(r#"{"v":1,"type":"item.put","room":"board","seq":1,"id":"e1",
//!     "ts":"t","key":"k1","data":{"id":"a","value":1,"version":1}}"#).unwrap();
//! let out = room.apply(env, 0);
//! assert_eq!(out.applied.len(), 1);
//! assert!(!room.items()[0].pending);
//! assert_eq!(room.seq(), 1);
//! ```

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use tidewire_protocol::{Envelope, Event, Member, Snapshot};

/// An item as the application sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(rename = "RoomItem"))]
pub struct ViewItem {
    /// The item id.
    pub id: String,
    /// The value (the optimistic one while `pending`).
    #[cfg_attr(feature = "ts", ts(type = "any"))]
    pub value: Value,
    /// The last confirmed version (0 when the item was never confirmed).
    pub version: u64,
    /// Whether an optimistic write to this item is not yet confirmed.
    pub pending: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct Confirmed {
    value: Value,
    version: u64,
}

/// A local write not yet confirmed.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    /// Upsert with this value.
    Put(Value),
    /// Delete.
    Delete,
}

/// A pending optimistic write.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingWrite {
    /// Its idempotency key.
    pub key: String,
    /// The item.
    pub id: String,
    /// What it does.
    pub op: WriteOp,
}

/// What [`RoomState::apply`] did.
#[derive(Debug, Default)]
pub struct ApplyOutcome {
    /// Durable events applied, in `seq` order (possibly several when a gap filled).
    pub applied: Vec<Envelope>,
    /// The event was at or below the applied `seq` (or already buffered) and was ignored.
    pub duplicate: bool,
    /// The event waits in the reorder buffer.
    pub buffered: bool,
}

/// One room. See the module docs.
#[derive(Debug)]
pub struct RoomState {
    name: String,
    seq: u64,
    synced: bool,
    items: BTreeMap<String, Confirmed>,
    buffer: BTreeMap<u64, Envelope>,
    gap_since_ms: Option<u64>,
    reorder_window_ms: u64,
    pending: Vec<PendingWrite>,
    members: Vec<Member>,
}

impl RoomState {
    /// An empty, not yet synced room. Gaps older than `reorder_window_ms` expire.
    pub fn new(name: impl Into<String>, reorder_window_ms: u64) -> RoomState {
        RoomState {
            name: name.into(),
            seq: 0,
            synced: false,
            items: BTreeMap::new(),
            buffer: BTreeMap::new(),
            gap_since_ms: None,
            reorder_window_ms,
            pending: Vec::new(),
            members: Vec::new(),
        }
    }

    /// The room's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `seq` of the last applied event (the snapshot's before any event).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether a snapshot was loaded (events before it are buffered).
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// How many events wait in the reorder buffer.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Pending optimistic writes, oldest first.
    pub fn pending(&self) -> &[PendingWrite] {
        &self.pending
    }

    /// Present members.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Replaces the state with a snapshot, then applies buffered events that follow it.
    pub fn load_snapshot(&mut self, snapshot: Snapshot, now_ms: u64) -> Vec<Envelope> {
        self.items = snapshot
            .items
            .into_iter()
            .map(|(id, s)| {
                (
                    id,
                    Confirmed {
                        value: s.value,
                        version: s.version,
                    },
                )
            })
            .collect();
        self.seq = snapshot.seq;
        self.synced = true;
        self.buffer = self.buffer.split_off(&(self.seq + 1));
        let applied = self.drain_buffer();
        self.gap_since_ms = (!self.buffer.is_empty()).then_some(now_ms);
        applied
    }

    /// Applies a durable event (ephemeral ones go to [`RoomState::apply_presence`]).
    pub fn apply(&mut self, env: Envelope, now_ms: u64) -> ApplyOutcome {
        let mut out = ApplyOutcome::default();
        let Some(seq) = env.seq else {
            return out;
        };
        if self.synced && seq <= self.seq {
            if let Some(key) = &env.key {
                self.pending.retain(|p| &p.key != key);
            }
            out.duplicate = true;
            return out;
        }
        if !self.synced || seq > self.seq + 1 {
            match self.buffer.entry(seq) {
                std::collections::btree_map::Entry::Occupied(_) => out.duplicate = true,
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(env);
                    out.buffered = true;
                    if self.synced && self.gap_since_ms.is_none() {
                        self.gap_since_ms = Some(now_ms);
                    }
                }
            }
            return out;
        }
        self.apply_one(&env);
        out.applied.push(env);
        out.applied.extend(self.drain_buffer());
        if self.buffer.is_empty() {
            self.gap_since_ms = None;
        } else {
            self.gap_since_ms = Some(now_ms);
        }
        out
    }

    /// Whether a gap has stayed open for the whole reorder window: re-fetch the snapshot.
    pub fn gap_expired(&self, now_ms: u64) -> bool {
        self.gap_since_ms
            .is_some_and(|t| now_ms.saturating_sub(t) >= self.reorder_window_ms)
    }

    /// When the current gap expires, if there is one.
    pub fn gap_deadline(&self) -> Option<u64> {
        self.gap_since_ms.map(|t| t + self.reorder_window_ms)
    }

    fn drain_buffer(&mut self) -> Vec<Envelope> {
        let mut applied = Vec::new();
        while let Some(env) = self.buffer.remove(&(self.seq + 1)) {
            self.apply_one(&env);
            applied.push(env);
        }
        applied
    }

    fn apply_one(&mut self, env: &Envelope) {
        if let Some(seq) = env.seq {
            self.seq = seq;
        }
        match &env.event {
            Event::ItemPut(item) => {
                self.items.insert(
                    item.id.clone(),
                    Confirmed {
                        value: item.value.clone(),
                        version: item.version,
                    },
                );
            }
            Event::ItemDeleted(d) => {
                self.items.remove(&d.id);
            }
            _ => {}
        }
        if let Some(key) = &env.key {
            self.pending.retain(|p| &p.key != key);
        }
    }

    /// Updates the presence set from a `presence.*` event; returns whether it was one.
    pub fn apply_presence(&mut self, event: &Event) -> bool {
        match event {
            Event::PresenceState(s) => self.members = s.members.clone(),
            Event::PresenceJoin(m) => {
                self.members.retain(|x| x.client_id != m.client_id);
                self.members.push(m.clone());
            }
            Event::PresenceLeave(m) => self.members.retain(|x| x.client_id != m.client_id),
            _ => return false,
        }
        true
    }

    /// The version to send as `If-Match` for a new write to `id`: the confirmed version plus
    /// one per earlier pending write to it; `None` when the item is unknown.
    pub fn expected_version(&self, id: &str) -> Option<u64> {
        let base = self.items.get(id)?.version;
        let earlier = self.pending.iter().filter(|p| p.id == id).count() as u64;
        Some(base + earlier)
    }

    /// Records an optimistic write; it shows in [`RoomState::items`] at once.
    pub fn begin_write(&mut self, key: impl Into<String>, id: impl Into<String>, op: WriteOp) {
        self.pending.push(PendingWrite {
            key: key.into(),
            id: id.into(),
            op,
        });
    }

    /// Whether the write with this key is still pending.
    pub fn is_pending(&self, key: &str) -> bool {
        self.pending.iter().any(|p| p.key == key)
    }

    /// Drops a pending write (the server refused it); returns it.
    pub fn rollback(&mut self, key: &str) -> Option<PendingWrite> {
        let i = self.pending.iter().position(|p| p.key == key)?;
        Some(self.pending.remove(i))
    }

    /// The confirmed value of an item, if it exists.
    pub fn confirmed(&self, id: &str) -> Option<(&Value, u64)> {
        self.items.get(id).map(|c| (&c.value, c.version))
    }

    /// The items as the application sees them: confirmed state with pending writes on top,
    /// sorted by id.
    pub fn items(&self) -> Vec<ViewItem> {
        let mut view: BTreeMap<&str, ViewItem> = self
            .items
            .iter()
            .map(|(id, c)| {
                (
                    id.as_str(),
                    ViewItem {
                        id: id.clone(),
                        value: c.value.clone(),
                        version: c.version,
                        pending: false,
                    },
                )
            })
            .collect();
        for p in &self.pending {
            match &p.op {
                WriteOp::Put(value) => {
                    let version = self.items.get(&p.id).map_or(0, |c| c.version);
                    view.insert(
                        p.id.as_str(),
                        ViewItem {
                            id: p.id.clone(),
                            value: value.clone(),
                            version,
                            pending: true,
                        },
                    );
                }
                WriteOp::Delete => {
                    view.remove(p.id.as_str());
                }
            }
        }
        view.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tidewire_protocol::ItemState;

    fn put(seq: u64, id: &str, value: Value, version: u64, key: Option<&str>) -> Envelope {
        let text = json!({"v":1,"type":"item.put","room":"r","seq":seq,"id":format!("e{seq}"),
            "ts":"t","key":key,"data":{"id":id,"value":value,"version":version}})
        .to_string();
        Envelope::decode(&text).unwrap()
    }

    fn del(seq: u64, id: &str, version: u64) -> Envelope {
        let text = json!({"v":1,"type":"item.deleted","room":"r","seq":seq,"id":"d",
            "ts":"t","key":null,"data":{"id":id,"version":version}})
        .to_string();
        Envelope::decode(&text).unwrap()
    }

    fn snapshot(seq: u64, items: &[(&str, Value, u64)]) -> Snapshot {
        Snapshot {
            room: "r".into(),
            seq,
            items: items
                .iter()
                .map(|(id, v, ver)| {
                    (
                        id.to_string(),
                        ItemState {
                            value: v.clone(),
                            version: *ver,
                            updated_at: "t".into(),
                        },
                    )
                })
                .collect(),
        }
    }

    fn synced() -> RoomState {
        let mut r = RoomState::new("r", 100);
        r.load_snapshot(snapshot(0, &[]), 0);
        r
    }

    #[test]
    fn in_order_duplicates_and_reorder() {
        let mut r = synced();
        assert_eq!(r.apply(put(1, "a", json!(1), 1, None), 0).applied.len(), 1);
        assert!(r.apply(put(1, "a", json!(1), 1, None), 0).duplicate);
        let out = r.apply(put(3, "a", json!(3), 3, None), 0);
        assert!(out.buffered);
        assert!(r.apply(put(3, "a", json!(3), 3, None), 0).duplicate);
        let out = r.apply(put(2, "a", json!(2), 2, None), 10);
        let seqs: Vec<u64> = out.applied.iter().map(|e| e.seq.unwrap()).collect();
        assert_eq!(seqs, vec![2, 3]);
        assert_eq!(r.seq(), 3);
        assert_eq!(r.items()[0].value, json!(3));
        assert_eq!(r.gap_deadline(), None);
    }

    #[test]
    fn gap_expires_after_window_and_snapshot_keeps_later_events() {
        let mut r = synced();
        r.apply(put(1, "a", json!(1), 1, None), 0);
        r.apply(put(4, "b", json!(4), 1, None), 50);
        assert!(!r.gap_expired(149));
        assert!(r.gap_expired(150));
        // The snapshot reflects seq 3; event 4 is kept and applied after it.
        let applied = r.load_snapshot(snapshot(3, &[("a", json!(3), 3)]), 200);
        assert_eq!(applied.len(), 1);
        assert_eq!(r.seq(), 4);
        let ids: Vec<String> = r.items().into_iter().map(|i| i.id).collect();
        assert_eq!(ids, vec!["a", "b"]);
        assert!(!r.gap_expired(10_000));
    }

    #[test]
    fn events_before_the_first_snapshot_are_buffered() {
        let mut r = RoomState::new("r", 100);
        assert!(r.apply(put(5, "a", json!(5), 5, None), 0).buffered);
        assert!(!r.gap_expired(1_000), "no gap timer before the snapshot");
        let applied = r.load_snapshot(snapshot(4, &[("a", json!(4), 4)]), 0);
        assert_eq!(applied.len(), 1);
        assert_eq!(r.confirmed("a").unwrap().1, 5);
    }

    #[test]
    fn delete_removes_and_app_events_advance_seq() {
        let mut r = synced();
        r.apply(put(1, "a", json!(1), 1, None), 0);
        r.apply(del(2, "a", 2), 0);
        assert!(r.items().is_empty());
        let app = Envelope::decode(
            r#"{"v":1,"type":"chat.msg","room":"r","seq":3,"id":"x","ts":"t","key":null,"data":{}}"#,
        )
        .unwrap();
        assert_eq!(r.apply(app, 0).applied.len(), 1);
        assert_eq!(r.seq(), 3);
    }

    #[test]
    fn optimistic_put_confirmed_by_key_even_as_duplicate() {
        let mut r = synced();
        r.apply(put(1, "a", json!(1), 1, None), 0);
        assert_eq!(r.expected_version("a"), Some(1));
        r.begin_write("k", "a", WriteOp::Put(json!("mine")));
        assert_eq!(r.expected_version("a"), Some(2));
        let v = r.items();
        assert_eq!(
            (v[0].value.clone(), v[0].pending, v[0].version),
            (json!("mine"), true, 1)
        );
        // The stream delivered it first; the response comes later as a duplicate.
        r.apply(put(2, "a", json!("mine"), 2, Some("k")), 0);
        assert!(!r.is_pending("k"));
        assert!(
            r.apply(put(2, "a", json!("mine"), 2, Some("k")), 0)
                .duplicate
        );
        assert_eq!(r.items()[0].version, 2);
    }

    #[test]
    fn rollback_restores_confirmed_value() {
        let mut r = synced();
        r.apply(put(1, "a", json!("server"), 1, None), 0);
        r.begin_write("k1", "a", WriteOp::Put(json!("mine")));
        r.begin_write("k2", "b", WriteOp::Delete);
        r.begin_write("k3", "a", WriteOp::Delete);
        assert!(r.items().is_empty());
        let p = r.rollback("k3").unwrap();
        assert_eq!(p.op, WriteOp::Delete);
        assert_eq!(r.items()[0].value, json!("mine"));
        r.rollback("k1");
        assert_eq!(r.items()[0].value, json!("server"));
        assert!(!r.items()[0].pending);
        assert!(r.rollback("nope").is_none());
        assert_eq!(r.expected_version("zzz"), None);
    }

    #[test]
    fn pending_survives_a_snapshot_reload() {
        let mut r = synced();
        r.begin_write("k", "a", WriteOp::Put(json!(1)));
        r.load_snapshot(snapshot(7, &[]), 0);
        assert!(r.items()[0].pending);
        assert_eq!(r.seq(), 7);
    }

    #[test]
    fn presence_set() {
        let mut r = synced();
        let m = |id: &str| Member {
            client_id: id.into(),
            user: None,
            meta: json!({"name": id}),
        };
        assert!(
            r.apply_presence(&Event::PresenceState(tidewire_protocol::PresenceState {
                members: vec![m("a"), m("b")]
            }))
        );
        r.apply_presence(&Event::PresenceJoin(m("c")));
        r.apply_presence(&Event::PresenceJoin(m("a")));
        r.apply_presence(&Event::PresenceLeave(m("b")));
        let ids: Vec<&str> = r.members().iter().map(|m| m.client_id.as_str()).collect();
        assert_eq!(ids, vec!["c", "a"]);
        assert!(
            !r.apply_presence(&Event::ItemDeleted(tidewire_protocol::ItemDeleted {
                id: "x".into(),
                version: 1
            }))
        );
    }
}
