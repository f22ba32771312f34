// TypeScript declarations of `tidewire/react` (hand-written over the SDK's generated types;
// the React test app type-checks against them with `tsc --strict`).
import type { ReactElement, ReactNode } from 'react';
import type {
  BroadcastMessage as SdkBroadcastMessage,
  Client,
  ClientOptions,
  PresenceMember as SdkPresenceMember,
  RollbackInfo as SdkRollbackInfo,
  RoomItem as SdkRoomItem,
  StateName,
  TidewireEvent as SdkTidewireEvent,
  WriteOptions,
} from 'tidewire';

// The SDK's generated types carry application JSON as `any`; the hooks hand it out as
// `unknown` (narrow it, or name its type with the parameter), so no public signature of
// `tidewire/react` is `any`.

/** An item of a room: its `value` is application JSON (`V`, `unknown` unless named). */
export type RoomItem<V = unknown> = Omit<SdkRoomItem, 'value'> & { value: V };
/** A member of a room's presence set: its `meta` is application JSON. */
export type PresenceMember<M = unknown> = Omit<SdkPresenceMember, 'meta'> & { meta: M };
/** A server event envelope: its `data` is JSON. */
export type TidewireEvent = Omit<SdkTidewireEvent, 'data'> & { data: unknown };
/** A broadcast: its `data` is application JSON. */
export type BroadcastMessage = Omit<SdkBroadcastMessage, 'data'> & { data: unknown };
/** A refused write: the server's current `value` is application JSON. */
export type RollbackInfo = Omit<SdkRollbackInfo, 'value'> & { value: unknown };

/** Props of `<TidewireProvider>`: client options (a client is made and owned) or a client. */
export type TidewireProviderProps =
  | { options: ClientOptions; client?: undefined; children?: ReactNode }
  | { client: Client; options?: undefined; children?: ReactNode };

/** Owns one `Client` for its subtree (made from `options` once, closed on unmount) or shares `client`. */
export function TidewireProvider(props: TidewireProviderProps): ReactElement;

/** A room by name, or what `useRoom()` returned. */
export type RoomRef = string | { readonly name: string };

/** `loading` until the room's first snapshot; `error` when the room cannot be opened (a bad name). */
export type RoomStatus = 'loading' | 'ready' | 'error';

/** What `useRoom(name)` returns; `put`, `delete` and `publish` are stable across renders. */
export interface RoomState {
  readonly name: string;
  /** The items as `room.items()` gives them (sorted by id, `pending` while unconfirmed). */
  readonly items: readonly RoomItem[];
  readonly seq: number;
  readonly status: RoomStatus;
  readonly error: Error | null;
  put(id: string, value: unknown, options?: WriteOptions): Promise<TidewireEvent>;
  delete(id: string, options?: WriteOptions): Promise<TidewireEvent>;
  publish(type: string, data?: unknown): Promise<TidewireEvent>;
}

/** The room `name`, re-rendering on every change of it. */
export function useRoom(name: RoomRef): RoomState;

/** `selector(items)`, re-rendering only when the selection changes by `isEqual` (default `Object.is`). */
export function useItems<T>(
  room: RoomRef,
  selector: (items: readonly RoomItem[]) => T,
  isEqual?: (a: T, b: T) => boolean,
): T;

/** One item, or `null` when absent; re-renders only when this item changes. */
export function useItem(room: RoomRef, id: string): RoomItem | null;

/** A room's presence set. */
export interface Presence {
  /** This client's entry, once joined. */
  readonly me: PresenceMember | null;
  readonly others: readonly PresenceMember[];
  readonly members: readonly PresenceMember[];
}

/** The room's presence; with `meta` this client joins it (again when `meta` changes by value). */
export function usePresence(room: RoomRef, meta?: unknown): Presence;

/** Sends `event` to the others in the room. Throws (code `not_ready`) before the client exists. */
export type BroadcastSender = (data?: unknown) => void;

/** Calls the latest `handler` for broadcasts named `event` (`'*'`: all); returns the sender. */
export function useBroadcast(
  room: RoomRef,
  event: string,
  handler?: (message: BroadcastMessage) => void,
): BroadcastSender;

/** Calls the latest `handler` when the server refuses one of this client's writes to the room. */
export function useRollback(room: RoomRef, handler: (rollback: RollbackInfo) => void): void;

/** The connection as `useConnection()` gives it. */
export interface Connection {
  readonly state: StateName;
  readonly transport: 'sse' | 'ws' | 'longpoll' | 'poll' | null;
  /** Set while `reconnecting`. */
  readonly attempt?: number;
  readonly delayMs?: number;
  /** Whether this tab uses another tab's connection (multi-tab sharing). */
  readonly shared: boolean;
  /** Whether the client exists (the .wasm loaded); `false` on the server. */
  readonly ready: boolean;
  /** Why the client could not be made (bad options), else `null`. */
  readonly error: Error | null;
}

export function useConnection(): Connection;

/** The Provider's client, or `null` while it is made and on the server. */
export function useClient(): Client | null;

/** `Object.is` on each key (or element) one level deep. */
export function shallowEqual(a: unknown, b: unknown): boolean;
