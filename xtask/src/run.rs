//! Running commands: print them, time them, stream their output, and keep the test runners'
//! summary lines (`test result: …`, node's `# pass 3`, …) for the final report.
//!
//! ```no_run
//! # use std::path::Path;
//! let out = crate::run::run(Path::new("."), "cargo", &["--version"], &[]).unwrap();
//! assert!(out.summaries.is_empty());
//! ```

use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::Error;

/// What a finished command left behind.
pub struct Outcome {
    /// The runners' summary lines the command printed, ANSI colours removed.
    pub summaries: Vec<String>,
}

/// `program args…` as a shell-like line, for printing.
pub fn command_line(program: &str, args: &[&str]) -> String {
    let mut line = program.to_owned();
    for a in args {
        line.push(' ');
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
            line.push_str(&format!("'{a}'"));
        } else {
            line.push_str(a);
        }
    }
    line
}

/// Runs `program args` in `dir` with stdin closed, streaming its output to ours. A non-zero
/// exit is [`Error::Failed`]; a program that cannot be started is [`Error::Spawn`].
pub fn run(
    dir: &Path,
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<Outcome, Error> {
    let line = command_line(program, args);
    println!("$ {line}");
    let _ = io::stdout().flush();
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (OsStr::new(k), OsStr::new(v))))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Spawn {
            program: program.to_owned(),
            reason: e.to_string(),
        })?;
    let summaries = Arc::new(Mutex::new(Vec::new()));
    let out = child
        .stdout
        .take()
        .map(|s| pump(s, false, summaries.clone()));
    let err = child
        .stderr
        .take()
        .map(|s| pump(s, true, summaries.clone()));
    let status = child.wait().map_err(|e| Error::Spawn {
        program: program.to_owned(),
        reason: e.to_string(),
    })?;
    for handle in [out, err].into_iter().flatten() {
        let _ = handle.join();
    }
    let summaries = std::mem::take(&mut *summaries.lock().unwrap_or_else(|p| p.into_inner()));
    if status.success() {
        Ok(Outcome { summaries })
    } else {
        Err(Error::Failed {
            command: line,
            status: status.code().map_or_else(
                || "killed by a signal".to_owned(),
                |c| format!("exit code {c}"),
            ),
        })
    }
}

/// Runs `program args` in the foreground with our stdin, stdout and stderr (for the demo server).
pub fn run_foreground(dir: &Path, program: &str, args: &[&str]) -> Result<(), Error> {
    let line = command_line(program, args);
    println!("$ {line}");
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .status()
        .map_err(|e| Error::Spawn {
            program: program.to_owned(),
            reason: e.to_string(),
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Failed {
            command: line,
            status: status.code().map_or_else(
                || "killed by a signal".to_owned(),
                |c| format!("exit code {c}"),
            ),
        })
    }
}

/// The combined stdout and stderr of a short query such as `tool --version`, or `None` when
/// the program is missing, fails, or takes longer than 30 seconds.
pub fn query(program: &str, args: &[&str]) -> Option<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take()?;
    let mut stderr = child.stderr.take()?;
    let reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        let _ = stderr.read_to_string(&mut text);
        text
    });
    for _ in 0..300 {
        match child.try_wait() {
            Ok(Some(status)) => {
                let text = reader.join().ok()?;
                return status.success().then_some(text);
            }
            Ok(None) => thread::sleep(Duration::from_millis(100)),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Copies a child's output stream to ours line by line, keeping summary lines.
fn pump(
    stream: impl Read + Send + 'static,
    to_stderr: bool,
    summaries: Arc<Mutex<Vec<String>>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            // The print macros (not raw writes) so the output is captured in this crate's tests.
            let raw = String::from_utf8_lossy(&buf);
            if to_stderr {
                eprint!("{raw}");
            } else {
                print!("{raw}");
            }
            let text = strip_ansi(&raw);
            if is_summary_line(&text) {
                if let Ok(mut s) = summaries.lock() {
                    s.push(text.trim_end().to_owned());
                }
            }
        }
    })
}

/// Whether a line is a test runner's summary: cargo's and wasm-bindgen-test-runner's
/// `test result:`, node's test runner (`# pass 3` in TAP, `ℹ pass 3` in the spec reporter),
/// Vitest's `Tests  3 passed (3)`.
pub fn is_summary_line(line: &str) -> bool {
    let t = line.trim();
    if t.starts_with("test result:") {
        // Skip the many empty binaries of a workspace (no tests at all).
        return !t.starts_with("test result: ok. 0 passed; 0 failed; 0 ignored");
    }
    const NODE: &[&str] = &[
        "tests ",
        "suites ",
        "pass ",
        "fail ",
        "cancelled ",
        "skipped ",
        "todo ",
    ];
    for prefix in ["# ", "ℹ "] {
        if let Some(rest) = t.strip_prefix(prefix) {
            if NODE.iter().any(|n| {
                rest.strip_prefix(n)
                    .is_some_and(|num| !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit()))
            }) {
                return true;
            }
        }
    }
    (t.starts_with("Tests ") || t.starts_with("Test Files "))
        && (t.contains("passed") || t.contains("failed"))
}

/// Removes ANSI escape sequences (colours) from a line.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A duration as `1m 05s` or `4.2s`.
pub fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 {
        format!("{}m {:02}s", secs / 60, secs % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lines() {
        for yes in [
            "test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "test result: FAILED. 1 passed; 1 failed; 0 ignored",
            "# pass 3",
            "# fail 0",
            "# tests 3",
            "ℹ tests 2",
            "\u{1b}[34mℹ pass 2\u{1b}[39m",
            "      Tests  4 passed (4)",
        ] {
            assert!(is_summary_line(&strip_ansi(yes)), "{yes}");
        }
        for no in [
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
            "running 3 tests",
            "# Subtest: loads the page",
            "# pass the salt",
            "Compiling tidewire v0.1.0",
        ] {
            assert!(!is_summary_line(no), "{no}");
        }
    }

    #[test]
    fn command_lines_quote_spaces() {
        assert_eq!(command_line("a", &["b c", "d"]), "a 'b c' d");
    }

    #[test]
    fn durations() {
        assert_eq!(human(Duration::from_millis(4200)), "4.2s");
        assert_eq!(human(Duration::from_secs(65)), "1m 05s");
    }

    #[test]
    fn failing_command_is_an_error() {
        let err = run(Path::new("."), "false", &[], &[]).err().unwrap();
        assert!(matches!(err, Error::Failed { .. }), "{err}");
        let err = run(Path::new("."), "no-such-program-tidewire", &[], &[])
            .err()
            .unwrap();
        assert!(matches!(err, Error::Spawn { .. }), "{err}");
    }

    #[test]
    fn summaries_are_collected() {
        let out = run(
            Path::new("."),
            "sh",
            &[
                "-c",
                "echo 'running 1 test'; echo 'test result: ok. 1 passed; 0 failed'",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(out.summaries, ["test result: ok. 1 passed; 0 failed"]);
    }
}
