//! Writes: idempotent retries append once; a stale `If-Match` conflicts and appends nothing;
//! versions and tombstones.

use futures::future::join_all;
use serde_json::json;
use tidewire_protocol::{ErrorCode, Event, Item};
use tidewire_tests::{Server, WriteOptions};

use crate::start;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_retries_of_one_put_append_once() {
    let server = start(Server::builder());
    let rest = server.rest();
    let value = json!({"seat": "12A", "free": false});
    let answers = join_all((0..50).map(|_| {
        let rest = rest.clone();
        let value = value.clone();
        async move {
            rest.put("flight", "12A", &value, &WriteOptions::key("book-12A"))
                .await
                .expect("request completes")
        }
    }))
    .await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert!(statuses.iter().all(|s| *s == 200), "statuses {statuses:?}");
    let replayed = answers
        .iter()
        .filter(|a| a.header("idempotency-replayed") == Some("true"))
        .count();
    let envelopes: Vec<_> = answers.into_iter().map(|a| a.ok()).collect();
    let first = &envelopes[0];
    for env in &envelopes {
        assert_eq!(env, first, "every retry answers the same envelope");
    }
    assert_eq!(first.seq, Some(1));
    assert_eq!(first.key.as_deref(), Some("book-12A"));
    assert_eq!(replayed, 49, "all but the first answer are replays");

    let history = rest.history_all("flight", 0).await.expect("history");
    assert_eq!(history.len(), 1, "exactly one event: {history:?}");
    assert_eq!(&history[0], first);
    let snapshot = rest.snapshot("flight").await.expect("snapshot").ok();
    assert_eq!(snapshot.seq, 1);
    assert_eq!(snapshot.items["12A"].version, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_of_one_publish_append_once() {
    let server = start(Server::builder());
    let rest = server.rest();
    let answers = join_all((0..20).map(|_| {
        let rest = rest.clone();
        async move {
            rest.publish(
                "chat",
                "chat.message",
                &json!({"text": "hi"}),
                &WriteOptions::key("m-1"),
            )
            .await
            .expect("request completes")
        }
    }))
    .await;
    let envelopes: Vec<_> = answers.into_iter().map(|a| a.ok()).collect();
    assert!(envelopes.iter().all(|e| e == &envelopes[0]));
    let history = rest.history_all("chat", 0).await.expect("history");
    assert_eq!(history.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_with_another_request_is_422() {
    let server = start(Server::builder());
    let rest = server.rest();
    let first = rest
        .put("r", "x", &json!({"n": 1}), &WriteOptions::key("k-1"))
        .await
        .expect("put")
        .ok();

    let cases = [
        (
            "other body",
            rest.put("r", "x", &json!({"n": 2}), &WriteOptions::key("k-1"))
                .await,
        ),
        (
            "other item",
            rest.put("r", "y", &json!({"n": 1}), &WriteOptions::key("k-1"))
                .await,
        ),
        (
            "other If-Match",
            rest.put(
                "r",
                "x",
                &json!({"n": 1}),
                &WriteOptions::key("k-1").if_match("1"),
            )
            .await,
        ),
        (
            "other method",
            rest.delete("r", "x", &WriteOptions::key("k-1")).await,
        ),
        (
            "publish",
            rest.publish("r", "chat.message", &json!({}), &WriteOptions::key("k-1"))
                .await,
        ),
    ];
    for (what, answer) in cases {
        let answer = answer.expect("request completes");
        assert_eq!(answer.status, 422, "{what}");
        assert_eq!(
            answer.problem().code,
            ErrorCode::IdempotencyKeyReused,
            "{what}"
        );
    }
    // The same request still replays the first outcome.
    let again = rest
        .put("r", "x", &json!({"n": 1}), &WriteOptions::key("k-1"))
        .await
        .expect("put");
    assert_eq!(again.header("idempotency-replayed"), Some("true"));
    assert_eq!(again.ok(), first);
    // The key is scoped per room.
    let other_room = rest
        .put("r2", "x", &json!({"n": 9}), &WriteOptions::key("k-1"))
        .await
        .expect("put")
        .ok();
    assert_eq!(other_room.seq, Some(1));
    assert_eq!(rest.history_all("r", 0).await.expect("history").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_match_is_409_with_current_and_appends_nothing() {
    let server = start(Server::builder());
    let rest = server.rest();
    let v1 = rest
        .put("r", "x", &json!("a"), &WriteOptions::default())
        .await
        .expect("put");
    assert_eq!(v1.header("etag"), Some("\"1\""));
    let v2 = rest
        .put(
            "r",
            "x",
            &json!("b"),
            &WriteOptions::default().if_match("\"1\""),
        )
        .await
        .expect("put");
    assert_eq!(v2.status, 200);
    assert_eq!(v2.header("etag"), Some("\"2\""));
    let before = rest.history_all("r", 0).await.expect("history");
    let snapshot_before = rest.snapshot("r").await.expect("snapshot").ok();

    for stale in ["\"1\"", "1", "W/\"1\"", "0"] {
        let answer = rest
            .put(
                "r",
                "x",
                &json!("c"),
                &WriteOptions::default().if_match(stale),
            )
            .await
            .expect("put");
        assert_eq!(answer.status, 409, "If-Match {stale}");
        let p = answer.problem();
        assert_eq!(p.code, ErrorCode::VersionConflict);
        assert_eq!(
            p.current,
            Some(Item {
                id: "x".into(),
                value: json!("b"),
                version: 2
            }),
            "If-Match {stale}: current is the item as it is now"
        );
    }
    let answer = rest
        .delete("r", "x", &WriteOptions::default().if_match("1"))
        .await
        .expect("delete");
    assert_eq!(answer.status, 409);
    assert_eq!(
        answer.problem().current.as_ref().map(|c| c.version),
        Some(2)
    );
    // A conflict on an item that does not exist has no `current`.
    let answer = rest
        .put(
            "r",
            "ghost",
            &json!(1),
            &WriteOptions::default().if_match("3"),
        )
        .await
        .expect("put");
    assert_eq!(answer.status, 409);
    assert_eq!(answer.problem().current, None);

    assert_eq!(
        rest.history_all("r", 0).await.expect("history"),
        before,
        "nothing appended"
    );
    assert_eq!(
        rest.snapshot("r").await.expect("snapshot").ok(),
        snapshot_before
    );

    // The right version wins.
    let v3 = rest
        .put(
            "r",
            "x",
            &json!("c"),
            &WriteOptions::default().if_match("W/\"2\""),
        )
        .await
        .expect("put")
        .ok();
    assert!(matches!(&v3.event, Event::ItemPut(i) if i.version == 3));
    // If-Match 0: only if the item does not exist.
    let fresh = rest
        .put(
            "r",
            "new",
            &json!(1),
            &WriteOptions::default().if_match("0"),
        )
        .await
        .expect("put")
        .ok();
    assert!(matches!(&fresh.event, Event::ItemPut(i) if i.version == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_leaves_a_tombstone_and_versions_continue() {
    let server = start(Server::builder());
    let rest = server.rest();
    rest.put("r", "x", &json!(1), &WriteOptions::default())
        .await
        .expect("put")
        .ok();
    let deleted = rest
        .delete("r", "x", &WriteOptions::default())
        .await
        .expect("delete")
        .ok();
    match &deleted.event {
        Event::ItemDeleted(d) => assert_eq!((d.id.as_str(), d.version), ("x", 2)),
        other => panic!("expected item.deleted, got {other:?}"),
    }
    let snapshot = rest.snapshot("r").await.expect("snapshot").ok();
    assert!(
        !snapshot.items.contains_key("x"),
        "deleted items leave the snapshot"
    );
    assert_eq!(snapshot.seq, 2);
    let again = rest
        .delete("r", "x", &WriteOptions::default())
        .await
        .expect("delete");
    assert_eq!(again.status, 404);
    assert_eq!(again.problem().code, ErrorCode::NotFound);
    let back = rest
        .put("r", "x", &json!(2), &WriteOptions::default())
        .await
        .expect("put")
        .ok();
    assert!(matches!(&back.event, Event::ItemPut(i) if i.version == 3));
}
