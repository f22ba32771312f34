// The `tidewire/react` test: pack the npm package,
// install the tarball into a fresh copy of this Vite + React 19 app (npm ci from its lock
// file, then the tarball), type-check the app with `tsc --strict`, render the hooks on the
// server with `renderToString`, build the app in development mode (so <StrictMode> runs every
// effect twice) and drive two pages in headless Chromium against a real `tidewire` server:
//
// - items written by another client (REST PUT from Node) render and update live;
// - one remote change to item A re-renders the cell that selected A, not the one of B, and not
//   the selector components whose selection did not change;
// - an optimistic put shows pending, then confirmed; a conflicting put rolls back visibly;
// - presence lists both pages, and drops the one that closed; a broadcast reaches the other
//   page through the latest handler;
// - StrictMode and remounting the Provider leak no connection (`tidewire_connections`);
// - useConnection shows `open`, `reconnecting` while the server is down, `open` after restart.
// - the README's "React" example (copied from README.md into src/readme.jsx) works as printed.
//
//   npm ci && npm test
//
// All of it for both wasm-pack builds, except tsc and SSR (the web build only).
//
// Environment: TIDEWIRE_PKG and TIDEWIRE_PKG_BUNDLER (the `--target web` and `--target
// bundler` builds; default client/pkg and client/pkg-bundler, built with wasm-pack when
// missing); TIDEWIRE_BIN (default: `tidewire` in Cargo's target/debug,
// built when missing); TIDEWIRE_CHROMIUM (default /usr/bin/chromium).
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';

const app = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(app, '..', '..');
// Both wasm-pack builds: `--target web` (whose `init()` the bindings call) and `--target bundler`.
const targets = [
  { target: 'web', env: 'TIDEWIRE_PKG', dir: 'pkg' },
  { target: 'bundler', env: 'TIDEWIRE_PKG_BUNDLER', dir: 'pkg-bundler' },
].map(({ target, env, dir }) => ({ target, pkgDir: path.resolve(process.env[env] ?? path.join(root, 'client', dir)) }));

// `npm test` exports npm_config_* to its children; a child `npm` would then work on this
// directory instead of its cwd. Children get a clean environment.
const cleanEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k)));

