// Uses the installed npm package exactly as an application would: connect, open a room,
// write optimistically, and wait until the write is confirmed by the server. The same page
// runs against both builds: `--target web` (whose default export `init()` loads the .wasm)
// and `--target bundler` (where the bundler loads it on import).
import * as tidewire from 'tidewire';

const { Client } = tidewire;
const init = typeof tidewire.default === 'function' ? tidewire.default : async () => {};

const params = new URLSearchParams(location.search);
const server = params.get('server') ?? 'http://127.0.0.1:18090';

function done(result) {
  window.__result = result;
  document.querySelector('#result').textContent = JSON.stringify(result, null, 2);
}

function waitFor(check, ms) {
  return new Promise((resolve, reject) => {
    const start = Date.now();
    const tick = () => {
      if (check()) return resolve();
      if (Date.now() - start > ms) return reject(new Error('timed out'));
      setTimeout(tick, 20);
    };
    tick();
  });
}

async function main() {
  await init();
  const client = new Client({ url: server });
  const states = [];
  client.onState((s) => states.push(s.state));
  const room = client.room(`vite-${Date.now()}`);
  const updates = [];
  room.subscribe(({ items, seq, event }) => {
    updates.push({ cause: event.type, seq, items: items.map((i) => ({ ...i })) });
  });
  await waitFor(() => client.state().state === 'open', 10000);

  const putPromise = room.put('hello', { from: 'vite' });
  const shownAtOnce = room.items().find((i) => i.id === 'hello');
  const event = await putPromise;
  // Confirmed: the server's item.put event was applied (from the answer or the stream).
  await waitFor(() => updates.some((u) => u.cause === 'item.put' && u.seq === event.seq), 5000);
  const item = room.items().find((i) => i.id === 'hello');

  let badRoomCode = null;
  try {
    client.room('not a room name');
  } catch (e) {
    badRoomCode = e instanceof Error ? e.code : 'not an Error';
  }

  const result = {
    ok: true,
    shownAtOnce: shownAtOnce ? { pending: shownAtOnce.pending, value: shownAtOnce.value } : null,
    event: { type: event.type, seq: event.seq, version: event.data.version },
    item,
    state: client.state().state,
    transport: client.transport(),
    states,
    badRoomCode,
  };
  client.close();
  result.afterClose = client.state().state;
  done(result);
}

main().catch((e) => done({ ok: false, error: String(e), code: e?.code ?? null }));
