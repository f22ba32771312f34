//! Behaviour tests written once against `&dyn Store`; every implementation's unit tests run
//! [`run`] with a store opened with [`RETENTION`], and [`run_concurrent`]. Compiled only for
//! this crate's unit tests.
//!
//! ```text
//! // In a backend's unit tests:
//! let store = SqliteStore::open("sqlite::memory:", test_suite::RETENTION).await?;
//! crate::store::test_suite::run(&store).await;
//! ```

use std::sync::Arc;

use serde_json::json;
use tidewire_protocol::{Event, RawAppEvent};

use super::{Retention, Store, WriteOp, WriteRequest};
use crate::clock::now;
use crate::Error;

/// The retention the suite expects: 5 events per room, a day, a day for keys.
pub const RETENTION: Retention = Retention {
    events: 5,
    secs: 86_400,
    idempotency_secs: 86_400,
};

fn put(room: &str, id: &str, value: serde_json::Value) -> WriteRequest {
    WriteRequest::new(
        room,
        WriteOp::Put {
            id: id.into(),
            value,
        },
    )
}

fn publish(room: &str, ty: &str) -> WriteRequest {
    WriteRequest::new(
        room,
        WriteOp::Publish(RawAppEvent {
            event_type: ty.into(),
            data: json!({"n": 1}),
        }),
    )
}

/// Runs every behaviour test. Panics on the first failure.
pub async fn run(store: &dyn Store) {
    contiguous_seq(store).await;
    snapshot_matches_seq(store).await;
    idempotency(store).await;
    if_match(store).await;
    tombstones(store).await;
    retention_by_count(store).await;
    retention_by_time(store).await;
    read_after_limit(store).await;
    batch(store).await;
    batch_retention(store).await;
}

/// Runs the concurrency test, which needs a shared store.
pub async fn run_concurrent(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .write(put("conc", "x", json!({"v": 1})).key("same-key"))
                .await
        }));
    }
    let mut first_seq = None;
    let mut replays = 0;
    for t in tasks {
        let w = t.await.expect("task").expect("write");
        let seq = w.envelope.seq;
        assert_eq!(
            *first_seq.get_or_insert(seq),
            seq,
            "every retry answers one event"
        );
        replays += usize::from(w.replayed);
    }
    assert_eq!(replays, 49);
    assert_eq!(store.head("conc").await.unwrap(), 1, "one event appended");
}

async fn contiguous_seq(store: &dyn Store) {
    for i in 1..=3u64 {
        let w = store.write(publish("seq-a", "chat.msg")).await.unwrap();
        assert_eq!(w.envelope.seq, Some(i));
        assert!(!w.replayed);
        assert_eq!(w.envelope.room, "seq-a");
        assert_eq!(w.envelope.id.len(), 26, "a ULID");
        assert!(w.envelope.ts.ends_with('Z'));
    }
    // Rooms are independent.
    let w = store.write(publish("seq-b", "chat.msg")).await.unwrap();
    assert_eq!(w.envelope.seq, Some(1));
    assert_eq!(store.head("seq-a").await.unwrap(), 3);
    assert_eq!(store.head("nowhere").await.unwrap(), 0);
}

async fn snapshot_matches_seq(store: &dyn Store) {
    store.write(put("snap", "a", json!(1))).await.unwrap();
    store
        .write(put("snap", "b", json!({"x": true})))
        .await
        .unwrap();
    store.write(put("snap", "a", json!(2))).await.unwrap();
    let s = store.snapshot("snap").await.unwrap();
    assert_eq!(s.seq, 3);
    assert_eq!(s.items.len(), 2);
    assert_eq!(s.items["a"].value, json!(2));
    assert_eq!(s.items["a"].version, 2);
    assert_eq!(s.items["b"].version, 1);
    let empty = store.snapshot("snap-empty").await.unwrap();
    assert_eq!((empty.seq, empty.items.len()), (0, 0));
}

