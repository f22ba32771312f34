// The foundation's browser test: the tidewire binary serves the demo page and the npm package,
// and the wasm SDK loads in Chromium.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { launch } from './lib/browser.mjs';
import { pkgDir, startServer } from './lib/server.mjs';

const pkg = JSON.parse(readFileSync(path.join(pkgDir, 'package.json'), 'utf8'));
const entry = pkg.module ?? pkg.main;

let server;
let chromium;

before(async () => {
  server = await startServer();
  chromium = await launch();
});

after(async () => {
  await chromium?.close();
  await server?.stop();
});

test('the npm package is served with the right content types', async () => {
  const js = await fetch(`${server.url}/pkg/${entry}`);
  assert.equal(js.status, 200);
  assert.match(js.headers.get('content-type') ?? '', /javascript/);
  const wasmName = pkg.files?.find((f) => f.endsWith('.wasm')) ?? entry.replace(/\.js$/, '_bg.wasm');
  const wasm = await fetch(`${server.url}/pkg/${wasmName}`);
  assert.equal(wasm.status, 200);
  // instantiateStreaming needs exactly this type.
  assert.equal(wasm.headers.get('content-type'), 'application/wasm');
  const bytes = new Uint8Array(await wasm.arrayBuffer());
  assert.deepEqual([...bytes.subarray(0, 4)], [0x00, 0x61, 0x73, 0x6d], 'wasm magic number');
});

test('the demo page loads the wasm SDK in Chromium', async () => {
  const page = await chromium.context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  const wasmResponse = page.waitForResponse((r) => r.url().endsWith('.wasm'), { timeout: 30_000 });
  const res = await page.goto(`${server.url}/`, { timeout: 30_000 });
  assert.equal(res.status(), 200);
  assert.equal((await wasmResponse).status(), 200);

  // Load the package the way any page does, and look at what it exports.
  const loaded = await page.evaluate(async (url) => {
    const m = await import(url);
    await m.default();
    const version = typeof m.version === 'function' ? m.version() : (m.VERSION ?? null);
    return { exports: Object.keys(m).sort(), version };
  }, `/pkg/${entry}`);
  assert.ok(loaded.exports.includes('default'), `exports: ${loaded.exports}`);
  assert.ok(loaded.exports.length > 1, `the package exports nothing but init: ${loaded.exports}`);
  if (loaded.version !== null) assert.equal(loaded.version, pkg.version);

  // The page itself reports no failure to load the package.
  const bootError = page.locator('#boot-error');
  if (await bootError.count()) {
    assert.equal(await bootError.isHidden(), true, `boot error: ${await bootError.textContent()}`);
  }
  assert.deepEqual(errors, [], 'uncaught errors on the page');
  await page.close();
});
