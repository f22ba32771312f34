// Helpers for the demo page tests (tests/e2e/demo.test.mjs): start the tidewire binary on a free
// port with a temporary SQLite database, launch Debian's Chromium through playwright-core, open
// the board page, read the grid, and talk to the REST API.
//
//   const server = await startServer();            // TIDEWIRE_BIN or target/{debug,release}/tidewire
//   const browser = await launchBrowser();
//   const page = await openBoard(browser, server.url, 'b1', { transport: 'sse', name: 'Ada' });
//   await server.stop();

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';

import { bin as kitBin, freePort, pkgDir, root } from './lib/server.mjs';
import { chromiumPath } from './lib/browser.mjs';

export { freePort };

/** The repository root (TIDEWIRE_ROOT overrides it, as for the rest of tests/e2e). */
export const ROOT = root;

/**
 * The tidewire binary: $TIDEWIRE_BIN, else <CARGO_TARGET_DIR or target>/debug/tidewire, else
 * target/debug/tidewire, else target/release/tidewire.
 */
export function findBinary() {
  const candidates = [...new Set([
    process.env.TIDEWIRE_BIN,
    kitBin,
    join(ROOT, 'target/debug/tidewire'),
    join(ROOT, 'target/release/tidewire'),
  ].filter(Boolean))];
  const found = candidates.find((p) => existsSync(p));
  if (!found) {
    throw new Error(`no tidewire binary: set TIDEWIRE_BIN or build one (tried ${candidates.join(', ')})`);
  }
  return resolve(found);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Servers still running when the test process exits (a failed or cancelled test) are killed.
const running = new Set();
process.once('exit', () => {
  for (const p of running) p.kill('SIGKILL');
});

/**
 * Starts `tidewire serve` and resolves once it prints `tidewire listening on http://ADDR`.
 * Pass `port` and `dir` to restart on the same address and database.
 */
export async function startServer({ port, dir, readyTimeoutMs = 20_000, extraArgs = [] } = {}) {
  const bin = findBinary();
  if (!existsSync(join(pkgDir, 'package.json'))) {
    throw new Error(`no wasm package in ${pkgDir}: build it with \`wasm-pack build client --release --target web --out-dir pkg\``);
  }
  const ownDir = !dir;
  dir = dir || mkdtempSync(join(tmpdir(), 'tidewire-demo-'));
  port = port || (await freePort());
  const listen = `127.0.0.1:${port}`;
  const args = ['serve', '--listen', listen, '--database', `sqlite://${join(dir, 'demo.db')}`,
    '--www-dir', join(ROOT, 'www'), '--pkg-dir', pkgDir, ...extraArgs];
  const proc = spawn(bin, args, {
    cwd: ROOT,
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const onData = (b) => {
    output += b.toString();
    if (output.length > 200_000) output = output.slice(-100_000);
  };
  proc.stdout.on('data', onData);
  proc.stderr.on('data', onData);
  running.add(proc);
  const exited = new Promise((r) => proc.once('exit', (code, signal) => {
    running.delete(proc);
    r({ code, signal });
  }));

  const ready = await new Promise((res) => {
    const timer = setTimeout(() => res(false), readyTimeoutMs);
    const check = () => {
      if (output.includes('tidewire listening on')) {
        clearTimeout(timer);
        res(true);
      }
    };
    proc.stdout.on('data', check);
    proc.stderr.on('data', check);
    exited.then(() => { clearTimeout(timer); res(false); });
    check();
  });
  if (!ready) {
    proc.kill('SIGKILL');
    throw new Error(`tidewire did not start on ${listen}:\n${output.slice(-4000)}`);
  }

  const server = {
    url: `http://${listen}`,
    port,
    dir,
    proc,
    exited,
    get output() { return output; },
    /** Stops the process (SIGTERM by default, SIGKILL after 5 s) and waits for it. */
    async stop(signal = 'SIGTERM') {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill(signal);
        const t = setTimeout(() => proc.kill('SIGKILL'), 5_000);
        await exited;
        clearTimeout(t);
      }
    },
    /** Stops the process and removes the temporary database directory it created. */
    async dispose() {
      await server.stop();
      if (ownDir) rmSync(dir, { recursive: true, force: true });
    },
  };
  return server;
}

/**
 * Debian's Chromium through playwright-core, headless ($TIDEWIRE_CHROMIUM overrides the path).
 * Unlike lib/browser.mjs this is a plain browser, so each test can open several contexts: one
 * per person, each with its own localStorage and so its own client id.
 */
export function launchBrowser() {
  return chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-background-timer-throttling', '--disable-renderer-backgrounding',
      '--disable-backgrounding-occluded-windows'],
  });
}

