//! The project's two commands (run through the `cargo xtask` alias in `.cargo/config.toml`):
//!
//! ```text
//! cargo xtask demo            # install what is missing, build the npm package, run the server
//! cargo xtask test            # install what is missing, run every check and test
//! cargo xtask test --quick    # the same without the npm package and browser tests
//! cargo xtask test --from 4   # start at step 4 (after fixing what failed there)
//! cargo xtask test --list     # print the numbered steps
//! cargo xtask setup           # install what is missing, nothing else
//! ```
//!
//! Only `cargo` is assumed present. Everything else (the wasm32 target, wasm-bindgen,
//! wasm-pack, wasm-opt, Chromium, Node.js packages) is checked and installed by [`setup`].
//! Builds use the default target directory (`target/`) unless `CARGO_TARGET_DIR` is set.

mod run;
mod setup;
mod steps;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use run::{human, run, run_foreground};
use setup::{Setup, Tool};
use steps::{Action, Group, Step, PACKAGE_SCRIPT, STEPS, WASM_PACK_BUILD};

/// Where `cargo xtask demo` listens by default.
const DEMO_LISTEN: &str = "127.0.0.1:8080";
/// The demo's database, relative to the repository root.
const DEMO_DATABASE: &str = "sqlite://tidewire.db";

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  demo [--listen ADDR]   install what is missing, build the npm package, run the demo server
                         (default http://127.0.0.1:8080)
  test [--quick] [--from N]
                         run every check and test; --quick skips the npm package and browser
                         tests; --from N starts at step N (see --list)
  test --list            print the numbered steps of `test`
  bench [ARGS]           compare Tidewire with Socket.IO and a bare axum server at 1,000 and
                         10,000 subscribers, then a reconnect storm (bench/); writes
                         docs/benchmarks.md; --smoke for a quick check
  setup [--quick]        install what is missing, nothing else
";

/// Why a command failed.
#[derive(Debug)]
pub enum Error {
    /// A program could not be started.
    Spawn {
        /// The program.
        program: String,
        /// The OS's reason.
        reason: String,
    },
    /// A command exited unsuccessfully.
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
    },
    /// A prerequisite is missing and cannot be installed here.
    Missing {
        /// What is missing.
        what: String,
        /// How to install it.
        how: String,
    },
    /// Bad command-line arguments.
    Usage(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Spawn { program, reason } => write!(f, "cannot run `{program}`: {reason}"),
            Error::Failed { command, status } => write!(f, "`{command}` failed ({status})"),
            Error::Missing { what, how } => {
                write!(f, "missing prerequisite: {what}\n  to fix: {how}")
            }
            Error::Usage(msg) => write!(f, "{msg}\n\n{USAGE}"),
        }
    }
}

/// What every command needs to know.
pub struct Ctx {
    /// The repository root.
    pub root: PathBuf,
    /// The `cargo` to use: the one running the xtask.
    pub cargo: String,
    /// The Cargo target directory (`$CARGO_TARGET_DIR` or `target/`).
    pub target_dir: PathBuf,
}

