// Browser tests of the demo page (www/): a shared availability board driven by the
// tidewire wasm SDK, served by the tidewire binary.
//
// Run:   node --test tests/e2e/demo.test.mjs
// Needs: the tidewire binary ($TIDEWIRE_BIN, target/debug/tidewire or target/release/tidewire),
//        client/pkg (wasm-pack build client --release --target web --out-dir pkg),
//        Debian's Chromium at /usr/bin/chromium ($CHROMIUM_PATH) and playwright-core.
// Writes the two-user board's picture to test-results/demo.png; with
// TIDEWIRE_UPDATE_SCREENSHOT=1 it replaces docs/demo.png (the README's picture) instead, so an
// ordinary test run leaves the tree clean.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { mkdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { pkgDir } from './lib/server.mjs';
import {
  ROOT, boardId, countsFromSnapshot, launchBrowser, openBoard, readGrid, restDelete, restPut,
  sleep, snapshot, startServer, waitCell, waitLive,
} from './demo-helpers.mjs';

const TRANSPORTS = ['auto', 'sse', 'ws', 'longpoll', 'poll'];
/** The bound: a toggle in one page shows in the other within this many milliseconds. */
const PROPAGATION_MS = 1000;

const clientIdOf = (page) => page.evaluate(() => window.tidewireDemo.clientId);
const stateOf = (page) => page.evaluate(() => document.querySelector('#conn-state').dataset.state);
const transportOf = (page) => page.evaluate(() => document.querySelector('#conn-transport').dataset.transport);
const lastSeqOf = (page) => page.evaluate(() => Number(document.querySelector('#last-seq').textContent));

/** Clicks a cell and returns the time of the click. */
async function toggle(page, cell) {
  const t0 = Date.now();
  await page.click(`[data-cell="${cell}"]`);
  return t0;
}

/**
 * Clicks a cell from inside the page and measures, with the page's own clock, how long the
 * cell takes to show the optimistic state (so a busy test machine does not blur the number).
 */
async function clickAndTimeOptimistic(page, cell) {
  return page.evaluate((key) => new Promise((resolve) => {
    const el = document.querySelector(`[data-cell="${key}"]`);
    const t0 = performance.now();
    const done = (v) => { obs.disconnect(); clearTimeout(timer); resolve(v); };
    const obs = new MutationObserver(() => {
      if (['pending', 'mine'].includes(el.dataset.state)) done(performance.now() - t0);
    });
    const timer = setTimeout(() => done(null), 5_000);
    obs.observe(el, { attributes: true, attributeFilter: ['data-state'] });
    el.click();
  }), cell);
}

/** Waits for `cell` to show `want` in `page` and checks it happened within PROPAGATION_MS of t0. */
async function seenWithin(page, cell, want, t0, what) {
  await waitCell(page, cell, want, 5_000);
  const elapsed = Date.now() - t0;
  assert.ok(elapsed <= PROPAGATION_MS, `${what}: took ${elapsed} ms (limit ${PROPAGATION_MS} ms)`);
  return elapsed;
}

/** Waits until the page's grid and items equal the server's snapshot; returns the snapshot. */
async function agreesWithServer(page, baseUrl, room, timeout = 10_000) {
  const deadline = Date.now() + timeout;
  let last = '';
  for (let i = 0; i < 200 && Date.now() < deadline; i++) {
    const snap = await snapshot(baseUrl, room);
    const want = countsFromSnapshot(snap);
    const grid = await readGrid(page);
    const seq = await lastSeqOf(page);
    const pageItems = await page.evaluate(() => window.tidewireDemo.items
      .map((it) => [it.id, it.version, Boolean(it.pending)]));
    const gridDiff = Object.entries(grid)
      .filter(([k, c]) => c.count !== (want[k] || 0))
      .map(([k, c]) => `${k}: page ${c.count}, server ${want[k] || 0}`);
    const serverItems = Object.entries(snap.items).map(([id, it]) => [id, it.version, false]).sort();
    const itemsEqual = JSON.stringify([...pageItems].sort()) === JSON.stringify(serverItems);
    if (gridDiff.length === 0 && itemsEqual && seq === snap.seq) return snap;
    last = `grid diff [${gridDiff.join('; ')}], items page ${JSON.stringify(pageItems)} vs server ${JSON.stringify(serverItems)}, seq page ${seq} vs server ${snap.seq}`;
    await sleep(100);
  }
  throw new Error(`page never matched the server's snapshot: ${last}`);
}

