// Server-side rendering check, run by run-test.mjs in Node inside the installed app:
// importing `tidewire/react` touches no browser global, rendering gives the loading state,
// and a hook outside the Provider throws an Error saying so.
import assert from 'node:assert/strict';
import { createElement } from 'react';
import { renderToString } from 'react-dom/server';
import { TidewireProvider, useConnection, useItem, useItems, usePresence, useRoom, useBroadcast } from 'tidewire/react';

assert.equal(typeof globalThis.window, 'undefined', 'this runs without a window');

function View() {
  const room = useRoom('board-1');
  const { state, ready } = useConnection();
  const a = useItem(room, 'a');
  const n = useItems('board-1', (items) => items.length);
  const { members } = usePresence('board-1', { name: 'server' });
  useBroadcast('board-1', 'ping', () => {});
  return createElement('p', null, `${room.status} ${state} ${ready} ${a === null} ${n} ${members.length}`);
}

const html = renderToString(
  createElement(TidewireProvider, { options: { url: 'http://127.0.0.1:9' } }, createElement(View)),
);
assert.match(html, /loading connecting false true 0 0/, html);
assert.throws(() => renderToString(createElement(View)), {
  name: 'Error',
  message: /useRoom\(\) must be used inside a <TidewireProvider>/,
});
assert.throws(() => renderToString(createElement(TidewireProvider, {}, null)), /needs options/);
console.log(`ssr: ok (${html})`);
