//! The `tidewire` binary: the listening line, clear errors for unreachable or unknown backends,
//! and SIGTERM → reconnect → bounded exit.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;

fn tidewire() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidewire"));
    cmd.env_remove("TIDEWIRE_DATABASE")
        .env_remove("TIDEWIRE_LISTEN")
        .env("RUST_LOG", "warn");
    cmd
}

#[test]
fn an_unreachable_postgres_or_unknown_database_is_a_clear_error() {
    for (url, expect) in [
        ("postgres://root@127.0.0.1:1/x", "store unavailable"),
        ("mysql://localhost/x", "unknown database URL"),
    ] {
        let started = Instant::now();
        let out = tidewire()
            .args(["serve", "--listen", "127.0.0.1:0", "--database", url])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{url}: {err}");
        assert!(started.elapsed() < Duration::from_secs(15));
    }
}

#[tokio::test]
async fn serve_prints_its_address_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let mut child = tidewire()
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &db])
        .args(["--drain-window-ms", "500"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("tidewire listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    assert!(!url.ends_with(":0"), "the real port: {url}");

    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{url}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let res = http
        .put(format!("{url}/v1/rooms/r/items/a"))
        .body("1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let sse = http
        .get(format!("{url}/v1/sse?rooms=r"))
        .send()
        .await
        .unwrap();
    let mut body = sse.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(std::str::from_utf8(&first).unwrap().starts_with("retry: "));

    let started = Instant::now();
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut text = String::new();
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_secs(5), body.next()).await
    {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.contains("\"type\":\"reconnect\""), "{text}");
    assert!(text.contains("\"reason\":\"shutting_down\""), "{text}");
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "exits within drain + 2 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Restart on the same file: the data is still there.
    let mut child = tidewire()
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &db])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("tidewire listening on ")
        .unwrap()
        .to_owned();
    let snap: serde_json::Value = http
        .get(format!("{url}/v1/rooms/r/snapshot"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(snap["seq"], 1);
    child.kill().unwrap();
    child.wait().unwrap();
}
