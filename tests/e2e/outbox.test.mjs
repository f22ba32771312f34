// "Your own PostgreSQL, live" in a browser: the demo board follows a room that the app's own
// database feeds through Tidewire's outbox. A transaction run with psql shows on the page
// within a second of its commit; one that rolls back never shows.
//
// Run:   node --test tests/e2e/outbox.test.mjs
// Needs: what demo.test.mjs needs, plus PostgreSQL on 127.0.0.1:5432 (trust auth, user
//        postgres) and psql on PATH. Each run uses its own database and drops it.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, test } from 'node:test';
import { boardId, launchBrowser, openBoard, sleep, startServer, waitCell } from './demo-helpers.mjs';

const PG = { host: '127.0.0.1', port: '5432', user: 'postgres' };
const db = `tw_e2e_${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
const psql = (sql, database = db) => execFileSync('psql',
  ['-h', PG.host, '-p', PG.port, '-U', PG.user, '-d', database, '-v', 'ON_ERROR_STOP=1', '-X', '-q', '-c', sql],
  { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

let server;
let browser;

before(async () => {
  psql(`create database ${db}`, 'postgres');
  server = await startServer({
    extraArgs: ['--outbox', `postgres://${PG.user}@${PG.host}:${PG.port}/${db}`, '--outbox-poll-ms', '500'],
  });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.dispose();
  try { psql(`drop database if exists ${db} with (force)`, 'postgres'); } catch { /* best effort */ }
});

test('a committed psql transaction shows within a second; a rolled back one never does', async () => {
  const board = boardId('ob');
  const room = `board-${board}`;
  const page = await openBoard(browser, server.url, board, { name: 'watcher' });
  await waitCell(page, '2-10', { count: 0 });

  // Committed: the app's transaction calls tidewire.put_item beside its own writes.
  const t0 = Date.now();
  psql(`begin; select tidewire.put_item('${room}', 'psql.2-10', '{"name":"psql","on":true}'::jsonb, 'e2e-commit'); commit;`);
  await waitCell(page, '2-10', { count: 1 }, 5_000);
  const elapsed = Date.now() - t0;
  assert.ok(elapsed <= 1_000, `the committed change took ${elapsed} ms to show (limit 1000 ms)`);

  // Rolled back: nothing ever reaches the page, not after a poll interval or two either.
  psql(`begin; select tidewire.put_item('${room}', 'psql.2-11', '{"name":"psql","on":true}'::jsonb); rollback;`);
  // A later committed change proves the consumer went past the rolled back one.
  psql(`begin; select tidewire.put_item('${room}', 'psql.3-9', '{"name":"psql","on":true}'::jsonb); commit;`);
  await waitCell(page, '3-9', { count: 1 }, 5_000);
  await sleep(1_500);
  await waitCell(page, '2-11', { count: 0 }, 100);

  // A delete made in the database takes the mark back.
  psql(`select tidewire.delete_item('${room}', 'psql.2-10')`);
  await waitCell(page, '2-10', { count: 0 }, 5_000);
  await page.context().close();
});
