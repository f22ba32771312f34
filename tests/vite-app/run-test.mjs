// The npm package test: pack `tidewire` from client/pkg, install the tarball into this Vite
// app, build it, serve the build, start a real server (through tidewire-harness), and run the
// page in headless Chromium. The page connects, writes, and must see its write confirmed.
//
//   npm ci && npm test
//
// Environment: TIDEWIRE_PKG (default ../../client/pkg, built with
// `wasm-pack build client --release --target web --out-dir pkg` when missing),
// TIDEWIRE_HARNESS (default: built with cargo), TIDEWIRE_CHROMIUM (default /usr/bin/chromium),
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
const pkgDir = path.resolve(process.env.TIDEWIRE_PKG ?? path.join(root, 'client', 'pkg'));
const base = Number(process.env.TIDEWIRE_VITE_PORTS ?? 18090);
const [serverPort, ctlPort, proxyPort, previewPort] = [base, base + 1, base + 2, base + 3];
const serverUrl = `http://127.0.0.1:${serverPort}`;

function run(cmd, args, opts = {}) {
  console.log(`$ ${cmd} ${args.join(' ')}`);
  return execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8', ...opts });
}

async function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

// 1. The package.
if (!fs.existsSync(path.join(pkgDir, 'package.json'))) {
  run('wasm-pack', ['build', path.join(root, 'client'), '--release', '--target', 'web', '--out-dir', pkgDir], {
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

// 2. Install it into this app (without touching package.json / package-lock.json) and build.
fs.rmSync(path.join(app, 'node_modules', 'tidewire'), { recursive: true, force: true }); // never a stale copy
run('npm', ['install', '--no-save', '--no-audit', '--no-fund', tarball], { cwd: app, stdio: 'inherit' });
const installed = path.join(app, 'node_modules', 'tidewire');
const manifest = JSON.parse(fs.readFileSync(path.join(installed, 'package.json'), 'utf8'));
const wasmFile = manifest.files.find((f) => f.endsWith('.wasm'));
const jsFile = manifest.module ?? manifest.main;
const gz = (f) => zlib.gzipSync(fs.readFileSync(path.join(installed, f)), { level: 9 }).length;
const sizes = { wasm: gz(wasmFile), js: gz(jsFile) };
console.log(`gzipped: ${wasmFile} ${sizes.wasm} B + ${jsFile} ${sizes.js} B = ${sizes.wasm + sizes.js} B`);
const dts = fs.readFileSync(path.join(installed, manifest.types), 'utf8');
for (const t of ['ClientOptions', 'ConnectionState', 'RoomUpdate', 'RollbackInfo', 'class Client', 'class Room']) {
  assert.ok(dts.includes(t), `the declarations name ${t}`);
}

// The declarations type-check an application that uses every part of the API.
run(path.join(app, 'node_modules', '.bin', 'tsc'), ['-p', path.join(app, 'tsconfig.json')], { stdio: 'inherit' });

const vite = await import('vite');
await vite.build({ root: app, logLevel: 'warn' });

// 3. A real server, through the harness.
function harnessBinary() {
  if (process.env.TIDEWIRE_HARNESS) return process.env.TIDEWIRE_HARNESS;
  run('cargo', ['build', '-q', '-p', 'tidewire-harness', '-p', 'tidewire-server', '--bin', 'tidewire', '--bin', 'tidewire-harness'], {
    cwd: root,
    stdio: 'inherit',
  });
  const meta = JSON.parse(run('cargo', ['metadata', '--format-version', '1', '--no-deps'], { cwd: root }));
  return path.join(meta.target_directory, 'debug', 'tidewire-harness');
}
const harness = spawn(
  harnessBinary(),
  ['--port', String(serverPort), '--ctl-port', String(ctlPort), '--proxy-port', String(proxyPort)],
  { stdio: ['ignore', 'ignore', 'inherit'] },
);
let preview;
let browser;
let failed = false;
try {
  let up = false;
  for (let i = 0; i < 150 && !up; i++) {
    await sleep(100);
    up = await fetch(`${serverUrl}/healthz`).then((r) => r.ok, () => false);
  }
  assert.ok(up, 'the server came up');

  preview = await vite.preview({ root: app, logLevel: 'warn', preview: { port: previewPort, strictPort: true, host: '127.0.0.1' } });
  const pageUrl = `http://127.0.0.1:${previewPort}/?server=${encodeURIComponent(serverUrl)}`;

  // 4. The page in headless Chromium.
  const { chromium } = await import('playwright-core');
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tidewire-chromium-'));
  browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.TIDEWIRE_CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    timeout: 60000,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  const page = await browser.newPage();
  page.on('console', (m) => console.log(`[page] ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => console.log(`[page] error: ${e}`));
  await page.goto(pageUrl);
  await page.waitForFunction(() => window.__result !== undefined, null, { timeout: 30000 });
  const result = await page.evaluate(() => window.__result);
  console.log(JSON.stringify(result, null, 2));
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
  console.log(`ok: the packed tidewire package works in a Vite app (gzipped wasm+js ${sizes.wasm + sizes.js} B)`);
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await browser?.close().catch(() => {});
  await preview?.close?.().catch?.(() => {});
  preview?.httpServer?.close();
  harness.kill('SIGINT');
  await sleep(300);
}
process.exit(failed ? 1 : 0);