function run(cmd, args, opts = {}) {
  console.log(`$ ${cmd} ${args.join(' ')}`);
  return execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8', env: cleanEnv, ...opts });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` (async) until it answers truthy, or fails with `what` after `ms`. */
async function until(what, check, ms = 15000) {
  const start = Date.now();
  let last;
  while (Date.now() - start < ms) {
    last = await check();
    if (last) return last;
    await sleep(50);
  }
  throw new Error(`timed out after ${ms} ms waiting for: ${what} (last: ${JSON.stringify(last)})`);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function serverBinary() {
  if (process.env.TIDEWIRE_BIN) return process.env.TIDEWIRE_BIN;
  const meta = JSON.parse(run('cargo', ['metadata', '--format-version', '1', '--no-deps'], { cwd: root }));
  const bin = path.join(meta.target_directory, 'debug', 'tidewire');
  if (!fs.existsSync(bin)) run('cargo', ['build', '-q', '-p', 'tidewire-server', '--bin', 'tidewire'], { cwd: root, stdio: 'inherit' });
  return bin;
}

/** Packs one build of the package and installs it into a fresh copy of the app; returns the copy. */
function install({ target, pkgDir }) {
  // `cargo xtask test` built both in earlier steps (client/pkg, and client/pkg-bundler in the
  // Vite package test); alone, a missing build is made here.
  if (!fs.existsSync(path.join(pkgDir, 'package.json'))) {
    run('wasm-pack', ['build', path.join(root, 'client'), '--release', '--target', target, '--out-dir', pkgDir], { stdio: 'inherit' });
  }
  run('node', [path.join(root, 'client', 'scripts', 'package.mjs'), pkgDir], { stdio: 'inherit' });
  const packDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tidewire-pack-'));
  const packed = JSON.parse(run('npm', ['pack', pkgDir, '--json', '--pack-destination', packDir]));
  const files = packed[0].files.map((f) => f.path);
  for (const f of ['react/index.js', 'react/store.js', 'react/index.d.ts']) assert.ok(files.includes(f), `${f} is in the tarball`);
  const fresh = fs.mkdtempSync(path.join(os.tmpdir(), `tidewire-react-${target}-`));
  for (const f of ['package.json', 'package-lock.json', 'index.html', 'readme.html', 'vite.config.js', 'tsconfig.json', 'ssr.mjs', 'src']) {
    fs.cpSync(path.join(app, f), path.join(fresh, f), { recursive: true });
  }
  fs.writeFileSync(path.join(fresh, 'src', 'readme.jsx'), readmeExample());
  run('npm', ['ci', '--no-audit', '--no-fund'], { cwd: fresh, stdio: 'inherit' });
  run('npm', ['install', '--no-save', '--no-audit', '--no-fund', path.join(packDir, packed[0].filename)], { cwd: fresh, stdio: 'inherit' });
  fs.rmSync(packDir, { recursive: true, force: true });
  const manifest = JSON.parse(fs.readFileSync(path.join(fresh, 'node_modules', 'tidewire', 'package.json'), 'utf8'));
  assert.equal(manifest.exports['./react'].default, './react/index.js');
  assert.deepEqual(manifest.peerDependencies, { react: '>=18' });
  assert.equal(manifest.peerDependenciesMeta.react.optional, true);
  const gz = (f) => zlib.gzipSync(fs.readFileSync(path.join(fresh, 'node_modules', 'tidewire', f)), { level: 9 }).length;
  console.log(`${target}: tidewire/react is ${gz('react/index.js') + gz('react/store.js')} B gzipped (react/index.js + react/store.js)`);
  return fresh;
}

/** The README's "React" example (its first jsx block), reading the server URL from the page's query. */
function readmeExample() {
  const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('\n## React\n'));
  const code = /```jsx\n([\s\S]*?)\n```/.exec(section)?.[1];
  assert.ok(code, 'the README has a React section with a jsx example');
  const url = "'http://127.0.0.1:8080'";
  assert.ok(code.includes(url), `the README example connects to ${url}`);
  return code.replace(url, "new URLSearchParams(location.search).get('server')");
}

/** The tidewire server, restartable on the same port and database file. */
class Server {
  constructor(bin, port, db) {
    Object.assign(this, { bin, port, db, child: null });
    this.url = `http://127.0.0.1:${port}`;
  }
  async start() {
    this.child = spawn(
      this.bin,
      [
        'serve', '--listen', `127.0.0.1:${this.port}`, '--database', `sqlite://${this.db}`,
        '--presence-grace-ms', '500', '--heartbeat-secs', '2', '--drain-window-ms', '300',
      ],
      { stdio: ['ignore', 'ignore', 'inherit'] },
    );
    await until('the server is up', () => fetch(`${this.url}/healthz`).then((r) => r.ok, () => false), 30000);
  }
  async kill() {
    const child = this.child;
    this.child = null;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
  }
  async put(room, id, value, ifMatch) {
    const headers = { 'content-type': 'application/json' };
    if (ifMatch !== undefined) headers['if-match'] = `"${ifMatch}"`;
    const r = await fetch(`${this.url}/v1/rooms/${room}/items/${id}`, { method: 'PUT', headers, body: JSON.stringify(value) });
    const body = await r.text();
    assert.ok(r.ok, `PUT ${id}: ${r.status} ${body}`);
    return JSON.parse(body);
  }
  async del(room, id) {
    const r = await fetch(`${this.url}/v1/rooms/${room}/items/${id}`, { method: 'DELETE' });
    assert.ok(r.ok || r.status === 404, `DELETE ${id}: ${r.status}`);
  }
  /** Open streaming connections, summed over transports. */
  async connections() {
    const text = await (await fetch(`${this.url}/metrics`)).text();
    let n = 0;
    for (const line of text.split('\n')) {
      const m = /^tidewire_connections(?:\{[^}]*\})?\s+([0-9.e+-]+)$/.exec(line.trim());
      if (m) n += Number(m[1]);
    }
    return n;
  }
}

