//! The outbox against the machine's PostgreSQL: the SQL functions' checks, and the consumer
//! writing into a recording sink (order, keys, dead letters, replays after a crash).

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::{Connection, PgConnection};
use tidewire_protocol::{Envelope, Event};

use super::consumer::{Consumer, Options};
use super::{install::install, Health, Limits, Sink};
use crate::store::postgres::testing;
use crate::store::{WriteOp, WriteRequest, Written};
use crate::{Error, Result};

const LIMITS: Limits = Limits {
    max_item_bytes: 1000,
    max_data_bytes: 2000,
};

async fn fresh() -> Option<(String, PgConnection)> {
    if !testing::ensure().await {
        return None;
    }
    let (name, url) = testing::create_database().await;
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    install(&mut conn, LIMITS).await.expect("install");
    Some((name, conn))
}

async fn rows(conn: &mut PgConnection) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM tidewire.outbox")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// Every function refuses what the server would, with its SQLSTATE, and the caller's
/// transaction commits nothing of it.
#[tokio::test]
async fn bad_arguments_raise_inside_the_callers_transaction() {
    let Some((name, mut conn)) = fresh().await else {
        return;
    };
    let big = format!("'\"{}\"'::jsonb", "x".repeat(1000));
    let long = "r".repeat(129);
    let cases: Vec<(String, &str, &str)> = vec![
        (
            "tidewire.publish('a b', 'chat', '1')".into(),
            "22023",
            "bad room",
        ),
        (
            format!("tidewire.publish('{long}', 'chat', '1')"),
            "22023",
            "bad room",
        ),
        (
            "tidewire.publish('r', 'item.put', '1')".into(),
            "22023",
            "reserved",
        ),
        (
            "tidewire.publish('r', 'broadcast', '1')".into(),
            "22023",
            "reserved",
        ),
        (
            "tidewire.publish('r', 'bad type', '1')".into(),
            "22023",
            "bad type",
        ),
        (
            format!("tidewire.publish('r', '{}', '1')", "t".repeat(65)),
            "22023",
            "bad type",
        ),
        (
            "tidewire.publish(NULL, 'chat', '1')".into(),
            "22004",
            "room must not be null",
        ),
        (
            "tidewire.publish('r', NULL, '1')".into(),
            "22004",
            "type must not be null",
        ),
        (
            "tidewire.publish('r', 'chat', NULL)".into(),
            "22004",
            "data must not be null",
        ),
        (
            "tidewire.publish('r', 'chat', to_jsonb(repeat('x', 2000)))".into(),
            "54000",
            "too large",
        ),
        (
            "tidewire.publish('r', 'chat', '1', 'a key')".into(),
            "22023",
            "bad key",
        ),
        ("tidewire.put_item('r', 'é', '1')".into(), "22023", "bad id"),
        ("tidewire.put_item('r', '', '1')".into(), "22023", "bad id"),
        (
            "tidewire.put_item('r', NULL, '1')".into(),
            "22004",
            "id must not be null",
        ),
        (
            "tidewire.put_item('r', 'a', NULL)".into(),
            "22004",
            "value must not be null",
        ),
        (
            format!("tidewire.put_item('r', 'a', {big})"),
            "54000",
            "too large",
        ),
        (
            format!("tidewire.put_item('r', 'a', '1', '{}')", "k".repeat(129)),
            "22023",
            "bad key",
        ),
        (
            "tidewire.put_item('a/b', 'a', '1')".into(),
            "22023",
            "bad room",
        ),
        ("tidewire.delete_item('r', 'a b')".into(), "22023", "bad id"),
        (
            "tidewire.delete_item(NULL, 'a')".into(),
            "22004",
            "must not be null",
        ),
        (
            "tidewire.delete_item('r', 'a', '')".into(),
            "22023",
            "bad key",
        ),
        (
            "tidewire.watch_table(NULL, 'x', 'id')".into(),
            "22004",
            "must not be null",
        ),
        (
            "tidewire.watch_table('t', 'NEW.room', 'nope')".into(),
            "42703",
            "no column",
        ),
        (
            "tidewire.watch_table('t', 'NEW.nope', 'id')".into(),
            "42703",
            "no field",
        ),
        (
            "tidewire.unwatch_table(NULL)".into(),
            "22004",
            "must not be null",
        ),
    ];
    sqlx::raw_sql("CREATE TABLE t (id int PRIMARY KEY, room text)")
        .execute(&mut conn)
        .await
        .unwrap();
    for (call, state, text) in &cases {
        let mut tx = conn.begin().await.unwrap();
        // A valid call first: it must be undone with the rest of the transaction.
        sqlx::raw_sql("SELECT tidewire.publish('r', 'chat', '{}')")
            .execute(&mut *tx)
            .await
            .unwrap();
        let err = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SELECT {call}")))
            .execute(&mut *tx)
            .await
            .expect_err(call);
        let db = err.as_database_error().expect("a database error");
        assert_eq!(db.code().as_deref(), Some(*state), "{call}: {db}");
        assert!(db.message().contains(text), "{call}: {}", db.message());
        if !call.contains("watch_table") {
            assert!(
                db.message().starts_with("tidewire."),
                "{call}: {}",
                db.message()
            );
        }
        drop(tx); // rolled back, as the failed statement aborted it anyway
        assert_eq!(rows(&mut conn).await, 0, "{call}: nothing committed");
    }
    // Right at the limits, and the limits the server wrote: accepted.
    let ok = [
        format!(
            "tidewire.publish('{}', '{}', '1')",
            "r".repeat(128),
            "t".repeat(64)
        ),
        "tidewire.put_item('A.b:c_d-e', 'x', '\"é\"', '!~')".into(),
        "tidewire.delete_item('r', 'a')".into(),
        "tidewire.publish('r', 'chat', 'null')".into(),
    ];
    for call in &ok {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SELECT {call}")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{call}: {e}"));
    }
    assert_eq!(rows(&mut conn).await, ok.len() as i64);
    // Installing again changes nothing but the limits.
    install(
        &mut conn,
        Limits {
            max_item_bytes: 5,
            max_data_bytes: 5,
        },
    )
    .await
    .unwrap();
    assert_eq!(rows(&mut conn).await, ok.len() as i64);
    let err = sqlx::raw_sql("SELECT tidewire.put_item('r', 'a', '\"123456\"')")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("limit 5"), "{err}");
    let partitions: Vec<i32> = sqlx::query_scalar(
        "SELECT DISTINCT tidewire.partition_of('room-' || g) FROM generate_series(1, 500) g ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(partitions, (0..super::PARTITIONS).collect::<Vec<_>>());
    conn.close().await.unwrap();
    testing::drop_database(&name).await;
}

