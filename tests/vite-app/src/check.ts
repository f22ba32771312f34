// Type-checked against the installed package's declarations (`tsc --noEmit` in run-test.mjs):
// every value an application touches has a declared type.
import init, {
  Client,
  type ClientOptions,
  type ConnectionState,
  type RoomUpdate,
  type RollbackInfo,
  type PresenceUpdate,
  type BroadcastMessage,
  type TidewireError,
  type TidewireEvent,
} from 'tidewire';
import type { Envelope, ErrorCode, Snapshot } from 'tidewire/types/protocol';

export async function example(url: string): Promise<number> {
  await init();
  const options: ClientOptions = { url, transport: 'auto', backoff: { baseMs: 250 }, random: Math.random };
  const client = new Client(options);
  const sub = client.onState((s: ConnectionState) => {
    if (s.state === 'reconnecting') console.log(s.attempt, s.delayMs, s.transport);
  });
  const room = client.room('board-1');
  room.subscribe((u: RoomUpdate) => {
    for (const item of u.items) console.log(item.id, item.value, item.version, item.pending);
    if (u.event.type === 'snapshot') console.log(u.event.seq);
  });
  room.onRollback((r: RollbackInfo) => console.log(r.id, r.value, r.error.code));
  room.onPresence((p: PresenceUpdate) => console.log(p.type, p.members.length));
  room.onBroadcast((b: BroadcastMessage) => console.log(b.event, b.data, b.from));
  room.join({ name: 'Ada' });
  room.broadcast('cursor', { x: 1, y: 2 });
  let event: TidewireEvent;
  try {
    event = await room.put('slot-3', { free: false });
    await room.put('slot-3', { free: true }, { ifMatch: event.data.version });
    await room.delete('slot-3');
  } catch (e) {
    const err = e as TidewireError;
    const code: string = err.code;
    console.log(code, err.status, err.current?.version);
    throw e;
  }
  const wire: Envelope = event as Envelope;
  const code: ErrorCode = 'version_conflict';
  const snapshot: Snapshot | null = null;
  console.log(wire.room, code, snapshot, client.transport(), client.seq('board-1'), client.clientId);
  sub.unsubscribe();
  client.close();
  return room.seq();
}