/** States in which the page is live (forced polling may report itself as degraded). */
export const LIVE_STATES = ['open', 'degraded'];

/**
 * Opens the board in a fresh browser context (its own localStorage, so its own client id).
 * Resolves once #conn-state says the connection is live.
 */
export async function openBoard(browser, baseUrl, board, {
  transport, name, clientId, viewport = { width: 1280, height: 860 }, liveTimeoutMs = 15_000,
} = {}) {
  const context = await browser.newContext({ viewport });
  if (clientId) {
    await context.addInitScript((id) => localStorage.setItem('tidewire-demo:client-id', id), clientId);
  }
  if (name) {
    await context.addInitScript((n) => {
      if (!localStorage.getItem('tidewire-demo:name')) localStorage.setItem('tidewire-demo:name', n);
    }, name);
  }
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  page.problems = problems;
  const q = new URLSearchParams({ board });
  if (transport) q.set('transport', transport);
  await page.goto(`${baseUrl}/?${q}`);
  await waitLive(page, liveTimeoutMs);
  return page;
}

/** Waits until #conn-state shows a live state. */
export async function waitLive(page, timeout = 15_000) {
  try {
    await page.waitForFunction(
      (states) => states.includes(document.querySelector('#conn-state')?.dataset.state),
      LIVE_STATES, { timeout, polling: 50 });
  } catch (e) {
    const state = await page.locator('#conn-state').textContent().catch(() => '?');
    throw new Error(`page not live after ${timeout} ms (state: ${state}; ${page.problems?.join('; ')})`, { cause: e });
  }
}

/** Every cell of the page's grid: `{ "<day>-<hour>": {state, count} }`. */
export function readGrid(page) {
  return page.evaluate(() => {
    const out = {};
    for (const c of document.querySelectorAll('[data-cell]')) {
      out[c.dataset.cell] = { state: c.dataset.state, count: Number(c.dataset.count) };
    }
    return out;
  });
}

/**
 * Waits until a cell shows `want` (`{state}` — one state or a list — and/or `{count}`);
 * resolves with the elapsed milliseconds.
 */
export async function waitCell(page, cell, want, timeout = 5_000) {
  const t0 = Date.now();
  try {
    await page.waitForFunction(
      ([key, w]) => {
        const el = document.querySelector(`[data-cell="${key}"]`);
        if (!el) return false;
        const states = w.state == null ? null : [].concat(w.state);
        if (states && !states.includes(el.dataset.state)) return false;
        if (w.count != null && Number(el.dataset.count) !== w.count) return false;
        return true;
      },
      [cell, want], { timeout, polling: 'raf' });
  } catch (e) {
    const got = await page.evaluate((key) => {
      const el = document.querySelector(`[data-cell="${key}"]`);
      return el ? { state: el.dataset.state, count: Number(el.dataset.count) } : null;
    }, cell).catch(() => null);
    throw new Error(`cell ${cell}: wanted ${JSON.stringify(want)}, still ${JSON.stringify(got)} after ${timeout} ms`, { cause: e });
  }
  return Date.now() - t0;
}

/** GET /v1/rooms/{room}/snapshot */
export async function snapshot(baseUrl, room) {
  const r = await fetch(`${baseUrl}/v1/rooms/${encodeURIComponent(room)}/snapshot`);
  if (!r.ok) throw new Error(`snapshot ${room}: HTTP ${r.status} ${await r.text()}`);
  return r.json();
}

/** PUT /v1/rooms/{room}/items/{id}; returns {status, body}. */
export async function restPut(baseUrl, room, id, value, headers = {}) {
  const r = await fetch(`${baseUrl}/v1/rooms/${encodeURIComponent(room)}/items/${encodeURIComponent(id)}`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(value),
  });
  return { status: r.status, body: await r.json().catch(() => null) };
}

/** DELETE /v1/rooms/{room}/items/{id}; returns {status, body}. */
export async function restDelete(baseUrl, room, id, headers = {}) {
  const r = await fetch(`${baseUrl}/v1/rooms/${encodeURIComponent(room)}/items/${encodeURIComponent(id)}`, {
    method: 'DELETE',
    headers,
  });
  return { status: r.status, body: await r.json().catch(() => null) };
}

/** The per-cell counts a snapshot implies (items `<owner>.<day>-<hour>` with `on` not false). */
export function countsFromSnapshot(snap) {
  const counts = {};
  for (const [id, it] of Object.entries(snap.items || {})) {
    const m = /\.(\d-\d{1,2})$/.exec(id);
    if (!m || !it.value || it.value.on === false) continue;
    counts[m[1]] = (counts[m[1]] || 0) + 1;
  }
  return counts;
}

/** A fresh board id for a test. */
export function boardId(prefix = 't') {
  return `${prefix}${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
}