/** No seq appears twice in the page's event log (nothing delivered twice). */
async function assertNoDuplicateSeq(page, what) {
  const seqs = await page.$$eval('#event-log li[data-seq]', (lis) => lis
    .filter((li) => li.dataset.type.startsWith('item.'))
    .map((li) => Number(li.dataset.seq)));
  const dup = seqs.filter((s, i) => seqs.indexOf(s) !== i);
  assert.deepEqual(dup, [], `${what}: event log shows seq ${dup.join(', ')} more than once`);
}

function assertNoPageErrors(...pages) {
  for (const p of pages) assert.deepEqual(p.problems.filter((x) => !/Failed to load resource|ERR_CONNECTION_REFUSED|net::/.test(x)), []);
}

async function closeAll(...pages) {
  for (const p of pages) await p?.context().close().catch(() => {});
}

describe('demo page', { timeout: 900_000 }, () => {
  let server;
  let browser;

  before(async () => {
    server = await startServer();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server?.dispose();
  });

  // The foundation's checks (first written with the test kit): the binary serves the npm
  // package with the right types, and the page loads the wasm SDK without a boot error.
  test('the npm package is served with the right content types', { timeout: 30_000 }, async () => {
    const pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8'));
    const entry = pkg.module ?? pkg.main;
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

  test('the demo page loads the wasm SDK in Chromium', { timeout: 60_000 }, async () => {
    const pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8'));
    const entry = pkg.module ?? pkg.main;
    const context = await browser.newContext();
    try {
      const page = await context.newPage();
      const errors = [];
      page.on('pageerror', (e) => errors.push(e.message));
      const wasmResponse = page.waitForResponse((r) => r.url().endsWith('.wasm'), { timeout: 30_000 });
      const res = await page.goto(`${server.url}/`, { timeout: 30_000 });
      assert.equal(res.status(), 200);
      assert.equal((await wasmResponse).status(), 200);
      const loaded = await page.evaluate(async (url) => {
        const m = await import(url);
        await m.default();
        const version = typeof m.version === 'function' ? m.version() : (m.VERSION ?? null);
        return { exports: Object.keys(m).sort(), version };
      }, `/pkg/${entry}`);
      assert.ok(loaded.exports.includes('Client'), `exports: ${loaded.exports}`);
      if (loaded.version !== null) assert.equal(loaded.version, pkg.version);
      await waitLive(page);
      assert.equal(await page.locator('#boot-error').isHidden(), true, `boot error: ${await page.locator('#boot-error').textContent()}`);
      assert.deepEqual(errors, [], 'uncaught errors on the page');
    } finally {
      await context.close();
    }
  });

  test('opening / makes a new board with a shareable link and remembers the name', { timeout: 60_000 }, async () => {
    const context = await browser.newContext();
    try {
      const page = await context.newPage();
      await page.goto(`${server.url}/`);
      await page.waitForFunction(() => new URLSearchParams(location.search).has('board'));
      const board = new URL(page.url()).searchParams.get('board');
      assert.match(board, /^[A-Za-z0-9_-]{1,64}$/);
      assert.equal(await page.inputValue('#share-link'), `${server.url}/?board=${board}`);
      await waitLive(page);
      assert.equal(await page.locator('[data-cell]').count(), 7 * 12);

      await page.fill('#name', 'Hedy');
      await page.waitForFunction(() => localStorage.getItem('tidewire-demo:name') === 'Hedy', null, { timeout: 5_000 });
      await page.reload();
      assert.equal(await page.inputValue('#name'), 'Hedy');
      assert.equal(new URL(page.url()).searchParams.get('board'), board, 'a reload stays on the board');

      await page.goto(`${server.url}/`);
      await page.waitForFunction(() => new URLSearchParams(location.search).has('board'));
      const board2 = new URL(page.url()).searchParams.get('board');
      assert.notEqual(board2, board, 'every visit to / gets a new board');
      assert.equal(await page.inputValue('#name'), 'Hedy', 'the name is remembered across boards');
    } finally {
      await context.close();
    }
  });

  for (const transport of TRANSPORTS) {
    test(`a toggle in one page shows in the other within 1 s (${transport})`, { timeout: 90_000 }, async (t) => {
      const board = boardId(transport);
      const room = `board-${board}`;
      let a;
      let b;
      try {
        a = await openBoard(browser, server.url, board, { transport, name: 'Ada' });
        b = await openBoard(browser, server.url, board, { transport, name: 'Bob' });
        for (const p of [a, b]) {
          const used = await transportOf(p);
          if (transport === 'auto') assert.ok(['sse', 'ws'].includes(used), `auto uses ${used}`);
          else assert.equal(used, transport);
        }
        const cell = '2-10';
        // A marks: pending (or already confirmed) at once in A, then in B within 1 s.
        let t0 = Date.now();
        const optimistic = await clickAndTimeOptimistic(a, cell);
        assert.ok(optimistic !== null && optimistic < 250, `the mark shows at once in A (${optimistic} ms)`);
        const ms = [];
        ms.push(await seenWithin(b, cell, { state: 'on', count: 1 }, t0, `${transport}: A's mark in B`));
        await waitCell(a, cell, { state: 'mine', count: 1 });
        // B marks the same hour: A sees two people.
        t0 = await toggle(b, cell);
        ms.push(await seenWithin(a, cell, { state: 'mine', count: 2 }, t0, `${transport}: B's mark in A`));
        // A unmarks: B sees only its own mark again.
        t0 = await toggle(a, cell);
        ms.push(await seenWithin(b, cell, { state: 'mine', count: 1 }, t0, `${transport}: A's unmark in B`));
        t.diagnostic(`${transport}: optimistic in ${optimistic.toFixed(1)} ms; seen in the other page after ${ms.join(', ')} ms`);
        await waitCell(a, cell, { state: 'on', count: 1 });

        const snap = await agreesWithServer(a, server.url, room);
        await agreesWithServer(b, server.url, room);
        assert.equal(Object.keys(snap.items).length, 1);
        assert.ok(await a.locator('#event-log li[data-type="item.deleted"]').count() >= 1, 'the log shows the delete');
        assertNoPageErrors(a, b);
      } finally {
        await closeAll(a, b);
      }
    });
  }

  test('the transport picker switches transport in place and the board keeps working', { timeout: 90_000 }, async () => {
    const board = boardId('pick');
    let a;
    let b;
    try {
      a = await openBoard(browser, server.url, board, { transport: 'sse', name: 'Ada' });
      b = await openBoard(browser, server.url, board, { transport: 'longpoll', name: 'Bob' });
      await a.selectOption('#transport-picker', 'ws');
      await a.waitForFunction(() => document.querySelector('#conn-transport').dataset.transport === 'ws'
        && document.querySelector('#conn-state').dataset.state === 'open', null, { timeout: 10_000 });
      assert.equal(new URL(a.url()).searchParams.get('transport'), 'ws');
      const t0 = await toggle(b, '0-8');
      await seenWithin(a, '0-8', { state: 'on', count: 1 }, t0, 'long-poll mark seen over ws');
      assertNoPageErrors(a, b);
    } finally {
      await closeAll(a, b);
    }
  });

  test('"drop connection" cuts the link; the page recovers and catches up', { timeout: 90_000 }, async () => {
    const board = boardId('drop');
    const room = `board-${board}`;
    let a;
    let b;
    try {
      a = await openBoard(browser, server.url, board, { name: 'Ada' });
      b = await openBoard(browser, server.url, board, { name: 'Bob' });
      const states = [];
      await a.exposeFunction('__recordState', (s) => states.push(s));
      await a.evaluate(() => {
        const el = document.querySelector('#conn-state');
        new MutationObserver(() => window.__recordState(el.dataset.state))
          .observe(el, { attributes: true, attributeFilter: ['data-state'] });
      });
      await a.click('#drop-connection');
      // B writes while A may be down.
      await toggle(b, '6-19');
      await toggle(b, '6-18');
      await waitLive(a, 15_000);
      await waitCell(a, '6-19', { state: 'on', count: 1 }, 10_000);
      await waitCell(a, '6-18', { state: 'on', count: 1 }, 10_000);
      assert.ok(states.some((s) => s !== 'open'), `the badge showed the drop (states seen: ${states.join(', ')})`);
      await agreesWithServer(a, server.url, room);
      await assertNoDuplicateSeq(a, 'A after the drop');
      assert.ok(await a.locator('#event-log li[data-type="drop"]').count() === 1);
    } finally {
      await closeAll(a, b);
    }
  });

  test('offline: the badge says so, a mark made offline stays pending and is saved once when back', { timeout: 90_000 }, async () => {
    const board = boardId('off');
    const room = `board-${board}`;
    let a;
    let b;
    try {
      a = await openBoard(browser, server.url, board, { transport: 'sse', name: 'Ada' });
      b = await openBoard(browser, server.url, board, { transport: 'sse', name: 'Bob' });
      await a.context().setOffline(true);
      await a.waitForFunction(() => document.querySelector('#conn-state').dataset.state === 'offline', null, { timeout: 10_000 });
      await toggle(a, '5-8');
      await waitCell(a, '5-8', { state: 'pending', count: 1 }, 1_000);
      await toggle(b, '5-9');
      await sleep(500);
      assert.equal((await readGrid(a))['5-8'].state, 'pending', 'still pending while offline');
      await a.context().setOffline(false);
      await waitLive(a, 20_000);
      await waitCell(a, '5-8', { state: 'mine', count: 1 }, 20_000);
      await waitCell(a, '5-9', { state: 'on', count: 1 }, 10_000);
      await waitCell(b, '5-8', { state: 'on', count: 1 }, 10_000);
      const snap = await agreesWithServer(a, server.url, room);
      await agreesWithServer(b, server.url, room);
      assert.equal(snap.seq, 2, 'the retried write was applied once');
      await assertNoDuplicateSeq(a, 'A after going offline');
    } finally {
      await closeAll(a, b);
    }
  });

  test('the event log keeps the last 50 events, newest first, with type and seq', { timeout: 60_000 }, async () => {
    const board = boardId('log');
    const room = `board-${board}`;
    let a;
    try {
      a = await openBoard(browser, server.url, board, { transport: 'sse', name: 'Ada' });
      for (let i = 0; i < 60; i++) {
        const cell = `${i % 7}-${8 + (i % 12)}`;
        const r = await restPut(server.url, room, `w${i}.${cell}`, { name: `W${i}`, on: true });
        assert.equal(r.status, 200);
      }
      await a.waitForFunction(() => document.querySelector('#last-seq').textContent === '60', null, { timeout: 10_000 });
      const entries = await a.$$eval('#event-log li', (lis) => lis.map((li) => [li.dataset.type, li.dataset.seq ? Number(li.dataset.seq) : null]));
      assert.equal(entries.length, 50);
      assert.deepEqual(entries[0], ['item.put', 60]);
      const seqs = entries.filter(([type]) => type === 'item.put').map(([, seq]) => seq);
      assert.deepEqual(seqs, [...seqs].sort((x, y) => y - x), 'newest first');
      // An entry opens to the whole envelope, as it came off the wire.
      await a.click('#event-log li:first-child');
      const envelope = JSON.parse(await a.locator('#event-log li:first-child pre').textContent());
      assert.equal(envelope.type, 'item.put');
      assert.equal(envelope.seq, 60);
      assert.equal(envelope.room, room);
      assert.equal(envelope.data.id, 'w59.3-19');
      await agreesWithServer(a, server.url, room);
    } finally {
      await closeAll(a);
    }
  });

  test('presence lists who is here with a colour each; hover hints travel over WebSocket', { timeout: 90_000 }, async () => {
    const board = boardId('pres');
    let a;
    let b;
    try {
      a = await openBoard(browser, server.url, board, { transport: 'ws', name: 'Ada' });
      b = await openBoard(browser, server.url, board, { transport: 'ws', name: 'Bob' });
      const [ida, idb] = [await clientIdOf(a), await clientIdOf(b)];
      for (const p of [a, b]) {
        await p.waitForFunction(([x, y]) => {
          const ids = [...document.querySelectorAll('#presence li')].map((li) => li.dataset.clientId);
          return ids.includes(x) && ids.includes(y) && ids.length === 2;
        }, [ida, idb], { timeout: 10_000 });
      }
      const chip = a.locator(`#presence li[data-client-id="${idb}"]`);
      assert.match(await chip.textContent(), /Bob/);
      const colours = await a.$$eval('#presence li', (lis) => lis.map((li) => li.style.getPropertyValue('--who')));
      assert.equal(new Set(colours).size, 2, `one colour each: ${colours}`);

      await b.hover('[data-cell="4-14"]');
      await a.waitForSelector(`[data-cell="4-14"] .hover-tag[data-from="${idb}"]`, { timeout: 5_000 });
      assert.equal(await a.getAttribute(`.hover-tag[data-from="${idb}"]`, 'data-name'), 'Bob');

      // Renaming updates everyone's presence list.
      await b.fill('#name', 'Bobby');
      await a.waitForFunction((id) => /Bobby/.test(document.querySelector(`#presence li[data-client-id="${id}"]`)?.textContent || ''),
        idb, { timeout: 10_000 });

      // Leaving: B disappears from A's list (after the server's grace period).
      await b.context().close();
      b = null;
      await a.waitForFunction((id) => !document.querySelector(`#presence li[data-client-id="${id}"]`), idb, { timeout: 20_000 });
      assertNoPageErrors(a);
    } finally {
      await closeAll(a, b);
    }
  });

  test('a write the server rejects (409 version_conflict) rolls back visibly', { timeout: 90_000 }, async () => {
    const board = boardId('rb');
    const room = `board-${board}`;
    let a;
    try {
      a = await openBoard(browser, server.url, board, { transport: 'sse', name: 'Ada' });
      const me = await clientIdOf(a);
      const cell = '3-11';
      const id = `${me}.${cell}`;
      await toggle(a, cell);
      await waitCell(a, cell, { state: 'mine', count: 1 });
      const v1 = (await snapshot(server.url, room)).items[id]?.version;
      assert.ok(v1 >= 1, 'the mark is on the server');

      // Hold the page's next write to this item; meanwhile the same person's other tab changes
      // the item on the server, so the held write's If-Match is stale: a real 409 from the server.
      const seen = { held: 0, statusWhileHeld: null, otherTab: null, method: null };
      await a.route(`**/v1/rooms/${room}/items/${encodeURIComponent(id)}*`, async (route) => {
        seen.held += 1;
        seen.method = route.request().method();
        seen.ifMatch = route.request().headers()['if-match'];
        seen.statusWhileHeld = await a.evaluate((c) => document.querySelector(`[data-cell="${c}"]`).dataset.state, cell);
        seen.otherTab = await restPut(server.url, room, id, { name: 'Ada (other tab)', on: true });
        await route.continue();
      });
      await toggle(a, cell); // unmark: DELETE with If-Match: v1
      await a.waitForSelector('#rollback-message:not([hidden])', { timeout: 5_000 });
      assert.equal(seen.held, 1, 'the page sent its write over HTTP once');
      assert.equal(seen.method, 'DELETE');
      assert.ok(seen.ifMatch, 'the write carried If-Match');
      assert.equal(seen.otherTab.status, 200);
      assert.equal(seen.statusWhileHeld, 'off', 'the unmark showed at once, before the server answered');
      const msg = a.locator('#rollback-message');
      assert.match(await msg.textContent(), /version_conflict/);
      assert.equal(await msg.getAttribute('data-item'), id);
      // The cell shows the server's version again: still marked, now at v1 + 1.
      await waitCell(a, cell, { state: 'mine', count: 1 });
      const snap = await agreesWithServer(a, server.url, room);
      assert.equal(snap.items[id].version, v1 + 1);
      assert.equal(snap.items[id].value.name, 'Ada (other tab)');
      assert.ok(await a.locator('#event-log li[data-type="rollback"]').count() >= 1, 'the log shows the rollback');
      await a.unroute(`**/v1/rooms/${room}/items/${encodeURIComponent(id)}*`);
    } finally {
      await closeAll(a);
    }
  });

  test('looks right at phone width: no sideways scrolling, cells still work', { timeout: 60_000 }, async () => {
    const board = boardId('phone');
    let a;
    try {
      a = await openBoard(browser, server.url, board, { name: 'Ada', viewport: { width: 390, height: 844 } });
      const [scrollW, innerW] = await a.evaluate(() => [document.documentElement.scrollWidth, innerWidth]);
      assert.ok(scrollW <= innerW, `page is ${scrollW} px wide in a ${innerW} px viewport`);
      const box = await a.locator('[data-cell="6-19"]').boundingBox();
      assert.ok(box && box.x + box.width <= innerW, 'the Sunday column is on screen');
      assert.ok(box.width >= 30 && box.height >= 28, `cells are big enough to tap (${box.width}x${box.height})`);
      await toggle(a, '6-19');
      await waitCell(a, '6-19', { state: 'mine', count: 1 });
    } finally {
      await closeAll(a);
    }
  });

  for (const [transport, signal] of [['auto', 'SIGKILL'], ['sse', 'SIGKILL'], ['longpoll', 'SIGKILL'], ['auto', 'SIGTERM']]) {
    test(`both pages recover from a server restart; REST writes made right after it show once in both (${transport}, ${signal})`, { timeout: 120_000 }, async (t) => {
      const first = await startServer();
      let second;
      let a;
      let b;
      try {
        const board = boardId('rs');
        const room = `board-${board}`;
        a = await openBoard(browser, first.url, board, { transport, name: 'Ada' });
        b = await openBoard(browser, first.url, board, { transport, name: 'Bob' });
        const idb = await clientIdOf(b);
        await toggle(a, '0-9');
        await toggle(a, '1-9');
        await toggle(b, '1-9');
        await waitCell(b, '0-9', { state: 'on', count: 1 });
        await waitCell(b, '1-9', { state: 'mine', count: 2 });
        await waitCell(a, '1-9', { state: 'mine', count: 2 });

        const transports = [await transportOf(a), await transportOf(b)];
        // SIGKILL: a crash. SIGTERM: a graceful restart (the server tells every page to
        // reconnect after a spread-out delay, then drains).
        await first.stop(signal);
        for (const p of [a, b]) {
          await p.waitForFunction(() => document.querySelector('#conn-state').dataset.state !== 'open', null, { timeout: 15_000 });
        }

        second = await startServer({ port: first.port, dir: first.dir });
        // Right after the restart, before the pages are back: another person's marks and Bob
        // unmarking 1-9 from elsewhere, through the REST API.
        const states = [await stateOf(a), await stateOf(b)];
        const writes = [
          await restPut(second.url, room, 'rest-user.4-12', { name: 'Rest', on: true }, { 'Idempotency-Key': `${board}-w1` }),
          await restPut(second.url, room, 'rest-user.4-13', { name: 'Rest', on: true }, { 'Idempotency-Key': `${board}-w2` }),
          await restPut(second.url, room, 'rest-user.0-9', { name: 'Rest', on: true }, { 'Idempotency-Key': `${board}-w3` }),
          await restDelete(second.url, room, `${idb}.1-9`, { 'Idempotency-Key': `${board}-w4` }),
        ];
        assert.deepEqual(writes.map((w) => w.status), [200, 200, 200, 200], JSON.stringify(writes.map((w) => w.body)));
        // A retry of one of them with the same key appends nothing.
        const replay = await restPut(second.url, room, 'rest-user.4-12', { name: 'Rest', on: true }, { 'Idempotency-Key': `${board}-w1` });
        assert.equal(replay.status, 200);
        t.diagnostic(`page states when the REST writes were made: ${states.join(', ')}; transports before the kill: ${transports.join(', ')}`);

        await waitLive(a, 30_000);
        await waitLive(b, 30_000);
        const snap = await agreesWithServer(a, second.url, room, 15_000);
        await agreesWithServer(b, second.url, room, 15_000);
        assert.equal(Object.keys(snap.items).length, 5, `items: ${Object.keys(snap.items)}`);
        assert.equal(snap.seq, 7, 'three page writes + four REST writes, the replay appended nothing');
        await waitCell(a, '0-9', { state: 'mine', count: 2 });
        await waitCell(b, '1-9', { state: 'on', count: 1 });
        await waitCell(b, '4-12', { state: 'on', count: 1 });
        await assertNoDuplicateSeq(a, 'A after the restart');
        await assertNoDuplicateSeq(b, 'B after the restart');

        // And the live path works again.
        const t0 = await toggle(b, '5-15');
        await seenWithin(a, '5-15', { state: 'on', count: 1 }, t0, 'a mark after the restart');
      } finally {
        await closeAll(a, b);
        await second?.stop();
        await first.dispose();
      }
    });
  }

  test('screenshot of the two-user board for the README (docs/demo.png)', { timeout: 120_000 }, async () => {
    const board = 'team-week'; // fixed, with fixed client ids, so the picture is stable
    const room = `board-${board}`;
    let a;
    let b;
    try {
      const viewport = { width: 1280, height: 900 };
      a = await openBoard(browser, server.url, board, { name: 'Ada', clientId: 'uadalovelace', viewport });
      b = await openBoard(browser, server.url, board, { name: 'Grace', clientId: 'ugracehopper1', viewport });
      // A third person, through the REST API, so the heat map has three levels.
      for (const cell of ['1-10', '1-11', '2-14', '2-15', '3-10', '3-11', '0-16']) {
        const r = await restPut(server.url, room, `linus.${cell}`, { name: 'Linus', on: true });
        assert.equal(r.status, 200);
      }
      const ada = ['0-9', '0-10', '1-10', '1-11', '1-12', '2-14', '3-10', '3-11', '4-9', '4-10'];
      const grace = ['1-10', '1-11', '2-13', '2-14', '2-15', '3-11', '4-10', '4-16', '4-17'];
      // One at a time, each confirmed before the next, so the log in the picture is the same
      // on every run.
      for (const c of ada) {
        await toggle(a, c);
        await waitCell(a, c, { state: 'mine' });
      }
      for (const c of grace) {
        await toggle(b, c);
        await waitCell(b, c, { state: 'mine' });
        await waitCell(a, c, { state: ['on', 'mine'] });
      }
      await waitCell(a, '1-11', { state: 'mine', count: 3 });
      await waitCell(a, '3-11', { state: 'mine', count: 3 });
      await waitCell(a, '4-17', { state: 'on', count: 1 });
      await agreesWithServer(a, server.url, room);
      await a.waitForFunction(() => document.querySelectorAll('#presence li').length === 2, null, { timeout: 10_000 });
      // Grace points at Thursday 11:00; Ada sees her hover hint (auto moves to WebSocket for it).
      await b.hover('[data-cell="3-11"]');
      await a.waitForSelector('[data-cell="3-11"] .hover-tag', { timeout: 10_000 }).catch(() => {});
      await a.mouse.move(5, 5);
      await sleep(400); // let the colour transitions finish
      const shot = process.env.TIDEWIRE_UPDATE_SCREENSHOT === '1'
        ? join(ROOT, 'docs/demo.png')
        : join(ROOT, 'tests/e2e/test-results/demo.png');
      mkdirSync(dirname(shot), { recursive: true });
      await a.screenshot({ path: shot });
      assert.ok(statSync(shot).size > 10_000, `${shot} holds a real picture`);
    } finally {
      await closeAll(a, b);
    }
  });
});
