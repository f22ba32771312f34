// The npm package test: for both wasm-pack builds (`--target web` in client/pkg and
// `--target bundler` in client/pkg-bundler), pack `tidewire`, install the tarball into a fresh
// copy of this Vite app (npm ci from its lock file, then the tarball), build it, serve the build, and run the page in headless Chromium against a real
// server (started through tidewire-harness). The page connects, writes, and must see its write
// confirmed. The web build's declarations also type-check an app using the whole API.
//
//   npm ci && npm test
//
// Environment: TIDEWIRE_PKG (a `--target web` build, used as it is) and TIDEWIRE_PKG_BUNDLER (a
// `--target bundler` build); without them the builds are made here, in client/pkg and
// client/pkg-bundler, with `wasm-pack build client --release --target …`; TIDEWIRE_HARNESS (default: built with cargo; the server is $TIDEWIRE_BIN or
// the `tidewire` next to it); TIDEWIRE_CHROMIUM (default /usr/bin/chromium);
// TIDEWIRE_VITE_PORTS (default 18090: server 18090, control 18091, proxy 18092, preview 18093).
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';

const app = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(app, '..', '..');
// A build named by its variable is used as it is (built when missing); otherwise it is
// (re)built here, so a stale one is never tested.
const targets = [
  { target: 'web', env: 'TIDEWIRE_PKG', dir: 'pkg' },
  { target: 'bundler', env: 'TIDEWIRE_PKG_BUNDLER', dir: 'pkg-bundler' },
].map(({ target, env, dir }) => ({
  target,
  given: Boolean(process.env[env]),
  pkgDir: path.resolve(process.env[env] ?? path.join(root, 'client', dir)),
}));
const base = Number(process.env.TIDEWIRE_VITE_PORTS ?? 18090);
const [serverPort, ctlPort, proxyPort, previewPort] = [base, base + 1, base + 2, base + 3];
const serverUrl = `http://127.0.0.1:${serverPort}`;

// `npm test` exports npm_config_* (local_prefix among them) to its children; a child `npm`
// would then work on this directory instead of its cwd. Children get a clean environment.
const cleanEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k)));

function run(cmd, args, opts = {}) {
  console.log(`$ ${cmd} ${args.join(' ')}`);
  return execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8', env: cleanEnv, ...opts });
}

async function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** Builds (when missing), packs and installs one build of the package; returns its gzipped sizes. */
function install({ target, given, pkgDir }) {
  if (!given || !fs.existsSync(path.join(pkgDir, 'package.json'))) {
    run('wasm-pack', ['build', path.join(root, 'client'), '--release', '--target', target, '--out-dir', pkgDir], {
      stdio: 'inherit',
    });
  }
  run('node', [path.join(root, 'client', 'scripts', 'package.mjs'), pkgDir], { stdio: 'inherit' });
  const packDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tidewire-pack-'));
  const packed = JSON.parse(run('npm', ['pack', pkgDir, '--json', '--pack-destination', packDir]));
  const tarball = path.join(packDir, packed[0].filename);
  assert.equal(packed[0].name, 'tidewire');
  const packedFiles = packed[0].files.map((f) => f.path);
  for (const f of ['package.json', 'README.md']) assert.ok(packedFiles.includes(f), `${f} is in the tarball`);
  assert.ok(packedFiles.some((f) => f.endsWith('.wasm')), 'the .wasm is in the tarball');
  assert.ok(packedFiles.some((f) => f.endsWith('.d.ts')), 'TypeScript declarations are in the tarball');

  // A fresh copy of the app (its lock file pins vite and playwright-core), then the tarball.
  const fresh = fs.mkdtempSync(path.join(os.tmpdir(), `tidewire-vite-${target}-`));
  for (const f of ['package.json', 'package-lock.json', 'index.html', 'vite.config.js', 'tsconfig.json', 'src']) {
    fs.cpSync(path.join(app, f), path.join(fresh, f), { recursive: true });
  }
  run('npm', ['ci', '--no-audit', '--no-fund'], { cwd: fresh, stdio: 'inherit' });
  run('npm', ['install', '--no-save', '--no-audit', '--no-fund', tarball], { cwd: fresh, stdio: 'inherit' });
  fs.rmSync(packDir, { recursive: true, force: true });
  const installed = path.join(fresh, 'node_modules', 'tidewire');
  const manifest = JSON.parse(fs.readFileSync(path.join(installed, 'package.json'), 'utf8'));
  const gz = (f) => zlib.gzipSync(fs.readFileSync(path.join(installed, f)), { level: 9 }).length;
  // The SDK's JS glue; the React bindings (react/, tests/react-app) are counted apart.
  const js = manifest.files.filter((f) => f.endsWith('.js') && !f.startsWith('react/'));
  const sizes = {
    wasm: gz(manifest.files.find((f) => f.endsWith('.wasm'))),
    js: js.reduce((n, f) => n + gz(f), 0),
  };
  console.log(`${target}: gzipped .wasm ${sizes.wasm} B + JS glue ${sizes.js} B = ${sizes.wasm + sizes.js} B`);
  const dts = fs.readFileSync(path.join(installed, manifest.types), 'utf8');
  for (const t of ['ClientOptions', 'ConnectionState', 'RoomUpdate', 'RollbackInfo', 'class Client', 'class Room']) {
    assert.ok(dts.includes(t), `the declarations name ${t}`);
  }
  return { sizes, fresh };
}

