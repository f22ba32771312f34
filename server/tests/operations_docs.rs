//! `docs/operations.md` and `docs/grafana-dashboard.json` hold to the code: the dashboard is
//! valid JSON whose queries use only metrics the docs' table lists (histogram suffixes only on
//! histograms), the example alert rules likewise, and every metric name the server's source
//! registers (string literals in `metrics.rs`, and in any `counter!`/`gauge!`/`histogram!`
//! elsewhere) is in that table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The metrics table of `docs/operations.md`: name → type.
fn documented() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("| `tidewire_") else {
            continue;
        };
        let cells: Vec<&str> = rest.split('|').map(str::trim).collect();
        let name = format!("tidewire_{}", cells[0].trim_end_matches('`'));
        out.insert(name, cells[1].to_owned());
    }
    assert!(out.len() >= 10, "the metrics table: {out:?}");
    out
}

/// Every `tidewire_…` name in `text`.
fn names_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("tidewire_") {
        rest = &rest[i..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[name.len()..];
        out.push(name);
    }
    out
}

/// Checks that `name` (as a query uses it) is a documented metric; answers the base name.
fn check_query_name(name: &str, docs: &BTreeMap<String, String>, what: &str) -> String {
    if docs.contains_key(name) {
        return name.to_owned();
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if let Some(kind) = docs.get(base) {
                assert_eq!(kind, "histogram", "{what}: `{name}` on a {kind}");
                return base.to_owned();
            }
        }
    }
    panic!("{what} uses `{name}`, which docs/operations.md does not list");
}

fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn the_grafana_dashboard_uses_only_documented_metrics() {
    let docs = documented();
    let text = std::fs::read_to_string(root().join("docs/grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    let mut ids = std::collections::BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "unique panel ids");
        assert!(p["title"].is_string() && p["gridPos"]["w"].is_u64());
        assert!(
            !p["targets"].as_array().unwrap().is_empty(),
            "{}",
            p["title"]
        );
    }
    let mut all = Vec::new();
    exprs(&dash, &mut all);
    let mut used = std::collections::BTreeSet::new();
    for e in &all {
        for name in names_in(e) {
            used.insert(check_query_name(&name, &docs, "the Grafana dashboard"));
        }
    }
    for must in [
        "tidewire_connections",
        "tidewire_events_in_total",
        "tidewire_events_out_total",
        "tidewire_slow_consumer_disconnects_total",
        "tidewire_write_latency_seconds",
        "tidewire_bus_gaps_filled_total",
        "tidewire_outbox_oldest_pending_seconds",
        "tidewire_store_errors_total",
    ] {
        assert!(used.contains(must), "the dashboard charts {must}");
    }
}

#[test]
fn the_alert_rules_use_only_documented_metrics() {
    let docs = documented();
    let text = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let rules = text
        .split("```yaml")
        .nth(1)
        .and_then(|r| r.split("```").next())
        .expect("a yaml block of alert rules");
    let mut n = 0;
    for line in rules
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
    {
        for name in names_in(line) {
            check_query_name(&name, &docs, "the alert rules");
            n += 1;
        }
    }
    assert!(n >= 5, "alert expressions found: {n}");
}

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_metric_the_server_registers_is_documented() {
    let docs = documented();
    let mut files = Vec::new();
    rust_sources(&root().join("server/src"), &mut files);
    let mut seen = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        // `metrics.rs` names series; elsewhere only a metrics macro does (cookie names and
        // the like start with `tidewire_` too).
        let registry = file.ends_with("metrics.rs");
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            if !registry
                && !["counter!", "gauge!", "histogram!"]
                    .iter()
                    .any(|m| code.contains(m))
            {
                continue;
            }
            let mut rest = code;
            // String literals naming a series: "tidewire_…".
            while let Some(i) = rest.find("\"tidewire_") {
                rest = &rest[i + 1..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                rest = &rest[name.len()..];
                if rest.starts_with('"') {
                    seen += 1;
                    assert!(
                        docs.contains_key(&name),
                        "{} registers `{name}`: add it to docs/operations.md",
                        file.display()
                    );
                }
            }
        }
    }
    assert!(seen >= 10, "metric names found in server/src: {seen}");
}
