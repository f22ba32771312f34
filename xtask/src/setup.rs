//! Prerequisites: each is checked (by version, not just presence) and installed when missing,
//! so a fresh machine with only `cargo` gets everything, and a warm one skips it all.
//!
//! | prerequisite | check | install |
//! |---|---|---|
//! | wasm32 target | `rustup target list --installed` | `rustup target add wasm32-unknown-unknown` |
//! | wasm-bindgen CLI | `wasm-bindgen --version` says 0.2.130 | `cargo install wasm-bindgen-cli --version 0.2.130` |
//! | wasm-pack | `wasm-pack --version` says 0.15.1 | `cargo install wasm-pack --version 0.15.1 --locked` |
//! | wasm-opt | `wasm-opt --version` ≥ 116 | `npm ci` in `client/scripts/wasm-opt` (binaryen from npm) |
//! | Chromium + chromedriver | both present, same major version | `apt-get install -y chromium chromium-driver` (root only) |
//! | Node.js + npm | `node --version` ≥ 20 | `apt-get install -y nodejs npm` (root only) |
//!
//! A prerequisite that cannot be installed (not root, no apt-get) stops with a message naming
//! what to install.

use std::path::{Path, PathBuf};

use crate::run::{query, run};
use crate::{Ctx, Error};

/// The wasm-bindgen CLI version; must equal the `wasm-bindgen` crate pinned in Cargo.toml.
pub const WASM_BINDGEN_VERSION: &str = "0.2.130";
/// The wasm-pack version.
pub const WASM_PACK_VERSION: &str = "0.15.1";
/// The oldest Node.js major version the browser tests run on.
pub const NODE_MIN_MAJOR: u32 = 20;
/// The oldest binaryen whose `wasm-opt` reads the SDK's module (reference types).
pub const WASM_OPT_MIN_VERSION: u32 = 116;
/// Where npm installs binaryen when no recent `wasm-opt` is on PATH (relative to the root).
pub const WASM_OPT_DIR: &str = "client/scripts/wasm-opt";
/// The Rust target of the browser SDK.
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// One prerequisite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// The `wasm32-unknown-unknown` Rust target.
    WasmTarget,
    /// `wasm-bindgen` CLI at [`WASM_BINDGEN_VERSION`].
    WasmBindgen,
    /// `wasm-pack` at [`WASM_PACK_VERSION`].
    WasmPack,
    /// `wasm-opt` (binaryen), which a release `wasm-pack build` needs.
    WasmOpt,
    /// Chromium and a matching chromedriver.
    Chromium,
    /// Node.js and npm.
    Node,
}

/// Installs what is missing, remembering whether `apt-get update` already ran.
#[derive(Default)]
pub struct Setup {
    apt_updated: bool,
}

impl Setup {
    /// Checks each tool in order and installs the missing ones.
    pub fn ensure(&mut self, ctx: &Ctx, tools: &[Tool]) -> Result<(), Error> {
        for &tool in tools {
            match tool {
                Tool::WasmTarget => self.wasm_target(ctx)?,
                Tool::WasmBindgen => self.cargo_tool(
                    ctx,
                    "wasm-bindgen",
                    WASM_BINDGEN_VERSION,
                    &[
                        "install",
                        "wasm-bindgen-cli",
                        "--version",
                        WASM_BINDGEN_VERSION,
                    ],
                )?,
                Tool::WasmPack => self.cargo_tool(
                    ctx,
                    "wasm-pack",
                    WASM_PACK_VERSION,
                    &[
                        "install",
                        "wasm-pack",
                        "--version",
                        WASM_PACK_VERSION,
                        "--locked",
                    ],
                )?,
                Tool::WasmOpt => self.wasm_opt(ctx)?,
                Tool::Chromium => self.chromium(ctx)?,
                Tool::Node => self.node(ctx)?,
            }
        }
        Ok(())
    }

    fn wasm_target(&mut self, ctx: &Ctx) -> Result<(), Error> {
        if let Some(list) = query("rustup", &["target", "list", "--installed"]) {
            if list.lines().any(|l| l.trim() == WASM_TARGET) {
                return present(&format!("rust target {WASM_TARGET}"));
            }
            println!("setup: rust target {WASM_TARGET} is missing: installing");
            run(&ctx.root, "rustup", &["target", "add", WASM_TARGET], &[])?;
            return Ok(());
        }
        // No rustup (a distribution's Rust): look in the sysroot.
        let sysroot = query("rustc", &["--print", "sysroot"]).unwrap_or_default();
        let lib = Path::new(sysroot.trim())
            .join("lib/rustlib")
            .join(WASM_TARGET);
        if !sysroot.trim().is_empty() && lib.is_dir() {
            return present(&format!("rust target {WASM_TARGET}"));
        }
        Err(Error::Missing {
            what: format!("the Rust target {WASM_TARGET}"),
            how: format!("install rustup (https://rustup.rs) and run `rustup target add {WASM_TARGET}`, or install your distribution's Rust standard library for {WASM_TARGET}"),
        })
    }