function harnessBinary() {
  if (process.env.TIDEWIRE_HARNESS) return process.env.TIDEWIRE_HARNESS;
  run('cargo', ['build', '-q', '-p', 'tidewire-harness', '-p', 'tidewire-server', '--bin', 'tidewire', '--bin', 'tidewire-harness'], {
    cwd: root,
    stdio: 'inherit',
  });
  const meta = JSON.parse(run('cargo', ['metadata', '--format-version', '1', '--no-deps'], { cwd: root }));
  return path.join(meta.target_directory, 'debug', 'tidewire-harness');
}

/** Builds the app, serves it and runs the page; asserts what the page saw. */
async function runPage(browser, vite, target, fresh) {
  await vite.build({ root: fresh, logLevel: 'warn' });
  const preview = await vite.preview({
    root: fresh,
    logLevel: 'warn',
    preview: { port: previewPort, strictPort: true, host: '127.0.0.1' },
  });
  try {
    const page = await browser.newPage();
    page.on('console', (m) => console.log(`[page] ${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => console.log(`[page] error: ${e}`));
    await page.goto(`http://127.0.0.1:${previewPort}/?server=${encodeURIComponent(serverUrl)}`);
    await page.waitForFunction(() => window.__result !== undefined, null, { timeout: 30000 });
    const result = await page.evaluate(() => window.__result);
    await page.close();
    console.log(`${target}: ${JSON.stringify(result)}`);
    assert.equal(result.ok, true, `the page failed: ${result.error}`);
    assert.deepEqual(result.shownAtOnce, { pending: true, value: { from: 'vite' } }, 'the write shows at once, pending');
    assert.equal(result.event.type, 'item.put');
    assert.equal(result.event.seq, 1);
    assert.equal(result.item.pending, false, 'the write is confirmed');
    assert.equal(result.item.version, 1);
    assert.deepEqual(result.item.value, { from: 'vite' });
    assert.equal(result.state, 'open');
    assert.equal(result.transport, 'sse');
    assert.equal(result.badRoomCode, 'bad_room_name', 'errors are Errors with a code');
    assert.equal(result.afterClose, 'closed');
  } finally {
    await preview.close?.();
  }
}

const harness = spawn(
  harnessBinary(),
  ['--port', String(serverPort), '--ctl-port', String(ctlPort), '--proxy-port', String(proxyPort)],
  { stdio: ['ignore', 'ignore', 'inherit'] },
);
let browser;
let userDataDir;
let failed = false;
try {
  let up = false;
  for (let i = 0; i < 150 && !up; i++) {
    await sleep(100);
    up = await fetch(`${serverUrl}/healthz`).then((r) => r.ok, () => false);
  }
  assert.ok(up, 'the server came up');
  const vite = await import('vite');
  const { chromium } = await import('playwright-core');
  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tidewire-chromium-'));
  browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.TIDEWIRE_CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    timeout: 60000,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  const report = [];
  for (const t of targets) {
    const { sizes, fresh } = install(t);
    if (t.target === 'web') {
      // The declarations type-check an application that uses every part of the API.
      run(path.join(fresh, 'node_modules', '.bin', 'tsc'), ['-p', path.join(fresh, 'tsconfig.json')], { stdio: 'inherit' });
    }
    await runPage(browser, vite, t.target, fresh);
    fs.rmSync(fresh, { recursive: true, force: true });
    report.push(`${t.target}: ok, gzipped wasm ${sizes.wasm} B + js ${sizes.js} B`);
  }
  console.log(`ok: the packed tidewire package works in a Vite app\n  ${report.join('\n  ')}`);
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await browser?.close().catch(() => {});
  if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
  harness.kill('SIGINT');
  await sleep(300);
}
process.exit(failed ? 1 : 0);