impl Ctx {
    fn new() -> Ctx {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives in the repository root")
            .to_path_buf();
        let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => root.join(dir),
            None => root.join("target"),
        };
        Ctx {
            root,
            cargo: std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
            target_dir,
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ctx = Ctx::new();
    prepend_cargo_bin_to_path();
    let result = match args.as_slice() {
        ["demo"] => demo(&ctx, DEMO_LISTEN),
        ["demo", "--listen", addr] => demo(&ctx, addr),
        ["test", "--list"] => {
            list();
            Ok(())
        }
        ["test", flags @ ..] => test_flags(flags).and_then(|(quick, from)| test(&ctx, quick, from)),
        ["bench", rest @ ..] => bench(&ctx, rest),
        ["setup"] => Setup::default().ensure(&ctx, &tools(false)),
        ["setup", "--quick"] => Setup::default().ensure(&ctx, &tools(true)),
        [] | ["help" | "--help" | "-h"] => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(Error::Usage(format!(
            "unknown arguments: {}",
            other.join(" ")
        ))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nerror: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask bench [ARGS]`: the side-by-side comparison with Socket.IO and a bare axum
/// server (bench/, a workspace member built in release), then the reconnect storm; writes
/// docs/benchmarks.md. Extra arguments go to the benchmark (`--smoke`, `--subscribers
/// 1000,10000`, `--runs N`, `--only tidewire-sse,storm`, ...).
fn bench(ctx: &Ctx, rest: &[&str]) -> Result<(), Error> {
    Setup::default().ensure(ctx, &[Tool::Node])?;
    let mut args = vec!["run", "--release", "-p", "tidewire-bench", "--", "all"];
    args.extend_from_slice(rest);
    run(&ctx.root, &ctx.cargo, &args, &[]).map(drop)
}

/// `cargo install` puts programs in Cargo's bin directory; make sure children find them there.
fn prepend_cargo_bin_to_path() {
    let bin = setup::cargo_bin();
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let mut dirs = vec![bin];
    dirs.extend(std::env::split_paths(&path));
    if let Ok(joined) = std::env::join_paths(dirs) {
        std::env::set_var("PATH", joined);
    }
}

/// The prerequisites of `test` (or `test --quick`).
fn tools(quick: bool) -> Vec<Tool> {
    if quick {
        // Node: the benchmark smoke runs the Socket.IO peer.
        vec![Tool::WasmTarget, Tool::Node]
    } else {
        vec![
            Tool::WasmTarget,
            Tool::WasmBindgen,
            Tool::WasmPack,
            Tool::WasmOpt,
            Tool::Chromium,
            Tool::Node,
        ]
    }
}

fn demo(ctx: &Ctx, listen: &str) -> Result<(), Error> {
    banner("setup");
    Setup::default().ensure(
        ctx,
        &[
            Tool::WasmTarget,
            Tool::WasmBindgen,
            Tool::WasmPack,
            Tool::WasmOpt,
        ],
    )?;
    banner("build the npm package into client/pkg");
    run(&ctx.root, "wasm-pack", WASM_PACK_BUILD, &[])?;
    if run::query("node", &["--version"]).is_some() {
        run(&ctx.root, "node", PACKAGE_SCRIPT, &[])?;
    } else {
        println!(
            "(no Node.js: the package keeps wasm-pack's name and is not optimized by wasm-opt)"
        );
    }
    banner("build the server (release)");
    run(
        &ctx.root,
        &ctx.cargo,
        &[
            "build",
            "--release",
            "-p",
            "tidewire-server",
            "--bin",
            "tidewire",
        ],
        &[],
    )?;
    let bin = ctx.target_dir.join("release").join("tidewire");
    let bin = bin.to_string_lossy();
    banner(&format!(
        "demo: open http://{listen}/ in a browser (Ctrl+C stops the server)"
    ));
    run_foreground(
        &ctx.root,
        &bin,
        &[
            "serve",
            "--listen",
            listen,
            "--database",
            DEMO_DATABASE,
            "--www-dir",
            "www",
            "--pkg-dir",
            "client/pkg",
        ],
    )
}

fn list() {
    for (i, s) in STEPS.iter().enumerate() {
        let what = match s.action {
            Action::Cargo(args) => run::command_line("cargo", args),
            Action::Exec(p, args) => run::command_line(p, args),
            Action::NpmCi => "npm ci".into(),
        };
        let when = s
            .only_if
            .map_or(String::new(), |p| format!("   [when {p} exists]"));
        let quick = if s.group == Group::Browser {
            "   [not in --quick]"
        } else {
            ""
        };
        println!(
            "{:2}. {}\n    in {}: {what}{when}{quick}",
            i + 1,
            s.name,
            s.dir
        );
    }
}

enum Status {
    Passed(Duration),
    Skipped(String),
}

/// `test [--quick] [--from N]`.
fn test_flags(flags: &[&str]) -> Result<(bool, usize), Error> {
    let mut quick = false;
    let mut from = 1;
    let mut it = flags.iter();
    while let Some(flag) = it.next() {
        match *flag {
            "--quick" => quick = true,
            "--from" => {
                from = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| (1..=STEPS.len()).contains(n))
                    .ok_or_else(|| {
                        Error::Usage(format!("--from needs a step number, 1 to {}", STEPS.len()))
                    })?;
            }
            other => return Err(Error::Usage(format!("unknown flag `{other}` for test"))),
        }
    }
    Ok((quick, from))
}

fn test(ctx: &Ctx, quick: bool, from: usize) -> Result<(), Error> {
    let started = Instant::now();
    banner("setup");
    Setup::default().ensure(ctx, &tools(quick))?;

    let root = ctx.root.to_string_lossy().into_owned();
    let pkg = ctx.root.join("client/pkg").to_string_lossy().into_owned();
    let mut env: Vec<(&str, String)> = vec![("TIDEWIRE_ROOT", root), ("TIDEWIRE_PKG", pkg)];
    if !quick {
        if let Some(c) = setup::chromium_path() {
            env.push(("TIDEWIRE_CHROMIUM", c));
        }
        if let Some(d) = setup::chromedriver_path() {
            env.push(("CHROMEDRIVER", d));
        }
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let mut report: Vec<(&Step, Status)> = Vec::new();
    let mut summaries: Vec<(&str, Vec<String>)> = Vec::new();
    let total = STEPS.len();
    for (i, step) in STEPS.iter().enumerate() {
        let n = i + 1;
        if n < from {
            report.push((step, Status::Skipped(format!("--from {from}"))));
            continue;
        }
        if quick && step.group == Group::Browser {
            report.push((step, Status::Skipped("--quick".into())));
            continue;
        }
        if let Some(path) = step.only_if {
            if !ctx.root.join(path).exists() {
                println!(
                    "\n--> [{n}/{total}] {}: skipped ({path} does not exist)",
                    step.name
                );
                report.push((step, Status::Skipped(format!("no {path}"))));
                continue;
            }
        }
        banner(&format!("[{n}/{total}] {}", step.name));
        let dir = ctx.root.join(step.dir);
        let t0 = Instant::now();
        let outcome = match step.action {
            Action::Cargo(args) => expand(ctx, args)
                .and_then(|args| run(&dir, &ctx.cargo, &strs(&args), &env))
                .map(|o| o.summaries),
            Action::Exec(program, args) => expand(ctx, args).and_then(|args| {
                let program = program.replace(steps::TARGET_DIR, &ctx.target_dir.to_string_lossy());
                run(&dir, &program, &strs(&args), &env).map(|o| o.summaries)
            }),
            Action::NpmCi => setup::npm_ci(&dir).map(|()| Vec::new()),
        };
        let took = t0.elapsed();
        match outcome {
            Ok(lines) => {
                println!("<-- [{n}/{total}] {}: ok in {}", step.name, human(took));
                if !lines.is_empty() {
                    summaries.push((step.name, lines));
                }
                report.push((step, Status::Passed(took)));
            }
            Err(e) => {
                println!(
                    "<-- [{n}/{total}] {}: FAILED after {}",
                    step.name,
                    human(took)
                );
                print_report(&report, &summaries);
                println!(
                    "\nFAILED at step {n}/{total} \"{}\" after {} in all",
                    step.name,
                    human(started.elapsed())
                );
                return Err(e);
            }
        }
    }
    println!(
        "\nall steps passed in {}{}",
        human(started.elapsed()),
        if quick {
            " (--quick: browser steps skipped)"
        } else {
            ""
        }
    );
    print_report(&report, &summaries);
    Ok(())
}

/// The arguments with each [`steps::FREE_PORT`] replaced by a port that is free now, and
/// [`steps::TARGET_DIR`] by the target directory.
fn expand(ctx: &Ctx, args: &[&str]) -> Result<Vec<String>, Error> {
    // Hold every listener until all ports are chosen, so they are distinct.
    let mut held = Vec::new();
    let mut out = Vec::with_capacity(args.len());
    for &arg in args {
        if arg == steps::FREE_PORT {
            let listener =
                std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Error::Spawn {
                    program: "a free port".into(),
                    reason: e.to_string(),
                })?;
            let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
            held.push(listener);
            out.push(port.to_string());
        } else {
            out.push(arg.replace(steps::TARGET_DIR, &ctx.target_dir.to_string_lossy()));
        }
    }
    Ok(out)
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The step table, then the test runners' own summary lines, last.
fn print_report(report: &[(&Step, Status)], summaries: &[(&str, Vec<String>)]) {
    println!("\n== steps ==");
    for (step, status) in report {
        match status {
            Status::Passed(d) => println!("  ok       {:>8}  {}", human(*d), step.name),
            Status::Skipped(why) => println!("  skipped  {:>8}  {} ({why})", "", step.name),
        }
    }
    if summaries.is_empty() {
        return;
    }
    println!("\n== test runner summaries ==");
    for (name, lines) in summaries {
        println!("{name}:");
        for line in lines {
            println!("{line}");
        }
    }
}

fn banner(title: &str) {
    println!("\n==> {title}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_expanded() {
        let ctx = Ctx::new();
        let args = expand(
            &ctx,
            &[
                "--port",
                steps::FREE_PORT,
                "--ctl",
                steps::FREE_PORT,
                "{target-dir}/x",
            ],
        )
        .unwrap();
        assert_eq!(args[4], format!("{}/x", ctx.target_dir.display()));
        assert_eq!(args[0], "--port");
        assert_eq!(args[2], "--ctl");
        let a: u16 = args[1].parse().unwrap();
        let b: u16 = args[3].parse().unwrap();
        assert!(a > 0 && b > 0 && a != b, "{args:?}");
    }

    #[test]
    fn test_flag_parsing() {
        assert_eq!(test_flags(&[]).unwrap(), (false, 1));
        assert_eq!(test_flags(&["--quick", "--from", "3"]).unwrap(), (true, 3));
        assert!(test_flags(&["--from", "0"]).is_err());
        assert!(test_flags(&["--from"]).is_err());
        assert!(test_flags(&["--slow"]).is_err());
    }
}
