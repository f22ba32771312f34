// A small availability board on `tidewire/react`, instrumented for run-test.mjs: every
// component counts its renders, and `window.__app` lets the test drive the page and read
// what it committed. Query: ?server=<url>&room=<name>&name=<who>.
import { useEffect, useState } from 'react';
import type { BroadcastMessage, RoomItem } from 'tidewire';
import {
  TidewireProvider,
  shallowEqual,
  useBroadcast,
  useConnection,
  useItem,
  useItems,
  usePresence,
  useRollback,
  useRoom,
  type BroadcastSender,
  type RoomState,
} from 'tidewire/react';

export interface Seen {
  id: string;
  pending: boolean;
  version: number;
  value: unknown;
}

export interface AppControl {
  renders: Record<string, number>;
  states: string[];
  seen: Seen[];
  rollbacks: { id: string; code: string; value: unknown }[];
  pings: { data: unknown; from: string | null; handlerOf: number; latest: number }[];
  effectRuns: number;
  mounts: number;
  room: RoomState | null;
  send: BroadcastSender | null;
  remount: () => void;
}

declare global {
  interface Window {
    __app: AppControl;
  }
}

const params = new URLSearchParams(location.search);
const server = params.get('server') ?? 'http://127.0.0.1:8080';
const room = params.get('room') ?? 'board-1';
const name = params.get('name') ?? 'anonymous';

const app: AppControl = {
  renders: {},
  states: [],
  seen: [],
  rollbacks: [],
  pings: [],
  effectRuns: 0,
  mounts: 0,
  room: null,
  send: null,
  remount: () => {},
};
window.__app = app;

function counted(key: string): number {
  app.renders[key] = (app.renders[key] ?? 0) + 1;
  return app.renders[key];
}

function ConnectionBadge() {
  const { state, transport, ready } = useConnection();
  useEffect(() => {
    app.states.push(state);
  }, [state]);
  return (
    <p id="conn" data-state={state} data-ready={String(ready)}>
      {state} {transport ?? ''}
    </p>
  );
}

/** One cell: re-renders only when its own item changes. */
function Cell({ id }: { id: string }) {
  const item = useItem(room, id);
  counted(`cell:${id}`);
  useEffect(() => {
    if (item !== null) app.seen.push({ id, pending: item.pending, version: item.version, value: item.value });
  }, [id, item]);
  return (
    <td id={`cell-${id}`} data-pending={item === null ? '' : String(item.pending)} data-version={item?.version ?? 0}>
      {item === null ? '—' : JSON.stringify(item.value)}
    </td>
  );
}

const count = (items: readonly RoomItem[]): number => items.length;

/** A selector that ignores values: item edits do not re-render it. */
function Count() {
  const n = useItems(room, count);
  counted('count');
  return <p id="count">{n}</p>;
}

/** An inline selector building a new array each time, kept quiet by shallowEqual. */
function Ids() {
  const ids = useItems(room, (items) => items.map((i) => i.id), shallowEqual);
  counted('ids');
  return <p id="ids">{ids.join(',')}</p>;
}

function Board() {
  const r = useRoom(room);
  counted('board');
  useEffect(() => {
    app.room = r;
  }, [r]);
  const [rollback, setRollback] = useState<string>('');
  useRollback(room, (rb) => {
    app.rollbacks.push({ id: rb.id, code: rb.error.code, value: rb.value });
    setRollback(`${rb.id}: ${rb.error.code}`);
  });
  return (
    <section>
      <p id="status">{r.status}</p>
      <p id="seq">{r.seq}</p>
      <p id="rollback">{rollback}</p>
      <ul id="items">
        {r.items.map((i) => (
          <li key={i.id} data-id={i.id} data-pending={String(i.pending)}>
            {i.id} = {JSON.stringify(i.value)}
          </li>
        ))}
      </ul>
    </section>
  );
}

function Members() {
  const { me, others, members } = usePresence(room, { name });
  const names = members.map((m) => String((m.meta as { name?: string } | null)?.name ?? '?')).sort();
  return (
    <p id="members" data-count={members.length} data-me={me === null ? '' : 'yes'} data-others={others.length}>
      {names.join(',')}
    </p>
  );
}

function Pings() {
  // A new handler on every render; the hook must call the latest without re-subscribing.
  const renderNo = counted('pings');
  const [last, setLast] = useState<string>('');
  const send = useBroadcast(room, 'ping', (m: BroadcastMessage) => {
    app.pings.push({ data: m.data, from: m.from, handlerOf: renderNo, latest: app.renders.pings ?? 0 });
    setLast(JSON.stringify(m.data));
  });
  useEffect(() => {
    app.send = send;
  }, [send]);
  return <p id="pings">{last}</p>;
}

/** Counts effect runs: 2 on mount under StrictMode in development. */
function Probe() {
  useEffect(() => {
    app.effectRuns++;
  }, []);
  return null;
}

function Tidewire() {
  useEffect(() => {
    app.mounts++;
  }, []);
  return (
    <TidewireProvider options={{ url: server, backoff: { baseMs: 100, capMs: 1000 } }}>
      <ConnectionBadge />
      <Board />
      <table>
        <tbody>
          <tr>
            <Cell id="a" />
            <Cell id="b" />
            <Cell id="c" />
            <Cell id="d" />
          </tr>
        </tbody>
      </table>
      <Count />
      <Ids />
      <Members />
      <Pings />
    </TidewireProvider>
  );
}

export function Root() {
  // `remount()` unmounts the Provider and mounts a new one (a new client; the old is closed).
  const [generation, setGeneration] = useState(0);
  useEffect(() => {
    app.remount = () => setGeneration((g) => g + 1);
  }, []);
  return (
    <main>
      <Probe />
      <Tidewire key={generation} />
    </main>
  );
}