async fn idempotency(store: &dyn Store) {
    let first = store
        .write(put("idem", "a", json!(1)).key("k1"))
        .await
        .unwrap();
    let again = store
        .write(put("idem", "a", json!(1)).key("k1"))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.json, first.json, "same response bytes");
    assert_eq!(
        store.head("idem").await.unwrap(),
        1,
        "nothing appended twice"
    );
    let err = store
        .write(put("idem", "a", json!(2)).key("k1"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::IdempotencyKeyReused(_)), "{err}");
    // Keys are scoped per room.
    let other = store
        .write(put("idem-2", "a", json!(2)).key("k1"))
        .await
        .unwrap();
    assert!(!other.replayed);
    assert_eq!(first.envelope.key.as_deref(), Some("k1"));
}

async fn if_match(store: &dyn Store) {
    store
        .write(put("ifm", "a", json!(1)).if_match(0))
        .await
        .unwrap();
    let err = store
        .write(put("ifm", "a", json!(2)).if_match(0))
        .await
        .unwrap_err();
    match err {
        Error::VersionConflict { current, .. } => {
            let cur = current.expect("current item");
            assert_eq!((cur.version, cur.value), (1, json!(1)));
        }
        other => panic!("{other}"),
    }
    let err = store
        .write(put("ifm", "missing", json!(2)).if_match(3))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::VersionConflict { current: None, .. }));
    assert_eq!(
        store.head("ifm").await.unwrap(),
        1,
        "conflicts append nothing"
    );
    let ok = store
        .write(put("ifm", "a", json!(3)).if_match(1))
        .await
        .unwrap();
    assert_eq!(ok.envelope.seq, Some(2));
}

async fn tombstones(store: &dyn Store) {
    store.write(put("tomb", "a", json!(1))).await.unwrap();
    let del = store
        .write(WriteRequest::new(
            "tomb",
            WriteOp::Delete { id: "a".into() },
        ))
        .await
        .unwrap();
    match del.envelope.event {
        Event::ItemDeleted(d) => assert_eq!(d.version, 2),
        other => panic!("{other:?}"),
    }
    assert!(store.snapshot("tomb").await.unwrap().items.is_empty());
    let err = store
        .write(WriteRequest::new(
            "tomb",
            WriteOp::Delete { id: "a".into() },
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)));
    let again = store.write(put("tomb", "a", json!(9))).await.unwrap();
    match again.envelope.event {
        Event::ItemPut(i) => assert_eq!(i.version, 3, "continues from the tombstone"),
        other => panic!("{other:?}"),
    }
    let s = store.snapshot("tomb").await.unwrap();
    assert_eq!((s.seq, s.items["a"].version), (3, 3));
}

async fn retention_by_count(store: &dyn Store) {
    for _ in 0..8 {
        store.write(publish("ret", "e")).await.unwrap();
    }
    // Keeps the last 5: seq 4..=8.
    let all = store.read("ret", 0, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [4, 5, 6, 7, 8]
    );
    assert!(
        store.read("ret", 3, 100).await.is_ok(),
        "3 + 1 is still held"
    );
    let err = store.read("ret", 2, 100).await.unwrap_err();
    assert!(
        matches!(err, Error::HistoryTrimmed { after: 2, head: 8 }),
        "{err}"
    );
    assert_eq!(store.head("ret").await.unwrap(), 8);
}

async fn retention_by_time(store: &dyn Store) {
    store.write(publish("ret-t", "e")).await.unwrap();
    store.write(publish("ret-t", "e")).await.unwrap();
    let (_, now_ms) = now();
    let removed = store.trim_expired(now_ms + 60_000).await.unwrap();
    assert!(removed >= 2);
    assert_eq!(store.head("ret-t").await.unwrap(), 2, "head is kept");
    assert!(matches!(
        store.read("ret-t", 1, 10).await,
        Err(Error::HistoryTrimmed { .. })
    ));
    assert!(store.read("ret-t", 2, 10).await.unwrap().is_empty());
    let next = store.write(publish("ret-t", "e")).await.unwrap();
    assert_eq!(next.envelope.seq, Some(3), "seq continues after trimming");
    assert_eq!(store.read("ret-t", 2, 10).await.unwrap().len(), 1);
}

