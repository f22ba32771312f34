// Browser test of the /admin dashboard (www/admin/, embedded in the binary): it refuses
// without the credential, renders with it, and its charts move when load is applied.
//
// Run:   node --test tests/e2e/admin.test.mjs
// Needs: the tidewire binary ($TIDEWIRE_BIN or target/debug/tidewire) and Debian's Chromium.
// Writes the dashboard's picture to test-results/admin.png; with TIDEWIRE_UPDATE_SCREENSHOT=1
// it replaces docs/admin.png (the README's picture) instead.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { mkdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { ROOT, launchBrowser, sleep, startServer } from './demo-helpers.mjs';

const TOKEN = 'e2e-admin-token';

describe('admin dashboard', () => {
  let server;
  let browser;

  before(async () => {
    process.env.TIDEWIRE_ADMIN_TOKEN = `retired-token,${TOKEN}`;
    try {
      server = await startServer();
    } finally {
      delete process.env.TIDEWIRE_ADMIN_TOKEN;
    }
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server?.dispose();
  });

  async function newPage() {
    const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
    const page = await context.newPage();
    const problems = [];
    page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
    page.problems = problems;
    return page;
  }

  async function login(page, token) {
    await page.goto(`${server.url}/admin`);
    await page.waitForSelector('#login:not([hidden])');
    await page.fill('#token', token);
    await page.click('#login button[type=submit]');
  }

  test('refuses without the credential', async () => {
    const res = await fetch(`${server.url}/admin/stats`);
    assert.equal(res.status, 401);
    assert.equal(res.headers.get('content-type'), 'application/problem+json');
    assert.equal((await res.json()).code, 'unauthorized');
    const page = await newPage();
    try {
      await login(page, 'not-the-token');
      await page.waitForSelector('#login-error:not([hidden])', { timeout: 5_000 });
      assert.match(await page.textContent('#login-error'), /401/);
      assert.equal(await page.isHidden('#dash'), true, 'no data without the token');
      assert.equal(await page.evaluate(() => sessionStorage.getItem('tidewire-admin:token')), null);
      assert.deepEqual(page.problems, []);
    } finally {
      await page.context().close();
    }
  });

  test('renders and its charts move under load', async () => {
    const page = await newPage();
    try {
      await login(page, TOKEN);
      await page.waitForSelector('#dash:not([hidden])', { timeout: 5_000 });
      await page.waitForFunction(() => document.querySelector('#live').dataset.state === 'live', null, { timeout: 5_000 });
      // The token stays in this tab: a reload opens the dashboard directly.
      await page.reload();
      await page.waitForSelector('#dash:not([hidden])', { timeout: 5_000 });
      await page.waitForFunction(() => Number(document.querySelector('#dash').dataset.samples) >= 2, null, { timeout: 10_000 });
      for (const id of ['#chart-connections', '#chart-events', '#chart-latency', '#chart-slow', '#chart-bus']) {
        assert.ok(await page.locator(`${id} svg polyline`).count() >= 1, `${id} draws its lines`);
      }
      assert.equal(await page.getAttribute('#fig-events-in', 'data-value'), '0', 'idle before the load');
      const inLine = () => page.getAttribute('#chart-events polyline[data-series="in"]', 'data-last');
      assert.equal(Number(await inLine()), 0);

      // Load: a subscriber in two rooms (so the room list has something to show) and writes.
      const sub = new AbortController();
      const streams = ['board-1', 'board-2'].map((room) => fetch(`${server.url}/v1/sse?rooms=${room}`, { signal: sub.signal })
        .then((r) => r.body.pipeTo(new WritableStream())).catch(() => {}));
      const sub2 = fetch(`${server.url}/v1/sse?rooms=board-1`, { signal: sub.signal })
        .then((r) => r.body.pipeTo(new WritableStream())).catch(() => {});
      const until = Date.now() + 3_000;
      let n = 0;
      while (Date.now() < until) {
        const room = n % 3 === 0 ? 'board-2' : 'board-1';
        const res = await fetch(`${server.url}/v1/rooms/${room}/events`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ type: 'tick', data: { n } }),
        });
        assert.ok(res.ok, `write ${n}: ${res.status}`);
        n += 1;
        await sleep(20);
      }
      await page.waitForFunction(() => Number(document.querySelector('#fig-events-in').dataset.value) > 0, null, { timeout: 5_000 });
      await page.waitForFunction(
        () => Number(document.querySelector('#chart-events polyline[data-series="in"]').dataset.last) > 0,
        null, { timeout: 5_000 });
      const points = await page.getAttribute('#chart-events polyline[data-series="in"]', 'points');
      const ys = points.trim().split(' ').map((p) => Number(p.split(',')[1]));
      assert.ok(new Set(ys).size > 1, `the events-in line moved: ${points}`);
      await page.waitForFunction(() => Number(document.querySelector('#fig-events-out').dataset.value) > 0, null, { timeout: 5_000 });
      await page.waitForFunction(() => Number(document.querySelector('#fig-connections').dataset.value) >= 3, null, { timeout: 5_000 });
      await page.waitForSelector('#top-rooms li[data-room="board-1"]', { timeout: 5_000 });
      const rooms = await page.$$eval('#top-rooms li[data-room]', (lis) => lis.map((li) => [li.dataset.room, Number(li.querySelector('.n').textContent)]));
      assert.deepEqual(rooms.slice(0, 2), [['board-1', 2], ['board-2', 1]]);
      assert.ok(await page.getAttribute('#fig-latency', 'data-value') !== '0', 'a write latency is shown');
      assert.equal(await page.locator('#nodes tbody tr').count(), 1, 'one node');

      await sleep(300);
      const shot = process.env.TIDEWIRE_UPDATE_SCREENSHOT === '1'
        ? join(ROOT, 'docs/admin.png')
        : join(ROOT, 'tests/e2e/test-results/admin.png');
      mkdirSync(dirname(shot), { recursive: true });
      await page.screenshot({ path: shot, fullPage: true });
      assert.ok(statSync(shot).size > 10_000, `${shot} holds a real picture`);
      sub.abort();
      await Promise.all([...streams, sub2]);
      assert.deepEqual(page.problems, []);
    } finally {
      await page.context().close();
    }
  });
});
