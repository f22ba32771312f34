//! The steps of `cargo xtask test`, in the order they run. Adding a step is one line in
//! [`STEPS`]; a step with `only_if` runs once that file exists, so a part of the project that
//! is still being built does not fail the run.
//!
//! ```text
//! Step::new("my tests", Group::Browser, Some("tests/mine/package.json"), "tests/mine", Action::Exec("npm", &["test"])),
//! ```

use crate::setup::WASM_TARGET;

/// The one `wasm-pack build` of the browser SDK, used by `demo` and `test` alike: the npm
/// package lands in `client/pkg`, which the server serves at `/pkg/`.
pub const WASM_PACK_BUILD: &[&str] = &[
    "build",
    "client",
    "--release",
    "--target",
    "web",
    "--out-dir",
    "pkg",
];

/// Turns the `wasm-pack` output into the npm package `tidewire` (name, README, protocol
/// types) and runs a wasm-opt that reads reference types when one is installed.
pub const PACKAGE_SCRIPT: &[&str] = &["client/scripts/package.mjs", "client/pkg"];

/// Replaced, in a program or an argument, by the Cargo target directory.
pub const TARGET_DIR: &str = "{target-dir}";

/// An argument replaced by a free loopback port when the step runs (each occurrence gets its
/// own), so a step never collides with a server someone else left running.
pub const FREE_PORT: &str = "{free-port}";

/// Which part of the run a step belongs to. `--quick` runs only [`Group::Lint`],
/// [`Group::Native`] and [`Group::Wasm`] steps that need no browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Formatting and lints.
    Lint,
    /// Native tests.
    Native,
    /// Builds for wasm32.
    Wasm,
    /// The npm package build and everything that drives a browser (skipped by `--quick`).
    Browser,
}

/// What a step runs.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// `cargo` (the one running the xtask) with these arguments.
    Cargo(&'static [&'static str]),
    /// Another program with these arguments.
    Exec(&'static str, &'static [&'static str]),
    /// `npm ci` in the step's directory, skipped when `node_modules` matches the lock file.
    NpmCi,
}

/// One step of `cargo xtask test`.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// Printed before and after the step.
    pub name: &'static str,
    /// Which part of the run.
    pub group: Group,
    /// Run only when this path (relative to the repository root) exists.
    pub only_if: Option<&'static str>,
    /// Working directory, relative to the repository root.
    pub dir: &'static str,
    /// What to run.
    pub action: Action,
}

impl Step {
    const fn new(
        name: &'static str,
        group: Group,
        only_if: Option<&'static str>,
        dir: &'static str,
        action: Action,
    ) -> Step {
        Step {
            name,
            group,
            only_if,
            dir,
            action,
        }
    }
}

use Action::{Cargo, Exec, NpmCi};
use Group::{Browser, Lint, Native, Wasm};