    fn cargo_tool(
        &mut self,
        ctx: &Ctx,
        program: &str,
        version: &str,
        install: &[&str],
    ) -> Result<(), Error> {
        let found = query(program, &["--version"]);
        if let Some(v) = &found {
            if has_version(v, version) {
                return present(&format!("{program} {version}"));
            }
            println!(
                "setup: {program} is version `{}`, this project needs {version}: installing",
                v.trim()
            );
        } else {
            println!("setup: {program} is missing: installing {program} {version} (a few minutes)");
        }
        run(&ctx.root, &ctx.cargo, install, &[])?;
        match query(program, &["--version"]) {
            Some(v) if has_version(&v, version) => Ok(()),
            other => Err(Error::Missing {
                what: format!("{program} {version}"),
                how: format!(
                    "`{program} --version` now says `{}`; put Cargo's bin directory ({}) first on PATH, or remove the other {program}",
                    other.unwrap_or_default().trim(),
                    cargo_bin().display()
                ),
            }),
        }
    }

    /// A wasm-opt that reads the SDK's module (binaryen >= [`WASM_OPT_MIN_VERSION`], which
    /// knows reference types): one on PATH, or else npm's `binaryen` in [`WASM_OPT_DIR`], the
    /// place `client/scripts/package.mjs` looks. Distribution packages are often older (Debian 12
    /// ships 108), so they are not installed.
    fn wasm_opt(&mut self, ctx: &Ctx) -> Result<(), Error> {
        if let Some(v) = query("wasm-opt", &["--version"]) {
            if binaryen_version(&v).is_some_and(|n| n >= WASM_OPT_MIN_VERSION) {
                return present(v.trim());
            }
        }
        self.node(ctx)?;
        let dir = ctx.root.join(WASM_OPT_DIR);
        npm_ci(&dir)?;
        let bin = dir.join("node_modules/.bin/wasm-opt");
        match query(&bin.to_string_lossy(), &["--version"]) {
            Some(v) if binaryen_version(&v).is_some_and(|n| n >= WASM_OPT_MIN_VERSION) => Ok(()),
            other => Err(Error::Missing {
                what: format!("wasm-opt {WASM_OPT_MIN_VERSION} or newer"),
                how: format!(
                    "{} says `{}`; install binaryen {WASM_OPT_MIN_VERSION}+ and put its wasm-opt on PATH",
                    bin.display(),
                    other.unwrap_or_default().trim()
                ),
            }),
        }
    }

    fn chromium(&mut self, ctx: &Ctx) -> Result<(), Error> {
        let check = || -> Result<String, String> {
            let browser = chromium_path().ok_or("Chromium is missing")?;
            let driver = chromedriver_path().ok_or("chromedriver is missing")?;
            let bv = query(&browser, &["--version"]).ok_or("`chromium --version` fails")?;
            let dv = query(&driver, &["--version"]).ok_or("`chromedriver --version` fails")?;
            match (major_version(&bv), major_version(&dv)) {
                (Some(b), Some(d)) if b == d => Ok(format!("Chromium {b} and chromedriver {d}")),
                (b, d) => Err(format!(
                    "Chromium ({}) and chromedriver ({}) versions differ",
                    b.map_or("?".into(), |v| v.to_string()),
                    d.map_or("?".into(), |v| v.to_string())
                )),
            }
        };
        match check() {
            Ok(found) => present(&found),
            Err(why) => {
                println!("setup: {why}");
                self.apt(
                    ctx,
                    "Chromium and chromedriver",
                    &["chromium", "chromium-driver"],
                    "install Chromium and a chromedriver of the same version (Debian: `apt-get install chromium chromium-driver`); set TIDEWIRE_CHROMIUM and CHROMEDRIVER when they are not at /usr/bin",
                )?;
                check().map(|_| ()).map_err(|why| Error::Missing {
                    what: "Chromium and chromedriver".into(),
                    how: why,
                })
            }
        }
    }

    fn node(&mut self, ctx: &Ctx) -> Result<(), Error> {
        let check = || -> Option<u32> {
            let v = query("node", &["--version"])?;
            query("npm", &["--version"])?;
            major_version(&v)
        };
        match check() {
            Some(major) if major >= NODE_MIN_MAJOR => present(&format!("Node.js {major} and npm")),
            found => {
                if let Some(major) = found {
                    return Err(Error::Missing {
                        what: format!("Node.js {NODE_MIN_MAJOR} or newer"),
                        how: format!(
                            "Node.js {major} is on PATH; install Node.js 20 (https://nodejs.org)"
                        ),
                    });
                }
                self.apt(
                    ctx,
                    "Node.js and npm",
                    &["nodejs", "npm"],
                    "install Node.js 20 or newer with npm (https://nodejs.org)",
                )?;
                check().map(|_| ()).ok_or_else(|| Error::Missing {
                    what: "Node.js and npm".into(),
                    how: "install Node.js 20 or newer with npm (https://nodejs.org)".into(),
                })
            }
        }
    }

