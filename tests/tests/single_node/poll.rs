//! Long-poll: answers at once when there are events, waits `wait` seconds otherwise, and
//! answers early when a write comes during the wait.

use std::time::{Duration, Instant};

use serde_json::json;
use tidewire_tests::{PollClient, Server, WriteOptions};

use crate::start;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_answers_at_once_waits_and_wakes_on_write() {
    let server = start(Server::builder());
    let rest = server.rest();
    for i in 0..3 {
        rest.put("a", &format!("x{i}"), &json!(i), &WriteOptions::default())
            .await
            .expect("put")
            .ok();
    }
    let mut poll = PollClient::new(rest.clone(), &["a", "b"]);

    // Without a cursor the rooms start at their heads.
    let started = Instant::now();
    let events = poll.poll(1).await.expect("poll");
    assert!(
        events.is_empty(),
        "no cursor: start from now, got {events:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited the full second"
    );
    let cursor: tidewire_protocol::Cursor = poll.cursor().expect("cursor").parse().expect("cursor");
    assert_eq!((cursor.get("a"), cursor.get("b")), (Some(3), Some(0)));

    // Events exist: the answer is immediate even with a long wait.
    poll.set_cursor("a=0,b=0");
    let started = Instant::now();
    let events = poll.poll(25).await.expect("poll");
    let took = started.elapsed();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![Some(1), Some(2), Some(3)]
    );
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    let cursor: tidewire_protocol::Cursor = poll.cursor().expect("cursor").parse().expect("cursor");
    assert_eq!((cursor.get("a"), cursor.get("b")), (Some(3), Some(0)));

    // Nothing new: empty after about `wait`.
    let started = Instant::now();
    let events = poll.poll(1).await.expect("poll");
    let took = started.elapsed();
    assert!(events.is_empty());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "an empty answer after {took:?} for wait=1"
    );

    // A write during the wait ends it early.
    let writer = rest.clone();
    let write = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        writer
            .put("b", "y", &json!(1), &WriteOptions::default())
            .await
            .expect("put")
            .ok()
    });
    let started = Instant::now();
    let events = poll.poll(10).await.expect("poll");
    let took = started.elapsed();
    let written = write.await.expect("writer");
    assert_eq!(events, vec![written]);
    assert!(
        took < Duration::from_secs(3),
        "woke after {took:?} for a write at 300 ms"
    );
    assert_eq!(poll.cursor(), Some("a=3,b=1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_answers_at_most_1000_events() {
    let server = start(Server::builder().unlimited_writes());
    let rest = server.rest();
    let writes: Vec<_> = (0..4)
        .map(|w| {
            let rest = rest.clone();
            tokio::spawn(async move {
                for i in 0..300 {
                    rest.publish(
                        "bulk",
                        "test.n",
                        &json!({"w": w, "i": i}),
                        &WriteOptions::default(),
                    )
                    .await
                    .expect("publish")
                    .ok();
                }
            })
        })
        .collect();
    for w in writes {
        w.await.expect("writer");
    }
    let mut poll = PollClient::new(rest, &["bulk"]);
    poll.set_cursor("bulk=0");
    let first = poll.poll(0).await.expect("poll");
    assert_eq!(first.len(), 1000);
    assert_eq!(poll.cursor(), Some("bulk=1000"));
    let second = poll.poll(0).await.expect("poll");
    assert_eq!(second.first().and_then(|e| e.seq), Some(1001));
    assert_eq!(second.len(), 200);
}