const text = (page, sel) => page.locator(sel).textContent();
const attr = (page, sel, a) => page.locator(sel).getAttribute(a);
const control = (page, f, arg) => page.evaluate(f, arg);

async function openPage(browser, base, who) {
  const page = await browser.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') console.log(`[${who}] ${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => console.log(`[${who}] error: ${e}`));
  await page.goto(`${base}&name=${who}`);
  await until(`${who}: open`, async () => (await attr(page, '#conn', 'data-state')) === 'open');
  await until(`${who}: room ready`, async () => (await text(page, '#status')) === 'ready');
  return page;
}

/** Builds the installed app, serves it, and drives the pages through every assertion. */
async function scenario(browser, vite, fresh, target) {
  // A development build: React's StrictMode double-invokes effects only there.
  await vite.build({ root: fresh, mode: 'development', logLevel: 'warn', define: { 'process.env.NODE_ENV': '"development"' } });
  const previewPort = await freePort();
  const preview = await vite.preview({ root: fresh, logLevel: 'warn', preview: { port: previewPort, strictPort: true, host: '127.0.0.1' } });
  const room = `react-${target}-${Date.now()}`;
  const base = `http://127.0.0.1:${previewPort}/?server=${encodeURIComponent(server.url)}&room=${room}`;
  try {
    const ada = await openPage(browser, base, 'ada');
    assert.equal(await control(ada, () => window.__app.effectRuns), 2, 'StrictMode (development) ran the mount effect twice');

    // Items from another client render live.
    await server.put(room, 'a', { n: 1 });
    await server.put(room, 'b', { n: 1 });
    await until('a and b render', async () => (await text(ada, '#cell-a')) === '{"n":1}' && (await text(ada, '#cell-b')) === '{"n":1}');
    await until('count 2', async () => (await text(ada, '#count')) === '2');
    assert.equal(await text(ada, '#ids'), 'a,b');
    console.log('ok: REST writes render live');

    // Render counting: one remote change to a.
    const before = await control(ada, () => ({ ...window.__app.renders }));
    await server.put(room, 'a', { n: 2 });
    await until('a updates', async () => (await text(ada, '#cell-a')) === '{"n":2}');
    await sleep(300);
    const after = await control(ada, () => ({ ...window.__app.renders }));
    const delta = (k) => (after[k] ?? 0) - (before[k] ?? 0);
    console.log(`renders after one change to a: ${JSON.stringify(Object.fromEntries(Object.keys(after).map((k) => [k, delta(k)])))}`);
    assert.ok(delta('cell:a') > 0, 'the cell of a re-rendered');
    assert.ok(delta('board') > 0, 'useRoom re-rendered');
    assert.equal(delta('cell:b'), 0, 'the cell of b did not re-render');
    assert.equal(delta('count'), 0, 'useItems(items => items.length) did not re-render');
    assert.equal(delta('ids'), 0, 'useItems(ids, shallowEqual) did not re-render');
    console.log('ok: selectors re-render only on their own change');

    // Optimistic put: pending at once, then confirmed.
    const put = await control(ada, async () => {
      const p = window.__app.room.put('c', { by: 'ada' });
      // Microtasks only: React commits the update, no network answer can come in between.
      for (let i = 0; i < 20; i++) await Promise.resolve();
      const shown = document.querySelector('#cell-c')?.getAttribute('data-pending');
      const event = await p;
      return { shown, seq: event.seq, version: event.data.version };
    });
    assert.equal(put.shown, 'true', 'the optimistic value rendered as pending before the answer');
    await until('c confirmed', async () => (await attr(ada, '#cell-c', 'data-pending')) === 'false');
    const seenC = await control(ada, () => window.__app.seen.filter((s) => s.id === 'c'));
    assert.deepEqual(seenC.map((s) => s.pending), [true, false], 'c committed pending, then confirmed');
    assert.equal(seenC[1].version, put.version);
    await until('count 3', async () => (await text(ada, '#count')) === '3');
    console.log('ok: optimistic put shows pending, then confirmed');

    // A conflicting put (only-if-absent on an existing item) rolls back visibly.
    await server.put(room, 'd', { owner: 'server' });
    await until('d renders', async () => (await text(ada, '#cell-d')) === '{"owner":"server"}');
    const conflict = await control(ada, async () => {
      const p = window.__app.room.put('d', { owner: 'ada' }, { ifMatch: 0 });
      // Microtasks only: React commits the update, no network answer can come in between.
      for (let i = 0; i < 20; i++) await Promise.resolve();
      const shown = document.querySelector('#cell-d')?.textContent;
      try {
        await p;
        return { shown, code: null };
      } catch (e) {
        return { shown, code: e.code };
      }
    });
    assert.equal(conflict.code, 'version_conflict');
    assert.equal(conflict.shown, '{"owner":"ada"}', 'the optimistic value showed first');
    await until('rollback shown', async () => (await text(ada, '#rollback')) === 'd: version_conflict');
    await until('d back to the server value', async () => (await text(ada, '#cell-d')) === '{"owner":"server"}' && (await attr(ada, '#cell-d', 'data-pending')) === 'false');
    const rollbacks = await control(ada, () => window.__app.rollbacks);
    assert.deepEqual(rollbacks, [{ id: 'd', code: 'version_conflict', value: { owner: 'server' } }], 'one rollback, through the latest handler');
    console.log('ok: a 409 rolls back visibly');

    // Presence of two pages, and a broadcast between them.
    const bob = await openPage(browser, base, 'bob');
    for (const [who, page] of [['ada', ada], ['bob', bob]]) {
      await until(`${who} sees both`, async () => (await text(page, '#members')) === 'ada,bob');
      assert.equal(await attr(page, '#members', 'data-me'), 'yes');
      assert.equal(await attr(page, '#members', 'data-others'), '1');
    }
    assert.equal(await text(bob, '#cell-d'), '{"owner":"server"}', 'the second page got the state');
    // A write on one page shows on the other.
    await control(bob, () => window.__app.room.put('e', { by: 'bob' }));
    await until('ada sees bob\'s write', async () => (await text(ada, '#items li[data-id="e"]')) === 'e = {"by":"bob"}');
    await control(ada, () => window.__app.room.delete('e'));
    await until('bob sees ada\'s delete', async () => (await bob.locator('#items li[data-id="e"]').count()) === 0);
    console.log('ok: presence lists both pages; each sees the other\'s writes');

    for (const n of [1, 2]) {
      await control(bob, (data) => window.__app.send(data), { n });
      await until(`ping ${n} at ada`, async () => (await text(ada, '#pings')) === JSON.stringify({ n }));
    }
    const pings = await control(ada, () => window.__app.pings);
    assert.equal(pings.length, 2, 'each broadcast handled once (one subscription)');
    for (const p of pings) assert.equal(p.handlerOf, p.latest, 'the handler of the latest render ran');
    assert.equal(await text(bob, '#pings'), '', 'a page does not get its own broadcast');
    console.log('ok: broadcast received through the latest handler');

    // StrictMode and remounts leak no connection: two pages, two connections.
    await until('two connections', async () => (await server.connections()) === 2, 10000);
    for (let i = 0; i < 3; i++) {
      await control(ada, () => window.__app.remount());
      await until('ada open again', async () => (await attr(ada, '#conn', 'data-state')) === 'open' && (await text(ada, '#status')) === 'ready');
    }
    await until('still two connections after 3 remounts', async () => (await server.connections()) === 2, 10000);
    assert.equal(await text(ada, '#cell-a'), '{"n":2}', 'a remounted Provider shows the room');
    console.log('ok: StrictMode and remounts leak no connection');

    await bob.close();
    await until('bob left', async () => (await text(ada, '#members')) === 'ada');
    await until('one connection', async () => (await server.connections()) === 1, 10000);
    console.log('ok: a closed page leaves the presence set');

    // useConnection: reconnecting while the server is down, open after its restart.
    await server.kill();
    await until('reconnecting shown', async () => (await attr(ada, '#conn', 'data-state')) === 'reconnecting');
    await server.start();
    await until('open again', async () => (await attr(ada, '#conn', 'data-state')) === 'open', 20000);
    await server.put(room, 'b', { n: 3 });
    await until('b updates after the restart', async () => (await text(ada, '#cell-b')) === '{"n":3}');
    const states = await control(ada, () => window.__app.states);
    console.log(`connection states: ${states.join(' → ')}`);
    const iReconnecting = states.lastIndexOf('reconnecting');
    assert.ok(iReconnecting > 0 && states.slice(iReconnecting).includes('open'), 'open → reconnecting → open');
    console.log('ok: useConnection shows open, reconnecting, open');
    await ada.close();

    // The README's example works as printed: a click marks the cell, another client's mark adds up.
    const readme = await browser.newPage();
    readme.on('pageerror', (e) => console.log(`[readme] error: ${e}`));
    await readme.goto(`http://127.0.0.1:${previewPort}/readme.html?server=${encodeURIComponent(server.url)}`);
    const cell = readme.locator('table tr').nth(0).locator('button').nth(0); // Mon 9:00, cell 0-9
    await cell.waitFor({ timeout: 15000 });
    await readme.locator('text=also here').waitFor({ timeout: 15000 });
    const mark = async () => ({ cls: await cell.getAttribute('class'), n: await cell.textContent() });
    if ((await mark()).cls !== 'off') {
      await server.del('board-tour', 'ada.0-9'); // a previous run's mark
      await until('the README cell is clear', async () => (await mark()).cls === 'off');
    }
    await cell.click();
    await until('the README cell is mine', async () => { const m = await mark(); return m.cls === 'mine' && m.n === '1'; });
    const mine = await fetch(`${server.url}/v1/rooms/board-tour/snapshot`).then((r) => r.json());
    assert.ok(JSON.stringify(mine).includes('ada.0-9'), 'the click wrote ada.0-9');
    await server.put('board-tour', 'bob.0-9', { name: 'bob', on: true });
    await until('bob adds up', async () => (await mark()).n === '2');
    assert.equal(await cell.getAttribute('title'), 'ada, bob');
    await cell.click();
    await until('the click took the mark back', async () => { const m = await mark(); return m.cls === 'on' && m.n === '1'; });
    await server.del('board-tour', 'bob.0-9');
    await readme.close();
    console.log('ok: the README example works');
  } finally {
    await preview.close?.();
  }
}