/// Every step, in order. The runner stops at the first failure.
///
/// Every step sees these environment variables: `TIDEWIRE_ROOT` (the repository root),
/// `TIDEWIRE_PKG` (`client/pkg`), `TIDEWIRE_CHROMIUM` and `CHROMEDRIVER` (when found). The
/// browser tests find the server at `<target dir>/debug/tidewire` (`CARGO_TARGET_DIR` is passed
/// through); `TIDEWIRE_BIN` is not set, so the Rust end-to-end tests keep their own check that
/// the binary is current.
pub const STEPS: &[Step] = &[
    Step::new(
        "format",
        Lint,
        None,
        ".",
        Cargo(&["fmt", "--all", "--check"]),
    ),
    Step::new(
        "clippy (workspace)",
        Lint,
        None,
        ".",
        Cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    ),
    Step::new(
        "clippy (client on wasm32)",
        Lint,
        Some("client/Cargo.toml"),
        ".",
        Cargo(&[
            "clippy",
            "-p",
            "tidewire-client",
            "--target",
            WASM_TARGET,
            "--",
            "-D",
            "warnings",
        ]),
    ),
    Step::new(
        "server with SQLite alone (tidewire-server --no-default-features --features sqlite)",
        Lint,
        None,
        ".",
        // A library user embedding the router may take one backend: it must build.
        Cargo(&[
            "check",
            "-p",
            "tidewire-server",
            "--no-default-features",
            "--features",
            "sqlite",
        ]),
    ),
    Step::new(
        "native tests",
        Native,
        None,
        ".",
        // --no-fail-fast: every test binary runs, so one run shows every failure.
        Cargo(&["test", "--workspace", "--no-fail-fast"]),
    ),
    Step::new(
        "TypeScript declarations are current",
        Native,
        None,
        ".",
        // `--lib`: the crate's other tests already ran in "native tests".
        Cargo(&[
            "test",
            "-p",
            "tidewire-protocol",
            "--features",
            "ts",
            "--lib",
        ]),
    ),
    Step::new(
        "TypeScript declarations of the JS API are current (client/types/client.d.ts)",
        Native,
        Some("client/src/ts.rs"),
        ".",
        Cargo(&["test", "-p", "tidewire-client", "--features", "ts", "--lib"]),
    ),
    Step::new(
        "React bindings store unit tests (node --test client/react/)",
        Native,
        Some("client/react/store.test.mjs"),
        ".",
        Exec("node", &["--test", "client/react/"]),
    ),
    // The benchmark's smoke: every target delivers, and a small reconnect storm over two worker
    // processes loses and duplicates nothing. Debug build of the workspace member `bench`, so
    // it reuses what "native tests" built; the servers are the debug `tidewire` and Node.
    Step::new(
        "npm ci (bench/socketio)",
        Native,
        Some("bench/socketio/package-lock.json"),
        "bench/socketio",
        NpmCi,
    ),
    Step::new(
        "benchmark binaries (tidewire, tidewire-bench)",
        Native,
        Some("bench/Cargo.toml"),
        ".",
        // Same feature resolution as "native tests": only the two binaries get linked.
        Cargo(&["build", "--workspace", "--bins", "--tests"]),
    ),
    Step::new(
        "benchmark smoke (tidewire-bench all --smoke)",
        Native,
        Some("bench/Cargo.toml"),
        ".",
        Exec(
            "{target-dir}/debug/tidewire-bench",
            &[
                "all",
                "--smoke",
                "--tidewire-bin",
                "{target-dir}/debug/tidewire",
            ],
        ),
    ),
    // Every fuzz target, built with libFuzzer's coverage instrumentation on stable, fuzzed
    // 10 s from the seeds (FUZZ_SECONDS=600 bash fuzz/run.sh for a longer run).
    Step::new(
        "fuzz targets, 10 s each (fuzz/run.sh)",
        Native,
        Some("fuzz/run.sh"),
        ".",
        Exec("bash", &["fuzz/run.sh"]),
    ),
    Step::new(
        "protocol crate on wasm32",
        Wasm,
        None,
        ".",
        Cargo(&["build", "-p", "tidewire-protocol", "--target", WASM_TARGET]),
    ),
    Step::new(
        "npm package (wasm-pack build client)",
        Browser,
        Some("client/Cargo.toml"),
        ".",
        Exec("wasm-pack", WASM_PACK_BUILD),
    ),
    Step::new(
        "npm package metadata, README and wasm-opt (client/scripts/package.mjs)",
        Browser,
        Some("client/scripts/package.mjs"),
        ".",
        Exec("node", PACKAGE_SCRIPT),
    ),
    Step::new(
        "binaries for the browser tests (tidewire, tidewire-harness)",
        Browser,
        Some("server/src/main.rs"),
        ".",
        // `--workspace --tests` resolves the same features as "native tests", so only the
        // binaries themselves are built; `cargo build -p tidewire-server` would resolve other
        // features and rebuild half the dependency tree.
        Cargo(&["build", "--workspace", "--bins", "--tests"]),
    ),
    // ---- SLOT: the client's browser tests (wasm-bindgen-test in Chromium) under the harness,
    // which starts target/debug/tidewire and sets TIDEWIRE_TEST_URL / _CTL_URL / _PROXY_URL.
    Step::new(
        "client browser tests (wasm-pack test under tidewire-harness)",
        Browser,
        Some("client/tests/browser.rs"),
        ".",
        Exec(
            "{target-dir}/debug/tidewire-harness",
            &[
                "--port",
                FREE_PORT,
                "--ctl-port",
                FREE_PORT,
                "--proxy-port",
                FREE_PORT,
                "--",
                "wasm-pack",
                "test",
                "--headless",
                "--chrome",
                "client",
            ],
        ),
    ),
    // ---- SLOT: Playwright tests of the demo page (tests/e2e, node's test runner).
    Step::new(
        "npm ci (tests/e2e)",
        Browser,
        Some("tests/e2e/package-lock.json"),
        "tests/e2e",
        NpmCi,
    ),
    Step::new(
        "TypeScript declarations type-check (tsc)",
        Browser,
        Some("tests/e2e/types/protocol.check.ts"),
        "tests/e2e",
        Exec("npm", &["run", "typecheck"]),
    ),
    Step::new(
        "Playwright tests (tests/e2e)",
        Browser,
        Some("tests/e2e/package.json"),
        "tests/e2e",
        Exec("npm", &["test"]),
    ),
    // ---- SLOT: the npm package installed into a Vite app (tests/vite-app).
    Step::new(
        "npm ci (tests/vite-app)",
        Browser,
        Some("tests/vite-app/package-lock.json"),
        "tests/vite-app",
        NpmCi,
    ),
    Step::new(
        "Vite package test (tests/vite-app)",
        Browser,
        Some("tests/vite-app/package.json"),
        "tests/vite-app",
        Exec("npm", &["test"]),
    ),
    // ---- SLOT: `tidewire/react` in a Vite + React 19 app (tests/react-app), and the unit
    // tests of its React-free store (node --test client/react/).
    Step::new(
        "npm ci (tests/react-app)",
        Browser,
        Some("tests/react-app/package-lock.json"),
        "tests/react-app",
        NpmCi,
    ),
    Step::new(
        "React bindings test (tests/react-app)",
        Browser,
        Some("tests/react-app/package.json"),
        "tests/react-app",
        Exec("npm", &["test"]),
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_are_unique_and_browser_steps_come_last() {
        let mut names = std::collections::HashSet::new();
        let mut seen_browser = false;
        for s in STEPS {
            assert!(names.insert(s.name), "{} twice", s.name);
            if s.group == Browser {
                seen_browser = true;
            } else {
                assert!(!seen_browser, "{} runs after a browser step", s.name);
            }
        }
    }

    #[test]
    fn the_wasm_pack_build_writes_client_pkg() {
        let line = WASM_PACK_BUILD.join(" ");
        assert!(line.starts_with("build client"), "{line}");
        assert!(line.contains("--out-dir pkg"), "{line}");
    }
}
