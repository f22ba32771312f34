//! Drill 7, disk full: the SQLite file lives on a tiny tmpfs; a filler file takes the rest of
//! the space. Writes must fail with a clear 503 `store_unavailable` problem and leave nothing
//! half-written; once the filler is deleted the same server accepts writes again, and retrying
//! the refused writes with their keys appends each exactly once.
//!
//! Needs root (to mount a tmpfs); without it the drill says so and passes as skipped.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use tidewire_protocol::{Envelope, ErrorCode};
use tidewire_tests::WriteOptions;
use tidewire_tests::{Server, SseClient, SseRequest};

use crate::{report, start, T};

const ROOM: &str = "drill-disk";
/// Size of the filesystem: room for the database and some WAL, no more.
const FS_SIZE: &str = "3m";

/// A tmpfs mounted for the drill, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn new() -> Option<Mount> {
        let dir = std::env::temp_dir().join(format!("tidewire-drill-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={FS_SIZE}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
        Some(Mount(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Fills the filesystem of `path` with one file until the disk is full; answers the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).expect("filler file");
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut written = 0u64;
    // Bounded: the filesystem is a few MiB.
    for _ in 0..10_000 {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    // Byte by byte for the tail, so not even a page is left.
    for _ in 0..65_536 {
        match f.write(&[0u8]) {
            Ok(1) => written += 1,
            _ => break,
        }
    }
    let _ = f.flush();
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_answers_503_and_recovers() {
    let _cpu = crate::shared_cpu().await;
    let Some(mount) = Mount::new() else {
        println!("[drill disk full] SKIPPED: cannot mount a tmpfs (needs root)");
        return;
    };
    let db = mount.path().join("t.db");
    let server = start(
        Server::builder()
            .unlimited_writes()
            .flag("database", format!("sqlite://{}", db.display())),
    );
    let rest = server.rest();
    let mut sse = SseClient::connect(
        &server.url(),
        &SseRequest::rooms(&[ROOM]).since(&format!("{ROOM}=0")),
    )
    .await
    .expect("SSE opens");

    let mut sent = 0usize;
    let mut acked: BTreeMap<String, Envelope> = BTreeMap::new();
    let big = "x".repeat(16 * 1024);
    for i in 0..20 {
        let key = format!("before-{i}");
        sent += 1;
        let a = rest
            .put(
                ROOM,
                &format!("item-{}", i % 4),
                &json!({"i": i, "pad": big}),
                &WriteOptions::key(&key),
            )
            .await
            .expect("write before the disk fills");
        acked.insert(key, a.ok());
    }

    let filler = mount.path().join("filler");
    let filled = fill(&filler);
    println!("[drill disk full] filler took {filled} bytes");

    // Write until the store refuses (bounded); every refusal must be a 503 store_unavailable.
    let mut refused: Vec<(String, usize)> = Vec::new();
    let mut other = Vec::new();
    for i in 0..200 {
        let key = format!("full-{i}");
        sent += 1;
        let a = rest
            .put(
                ROOM,
                &format!("item-{}", i % 4),
                &json!({"i": i, "pad": big}),
                &WriteOptions::key(&key),
            )
            .await
            .expect("an answer while the disk is full");
        match a.status {
            200 => {
                acked.insert(key, a.ok());
            }
            503 => {
                let p = a.problem();
                assert_eq!(
                    p.code,
                    ErrorCode::StoreUnavailable,
                    "disk full is store_unavailable: {p:?}"
                );
                refused.push((key, i));
                if refused.len() >= 10 {
                    break;
                }
            }
            s => other.push((s, format!("{:?}", a.body))),
        }
    }
    assert!(
        other.is_empty(),
        "a full disk gave answers other than 200/503: {other:?}\n{}",
        server.log()
    );
    assert!(
        !refused.is_empty(),
        "no write was refused with the filesystem full (server log:\n{})",
        server.log()
    );
    println!(
        "[drill disk full] refused {} writes with 503 store_unavailable",
        refused.len()
    );

    // Nothing half-written: the log is 1..=n and holds the acknowledged writes only.
    let history = rest.history_all(ROOM, 0).await.expect("history while full");
    let seqs: Vec<u64> = history.iter().filter_map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "contiguous seqs"
    );
    let keys: Vec<String> = history.iter().filter_map(|e| e.key.clone()).collect();
    for (key, _) in &refused {
        assert!(!keys.contains(key), "refused write {key} is in the log");
    }
    assert_eq!(
        history.len(),
        acked.len(),
        "the log holds exactly the acknowledged writes"
    );

    // Space returns: the same server accepts writes again; retries append once. A client
    // retries a 503 after a pause, and so does the drill (bounded); the 503s seen after space
    // returned are counted and printed.
    std::fs::remove_file(&filler).expect("remove the filler");
    let mut late_503 = Vec::new();
    for (key, i) in &refused {
        sent += 1;
        let mut done = false;
        for _ in 0..50 {
            let a = rest
                .put(
                    ROOM,
                    &format!("item-{}", i % 4),
                    &json!({"i": i, "pad": big}),
                    &WriteOptions::key(key),
                )
                .await
                .expect("an answer after space returns");
            if a.status == 200 {
                acked.insert(key.clone(), a.ok());
                done = true;
                break;
            }
            assert_eq!(a.status, 503, "retry of {key}: {:?}", a.body);
            late_503.push(a.problem().detail.clone());
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(
            done,
            "writes still fail after space returned: {late_503:?}\n{}",
            server.log()
        );
    }
    println!(
        "[drill disk full] 503s after space returned: {} {:?}",
        late_503.len(),
        late_503.iter().collect::<std::collections::BTreeSet<_>>()
    );
    // A connection whose rollback failed on the full disk must not come back poisoned.
    assert!(
        late_503.is_empty(),
        "writes failed after space returned: {late_503:?}"
    );
    let history = rest
        .history_all(ROOM, 0)
        .await
        .expect("history after recovery");
    let mut by_key: BTreeMap<String, usize> = BTreeMap::new();
    for env in &history {
        if let Some(k) = &env.key {
            *by_key.entry(k.clone()).or_default() += 1;
        }
    }
    let lost = acked.keys().filter(|k| !by_key.contains_key(*k)).count();
    let twice = by_key.values().filter(|n| **n > 1).count();

    // The subscriber saw every event once, in order, across the outage.
    let mut delivery = tidewire_tests::Delivery::default();
    delivery.expect(ROOM, 1..=history.len() as u64);
    for _ in 0..history.len() {
        let ev = sse.next_durable(T).await.expect("live event");
        delivery.received(ROOM, ev.envelope.seq.expect("durable"));
    }
    let c = delivery.counts();
    report(
        "drill disk full",
        sent,
        acked.len(),
        c.delivered,
        lost.max(c.lost),
        twice.max(c.duplicated),
    );
    assert_eq!(lost, 0, "acknowledged writes lost");
    assert_eq!(twice, 0, "writes appended twice");
    delivery.assert_exact("drill disk full: subscriber");
}