/// A sink that records what it is asked to write, appends like a store (seq per room,
/// idempotency keys), refuses deletes of missing items, and can be made to fail.
#[derive(Default)]
struct Recorder {
    state: Mutex<RecorderState>,
}

#[derive(Default)]
struct RecorderState {
    appended: Vec<WriteRequest>,
    keys: std::collections::HashSet<(String, String)>,
    items: std::collections::HashSet<(String, String)>,
    failing: bool,
}

#[async_trait]
impl Sink for Recorder {
    async fn write(&self, req: WriteRequest) -> Result<Written> {
        let mut st = self.state.lock().unwrap();
        if st.failing {
            return Err(Error::Store(crate::store::StoreError::new(
                "sqlite",
                std::io::Error::other("disk full"),
            )));
        }
        let key = (req.room.clone(), req.key.clone().unwrap_or_default());
        let replayed = !st.keys.insert(key);
        if !replayed {
            match &req.op {
                WriteOp::Put { id, .. } => {
                    st.items.insert((req.room.clone(), id.clone()));
                }
                WriteOp::Delete { id } => {
                    if !st.items.remove(&(req.room.clone(), id.clone())) {
                        st.keys
                            .remove(&(req.room.clone(), req.key.clone().unwrap_or_default()));
                        return Err(Error::NotFound(format!("no item `{id}`")));
                    }
                }
                WriteOp::Publish(_) => {}
            }
            st.appended.push(req.clone());
        }
        let seq = st.appended.len() as u64;
        let envelope: Envelope = Envelope {
            room: req.room.clone(),
            seq: Some(seq),
            id: "x".into(),
            ts: "t".into(),
            key: req.key.clone(),
            event: Event::App(tidewire_protocol::RawAppEvent {
                event_type: "x".into(),
                data: serde_json::Value::Null,
            }),
        };
        Ok(Written {
            json: envelope.encode(),
            envelope,
            replayed,
        })
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Rows reach the sink in id order per room with their keys; a row the server refuses is a
/// dead letter and the partition flows on; a delete of a missing item is done; a store
/// failure holds the room's rows until it recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_writes_in_order_dead_letters_refusals_and_retries_failures() {
    let Some((name, mut conn)) = fresh().await else {
        return;
    };
    let url = format!(
        "{}/{name}",
        testing::admin_url().rsplit_once('/').unwrap().0
    );
    // Written before the consumer starts, and one made invalid by a lower limit: the
    // consumer's limits are lower than the installed ones.
    sqlx::raw_sql(
        "SELECT tidewire.put_item('r1', 'a', '1', 'k-a');
         SELECT tidewire.put_item('r1', 'big', to_jsonb(repeat('x', 500)));
         SELECT tidewire.publish('r2', 'chat', '{\"n\": 1}');
         SELECT tidewire.delete_item('r1', 'never-there');
         SELECT tidewire.delete_item('r1', 'a');
         SELECT tidewire.publish('r2', 'chat', '{\"n\": 2}');",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let sink = Arc::new(Recorder::default());
    let opts = Options {
        poll: Duration::from_millis(100),
        limits: Limits {
            max_item_bytes: 100,
            max_data_bytes: 100,
        },
        ..Options::default()
    };
    let consumer = Consumer::new(
        url.parse().unwrap(),
        opts,
        Arc::downgrade(&sink) as Weak<dyn Sink>,
        Health::default(),
    );
    let session = consumer.connect().await.unwrap();
    let task = tokio::spawn(consumer.run(Some(session)));
    wait_until("the first rows", || {
        sink.state.lock().unwrap().appended.len() == 4
    })
    .await;
    let described: Vec<String> = sink
        .state
        .lock()
        .unwrap()
        .appended
        .iter()
        .map(|r| format!("{} {:?} {}", r.room, r.op, r.key.as_deref().unwrap_or("-")))
        .collect();
    let r1: Vec<&String> = described.iter().filter(|d| d.starts_with("r1")).collect();
    assert_eq!(r1.len(), 2, "{described:?}");
    assert!(
        r1[0].contains("Put") && r1[0].ends_with("k-a"),
        "{described:?}"
    );
    assert!(
        r1[1].contains("Delete") && r1[1].contains("outbox:"),
        "{described:?}"
    );
    let r2: Vec<&String> = described.iter().filter(|d| d.starts_with("r2")).collect();
    assert!(r2[0].contains("1") && r2[1].contains("2"), "{described:?}");
    for _ in 0..100 {
        if rows(&mut conn).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(rows(&mut conn).await, 0);
    let dead: Vec<(String, String)> =
        sqlx::query_as("SELECT item_id, reason FROM tidewire.dead_letters")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "big");
    assert!(dead[0].1.contains("payload too large"), "{dead:?}");

    // The store fails: rows wait; it recovers: they arrive, in order.
    sink.state.lock().unwrap().failing = true;
    sqlx::raw_sql(
        "SELECT tidewire.publish('r3', 'chat', '{\"n\": 1}');
         SELECT tidewire.publish('r3', 'chat', '{\"n\": 2}');",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(rows(&mut conn).await, 2, "held while the store fails");
    sink.state.lock().unwrap().failing = false;
    wait_until("the held rows", || {
        sink.state.lock().unwrap().appended.len() == 6
    })
    .await;
    let last: Vec<String> = sink.state.lock().unwrap().appended[4..]
        .iter()
        .map(|r| format!("{:?}", r.op))
        .collect();
    assert!(last[0].contains("1") && last[1].contains("2"), "{last:?}");

    drop(sink);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the consumer stops once its sink is gone")
        .unwrap();
    conn.close().await.unwrap();
    testing::drop_database(&name).await;
}

/// The window between the Tidewire commit and the outbox delete, made on purpose: a row
/// ingested into a real store and deleted is put back as if the delete had never happened.
/// Read again, it is a replay: the room's log still has it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_read_again_after_its_append_is_a_replay() {
    use crate::bus::memory::MemoryBus;
    use crate::presence::memory::MemoryPresence;
    use crate::service::Service;
    use crate::store::{sqlite::SqliteStore, Retention, Store};

    let Some((name, mut conn)) = fresh().await else {
        return;
    };
    let url = format!(
        "{}/{name}",
        testing::admin_url().rsplit_once('/').unwrap().0
    );
    let store = Arc::new(
        SqliteStore::open("sqlite::memory:", Retention::default())
            .await
            .unwrap(),
    );
    let presence = Arc::new(MemoryPresence::new(
        Duration::from_secs(5),
        Duration::from_secs(60),
    ));
    let service = Arc::new(Service::new(
        store.clone(),
        Arc::new(MemoryBus::new()),
        presence,
    ));
    sqlx::raw_sql(
        "SELECT tidewire.publish('r', 'chat', '{\"n\": 1}');
         SELECT tidewire.put_item('r', 'a', '{\"n\": 2}', 'app-key');",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let saved: Vec<(i64, i32, String, String)> = sqlx::query_as(
        "SELECT id, partition, op, coalesce(key, '') FROM tidewire.outbox ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let opts = Options {
        poll: Duration::from_millis(100),
        ..Options::default()
    };
    let consumer = Consumer::new(
        url.parse().unwrap(),
        opts,
        Arc::downgrade(&service) as Weak<dyn Sink>,
        Health::default(),
    );
    let task = tokio::spawn(consumer.run(None));
    for _ in 0..200 {
        if store.head("r").await.unwrap() == 2 && rows(&mut conn).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(store.head("r").await.unwrap(), 2);
    // Put the rows back, ids and all, as a crash before the delete would have left them.
    for (id, partition, op, key) in &saved {
        let (event_type, item_id, data) = if op == "publish" {
            (Some("chat"), None, "{\"n\": 1}")
        } else {
            (None, Some("a"), "{\"n\": 2}")
        };
        sqlx::query(
            "INSERT INTO tidewire.outbox (id, partition, room, op, event_type, item_id, data, key)
             VALUES ($1, $2, 'r', $3, $4, $5, $6::jsonb, nullif($7, ''))",
        )
        .bind(id)
        .bind(partition)
        .bind(op)
        .bind(event_type)
        .bind(item_id)
        .bind(data)
        .bind(key)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    sqlx::raw_sql("SELECT pg_notify('tidewire_outbox', '0')")
        .execute(&mut conn)
        .await
        .unwrap();
    for _ in 0..200 {
        if rows(&mut conn).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(rows(&mut conn).await, 0, "read again");
    let log = store.read("r", 0, 10).await.unwrap();
    assert_eq!(log.len(), 2, "each row once: {log:?}");
    let keys: Vec<Option<String>> = log.iter().map(|e| e.envelope().unwrap().key).collect();
    assert!(
        keys[0].as_deref().unwrap().starts_with("outbox:"),
        "{keys:?}"
    );
    assert_eq!(keys[1].as_deref(), Some("app-key"));
    drop(service);
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    conn.close().await.unwrap();
    testing::drop_database(&name).await;
}
