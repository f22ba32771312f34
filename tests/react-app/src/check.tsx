// Compile-only (`tsc --strict`): the declarations of `tidewire/react` describe what the test
// app does not render: a Provider given a client, useClient, and the type errors they catch.
import init, { Client } from 'tidewire';
import {
  TidewireProvider,
  useClient,
  useConnection,
  useItems,
  usePresence,
  type Connection,
  type Presence,
  type RoomState,
} from 'tidewire/react';
import { useRoom } from 'tidewire/react';

function Status() {
  const client: Client | null = useClient();
  const c: Connection = useConnection();
  const room: RoomState = useRoom('board-1');
  const free: number = useItems(room, (items) => items.filter((i) => !i.pending).length);
  const p: Presence = usePresence(room);
  // @ts-expect-error: a selection is typed by its selector
  const wrong: string = useItems(room, (items) => items.length);
  return (
    <p>
      {client?.clientId} {c.state} {c.attempt ?? 0} {free} {p.others.length} {wrong}
    </p>
  );
}

export async function given(url: string) {
  await init();
  const client = new Client({ url });
  const ok = (
    <TidewireProvider client={client}>
      <Status />
    </TidewireProvider>
  );
  // @ts-expect-error: options or a client
  const neither = <TidewireProvider><Status /></TidewireProvider>;
  // @ts-expect-error: not both
  const both = <TidewireProvider client={client} options={{ url }}><Status /></TidewireProvider>;
  return [ok, neither, both];
}