async fn read_after_limit(store: &dyn Store) {
    for _ in 0..4 {
        store.write(publish("rd", "e")).await.unwrap();
    }
    let page = store.read("rd", 1, 2).await.unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
    let env = page[0].envelope().unwrap();
    assert_eq!((env.room.as_str(), env.seq), ("rd", Some(2)));
    assert!(store.read("rd", 4, 10).await.unwrap().is_empty());
    assert!(store.read("rd", 40, 10).await.unwrap().is_empty());
    assert!(store.read("rd-none", 0, 10).await.unwrap().is_empty());
}

/// A batch answers what the same writes one after the other would have answered.
async fn batch(store: &dyn Store) {
    store.write(publish("bat", "e")).await.unwrap();
    let results = store
        .write_batch(vec![
            publish("bat", "e"),
            put("bat", "x", json!(1)).if_match(0),
            put("bat", "x", json!(2)).if_match(0),
            put("bat-2", "y", json!(1)).key("k"),
            put("bat", "y", json!(1)).key("k"),
            put("bat", "y", json!(1)).key("k"),
            put("bat", "y", json!(2)).key("k"),
            WriteRequest::new("bat", WriteOp::Delete { id: "z".into() }),
            put("bat", "x", json!(3)).if_match(1),
        ])
        .await;
    assert_eq!(results.len(), 9);
    let seq = |i: usize| match &results[i] {
        Ok(w) => (w.envelope.room.clone(), w.envelope.seq.unwrap(), w.replayed),
        Err(e) => panic!("write {i}: {e}"),
    };
    assert_eq!(seq(0), ("bat".into(), 2, false));
    assert_eq!(seq(1), ("bat".into(), 3, false));
    assert!(
        matches!(&results[2], Err(Error::VersionConflict { current: Some(c), .. }) if c.version == 1),
        "sees the put before it"
    );
    assert_eq!(seq(3), ("bat-2".into(), 1, false), "rooms are independent");
    assert_eq!(seq(4), ("bat".into(), 4, false));
    assert_eq!(
        seq(5),
        ("bat".into(), 4, true),
        "the key recorded just before"
    );
    match (&results[4], &results[5]) {
        (Ok(a), Ok(b)) => assert_eq!(a.json, b.json, "same response bytes"),
        _ => unreachable!(),
    }
    assert!(matches!(&results[6], Err(Error::IdempotencyKeyReused(_))));
    assert!(matches!(&results[7], Err(Error::NotFound(_))));
    assert_eq!(seq(8), ("bat".into(), 5, false));
    assert_eq!(store.head("bat").await.unwrap(), 5);
    assert_eq!(store.head("bat-2").await.unwrap(), 1);
    let log = store.read("bat", 1, 10).await.unwrap();
    assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3, 4, 5]);
    let snap = store.snapshot("bat").await.unwrap();
    assert_eq!(snap.seq, 5);
    assert_eq!(
        (snap.items["x"].version, &snap.items["x"].value),
        (2, &json!(3))
    );
    assert!(store.write_batch(Vec::new()).await.is_empty());
}

/// Retention holds after a batch appends past the per-room limit.
async fn batch_retention(store: &dyn Store) {
    let results = store
        .write_batch((0..7).map(|_| publish("bat-ret", "e")).collect())
        .await;
    assert!(results.iter().all(Result::is_ok));
    let all = store.read("bat-ret", 0, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [3, 4, 5, 6, 7]
    );
    assert_eq!(store.head("bat-ret").await.unwrap(), 7);
}