const bin = serverBinary();
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tidewire-react-db-'));
const server = new Server(bin, await freePort(), path.join(tmp, 'react.db'));
const fresh = [];
let browser;
let userDataDir;
let failed = false;
try {
  await server.start();
  for (const t of targets) {
    const dir = install(t);
    fresh.push(dir);
    if (t.target === 'web') {
      // Types: the app type-checks with `tsc --strict` against the package's declarations.
      run(path.join(dir, 'node_modules', '.bin', 'tsc'), ['-p', path.join(dir, 'tsconfig.json')], { stdio: 'inherit' });
      // Server-side rendering in Node.
      run('node', [path.join(dir, 'ssr.mjs')], { cwd: dir, stdio: 'inherit' });
    }
    const vite = await import(path.join(dir, 'node_modules', 'vite', 'dist', 'node', 'index.js'));
    if (!browser) {
      const { chromium } = await import(path.join(dir, 'node_modules', 'playwright-core', 'index.mjs'));
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
    }
    console.log(`--- ${t.target} build`);
    await scenario(browser, vite, dir, t.target);
    console.log(`ok (${t.target}): tidewire/react works in a Vite + React 19 app under StrictMode`);
  }
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await browser?.close().catch(() => {});
  await server.kill();
  if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
  fs.rmSync(tmp, { recursive: true, force: true });
  for (const dir of fresh) fs.rmSync(dir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
