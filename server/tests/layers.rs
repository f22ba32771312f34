//! The crate's layering, checked: every module names only modules of its own layer or below
//! (`crate::<module>` paths and `use crate::…` lines), and no two modules of one layer name
//! each other both ways. The layers are the ones `docs/architecture.md` draws; a new module
//! must be added to [`LAYERS`], which is the point: its place is decided, not drifted into.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level modules of `server/src`, lowest layer first.
const LAYERS: &[&[&str]] = &[
    // Cross-cutting base: no I/O policy, no backends.
    &[
        "error", "clock", "payload", "config", "metrics", "stats", "testing",
    ],
    &["redis_conn"],
    // Backends behind traits.
    &["store", "bus", "presence"],
    // Who is calling and what they may do.
    &["auth", "identity", "limits", "shutdown"],
    // The ordered write path, the local fan-out and its queues.
    &["outbound"],
    &["service", "hub"],
    // The write policy for clients; the consumer of the app's own database (it writes
    // through the service, as a backend may); the admin dashboard's sampler.
    &["policy", "outbox", "admin"],
    &["session"],
    &["transport", "state"],
    &["routes"],
    &["serve", "backends"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The top-level module a source file belongs to (`session/commands.rs` → `session`).
fn module_of(path: &Path, src: &Path) -> String {
    let rel = path.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The top-level modules a file's code names through `crate::…` (comments left out).
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name.chars().next().unwrap().is_ascii_lowercase() {
                out.insert(name);
            }
        }
        // `use crate::{a::X, b}` groups.
        if let Some(group) = code.trim().strip_prefix("use crate::{") {
            for part in group.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name.chars().next().unwrap().is_ascii_lowercase() {
                    out.insert(name);
                }
            }
        }
    }
    out
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_import_only_their_layer_or_below_and_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for file in &files {
        let module = module_of(file, &src);
        if module == "lib" || module == "main" {
            continue; // the crate root and the binary sit above everything
        }
        let Some(own) = layer_of(&module) else {
            wrong.push(format!("{module}: not in LAYERS (decide its layer)"));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        // Unit tests may reach anywhere.
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        for named in named_modules(code) {
            if named == module {
                continue;
            }
            // Re-exports at the crate root (`crate::Error`, `crate::Result`, `crate::Config`)
            // are lowercase-free and skipped above; anything else must be a known module.
            let Some(theirs) = layer_of(&named) else {
                wrong.push(format!(
                    "{}: names unknown module `{named}`",
                    file.display()
                ));
                continue;
            };
            if theirs > own {
                wrong.push(format!(
                    "{}: `{module}` (layer {own}) imports `{named}` (layer {theirs}), a layer above",
                    file.display()
                ));
            }
            edges.entry(module.clone()).or_default().insert(named);
        }
    }
    for (a, targets) in &edges {
        for b in targets {
            if edges.get(b).is_some_and(|back| back.contains(a)) && a < b {
                wrong.push(format!("`{a}` and `{b}` import each other"));
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_check_sees_imports() {
    let names = named_modules(
        "use crate::hub::Hub;\nuse crate::{policy::Policy, Error};\n// crate::serve in a comment\nlet x = crate::clock::now();",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["clock", "hub", "policy"]
    );
}