    /// Installs Debian packages when running as root with apt-get, or explains what to do.
    fn apt(&mut self, ctx: &Ctx, what: &str, packages: &[&str], how: &str) -> Result<(), Error> {
        let root = query("id", &["-u"]).is_some_and(|u| u.trim() == "0");
        let apt = query("apt-get", &["--version"]).is_some();
        if !(root && apt) {
            return Err(Error::Missing {
                what: what.into(),
                how: how.into(),
            });
        }
        let env = [("DEBIAN_FRONTEND", "noninteractive")];
        if !self.apt_updated {
            run(&ctx.root, "apt-get", &["update"], &env)?;
            self.apt_updated = true;
        }
        let mut args = vec!["install", "-y", "--no-install-recommends"];
        args.extend_from_slice(packages);
        run(&ctx.root, "apt-get", &args, &env)?;
        Ok(())
    }
}

/// Runs `npm ci` in `dir` unless its `node_modules` was installed from the same lock file
/// (remembered in `node_modules/.tidewire-lock`).
pub fn npm_ci(dir: &Path) -> Result<(), Error> {
    let lock = std::fs::read(dir.join("package-lock.json")).map_err(|e| Error::Missing {
        what: format!("{}/package-lock.json", dir.display()),
        how: format!("commit the lock file ({e})"),
    })?;
    let stamp = dir.join("node_modules/.tidewire-lock");
    if std::fs::read(&stamp).is_ok_and(|s| s == lock) {
        return present(&format!("node_modules of {}", dir.display()));
    }
    run(dir, "npm", &["ci", "--no-audit", "--no-fund"], &[])?;
    std::fs::write(&stamp, &lock).map_err(|e| Error::Spawn {
        program: "npm ci".into(),
        reason: format!("cannot write {}: {e}", stamp.display()),
    })?;
    Ok(())
}

/// Cargo's bin directory, where `cargo install` puts programs.
pub fn cargo_bin() -> PathBuf {
    match std::env::var_os("CARGO_HOME") {
        Some(home) => PathBuf::from(home).join("bin"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo/bin"),
    }
}

/// The Chromium to test with: `$TIDEWIRE_CHROMIUM`, `/usr/bin/chromium`, or `chromium` on PATH.
pub fn chromium_path() -> Option<String> {
    if let Ok(p) = std::env::var("TIDEWIRE_CHROMIUM") {
        return Some(p);
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .find(|p| Path::new(p).exists())
        .map(|p| p.to_string())
        .or_else(|| which("chromium"))
}

/// The chromedriver to test with: `$CHROMEDRIVER` or `chromedriver` on PATH.
pub fn chromedriver_path() -> Option<String> {
    std::env::var("CHROMEDRIVER")
        .ok()
        .or_else(|| which("chromedriver"))
}

fn which(program: &str) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

fn present(what: &str) -> Result<(), Error> {
    println!("setup: {what}: already installed");
    Ok(())
}

/// Whether `--version` output names exactly `version` (`wasm-bindgen 0.2.130`, not `0.2.1301`).
pub fn has_version(output: &str, version: &str) -> bool {
    output
        .split(|c: char| c.is_whitespace() || c == 'v')
        .any(|word| word == version)
}

/// The release in binaryen's `wasm-opt version 132 (version_132)`.
pub fn binaryen_version(output: &str) -> Option<u32> {
    let rest = &output[output.find("version")? + "version".len()..];
    rest.trim_start_matches([' ', '_'])
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
}

/// The major version in output like `Chromium 156.0.8078.79 built on …` or `v20.20.2`.
pub fn major_version(output: &str) -> Option<u32> {
    output
        .split_whitespace()
        .map(|w| w.trim_start_matches('v'))
        .find(|w| w.contains('.') && w.starts_with(|c: char| c.is_ascii_digit()))
        .and_then(|w| w.split('.').next())
        .and_then(|m| m.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(has_version("wasm-bindgen 0.2.130\n", "0.2.130"));
        assert!(!has_version("wasm-bindgen 0.2.1301", "0.2.130"));
        assert!(!has_version("wasm-bindgen 0.2.100", "0.2.130"));
        assert!(has_version("wasm-pack 0.15.1", "0.15.1"));
        assert_eq!(
            major_version("Chromium 156.0.8078.79 built on Debian GNU/Linux 12"),
            Some(156)
        );
        assert_eq!(
            major_version(
                "ChromeDriver 156.0.8078.79 (a21ce95c24ce-refs/branch-heads/8078@{#1704})"
            ),
            Some(156)
        );
        assert_eq!(major_version("v20.20.2"), Some(20));
        assert_eq!(major_version("nothing here"), None);
        assert_eq!(
            binaryen_version("wasm-opt version 132 (version_132)"),
            Some(132)
        );
        assert_eq!(binaryen_version("wasm-opt version 108"), Some(108));
        assert_eq!(binaryen_version("wasm-opt"), None);
    }
}
