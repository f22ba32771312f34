// The JavaScript `new Client({ getToken })` of the npm package against a server with auth on
// (`--jwt-secret`), in headless Chromium: the page's getToken answers a token, the client
// connects and receives an event; a token the server rejects gives a JavaScript `Error` with the
// protocol's `code`.
//
// Run:   node --test tests/e2e/get-token.test.mjs
// Needs: the tidewire binary and client/pkg (see lib/server.mjs), Chromium (lib/browser.mjs).

import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';

import { launch } from './lib/browser.mjs';
import { startServer } from './lib/server.mjs';

const SECRET = randomBytes(24).toString('hex');

/** An HS256 JWT with the server's claims (`sub`, `exp`, `read`, `write`). */
function jwt({ sub, rooms, ttl = 60, secret = SECRET }) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const claims = { sub, exp: Math.floor(Date.now() / 1000) + ttl, read: rooms, write: rooms };
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

let server;
let browser;
let page;

before(async () => {
  server = await startServer({ args: ['--jwt-secret', SECRET] });
  browser = await launch();
  page = await browser.context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.log(`[page] ${m.text()}`); });
  // Any same-origin document will do: static files stay open with auth on.
  await page.goto(`${server.url}/healthz`);
  await page.evaluate(async () => {
    const manifest = await (await fetch('/pkg/package.json')).json();
    const sdk = await import(`/pkg/${manifest.module ?? manifest.main}`);
    await sdk.default();
    window.sdk = sdk;
  });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test('getToken: the client connects with the page\'s token and receives an event', async () => {
  const room = `tok-${Date.now()}`;
  const token = jwt({ sub: 'page', rooms: ['tok-*'] });
  await page.evaluate(({ room, token }) => new Promise((resolve, reject) => {
    window.calls = 0;
    window.events = [];
    const client = new window.sdk.Client({
      url: location.origin,
      transport: 'sse',
      getToken: async () => { window.calls += 1; return token; },
    });
    window.client = client;
    const timer = setTimeout(() => reject(new Error(`not open: ${JSON.stringify(client.state())}`)), 10_000);
    client.onState((s) => {
      if (s.state === 'open') { clearTimeout(timer); resolve(); }
    });
    client.room(room).subscribe(({ event }) => {
      if (event.v === 1) window.events.push(event); // server events, not local causes
    });
  }), { room, token });

  // Written by someone else, with their own token: it reaches the page over the live stream.
  const writer = jwt({ sub: 'backend', rooms: [room] });
  const resp = await fetch(`${server.url}/v1/rooms/${room}/items/x`, {
    method: 'PUT',
    headers: { Authorization: `Bearer ${writer}`, 'Content-Type': 'application/json', 'Idempotency-Key': 'k-1' },
    body: JSON.stringify({ n: 1 }),
  });
  assert.equal(resp.status, 200, await resp.text());
  await page.waitForFunction(() => window.events.length >= 1, null, { timeout: 10_000 });
  const got = await page.evaluate(() => ({
    events: window.events.map((e) => ({ type: e.type, seq: e.seq, room: e.room })),
    calls: window.calls,
    transport: window.client.transport(),
  }));
  assert.deepEqual(got.events, [{ type: 'item.put', seq: 1, room }]);
  assert.equal(got.transport, 'sse');
  assert.ok(got.calls >= 1, `getToken was called (${got.calls})`);

  // A write through the client carries the page's token too.
  const put = await page.evaluate((room) => window.client.room(room).put('y', { n: 2 }).then((e) => e.seq), room);
  assert.equal(put, 2);
  await page.evaluate(() => window.client.close());
});

test('getToken: a token the server rejects is an Error with the protocol code', async () => {
  const room = `tok-bad-${Date.now()}`;
  const cases = [
    { name: 'wrong secret', token: jwt({ sub: 'page', rooms: ['tok-*'], secret: 'not-the-secret' }), code: 'unauthorized', status: 401 },
    { name: 'expired', token: jwt({ sub: 'page', rooms: ['tok-*'], ttl: -120 }), code: 'token_expired', status: 401 },
    { name: 'room not allowed', token: jwt({ sub: 'page', rooms: ['other-*'] }), code: 'forbidden', status: 403 },
  ];
  for (const c of cases) {
    const err = await page.evaluate(async ({ room, token }) => {
      const client = new window.sdk.Client({ url: location.origin, transport: 'sse', writeRetries: 0, getToken: () => token });
      try {
        await client.room(room).put('x', { n: 1 });
        return null;
      } catch (e) {
        return { isError: e instanceof Error, message: e.message, code: e.code, status: e.status };
      } finally {
        client.close();
      }
    }, { room, token: c.token });
    assert.ok(err, `${c.name}: the write was refused`);
    assert.equal(err.isError, true, `${c.name}: an Error`);
    assert.equal(err.code, c.code, `${c.name}: ${JSON.stringify(err)}`);
    assert.equal(err.status, c.status, c.name);
    assert.ok(err.message.length > 0, `${c.name}: a message`);
  }

  // getToken that is not a function is refused when the client is made.
  const bad = await page.evaluate(() => {
    try {
      new window.sdk.Client({ url: location.origin, getToken: 'a token' });
      return null;
    } catch (e) {
      return { isError: e instanceof Error, code: e.code, message: e.message };
    }
  });
  assert.equal(bad?.isError, true);
  assert.equal(bad.code, 'bad_request');
  assert.match(bad.message, /getToken/);
});
