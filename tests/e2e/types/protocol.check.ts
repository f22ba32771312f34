// Type-checks client/types/protocol.d.ts (generated from the Rust types) the way an app uses it.
// Run: npm run typecheck (part of `cargo xtask test`).
import type { Envelope, ServerFrame, ClientFrame, Problem, ErrorCode, Snapshot } from "../../../client/types/protocol.js";
type Chat = { type: "chat.message"; data: { text: string } };
function on(e: Envelope<Chat>): string {
  switch (e.type) {
    case "item.put": return e.data.id + e.data.version.toFixed(0);
    case "chat.message": return e.data.text;
    default: return e.type;
  }
}
const f: ClientFrame = { type: "subscribe", rooms: ["a"], since: "a=1" };
const s: ServerFrame = { type: "ack", ok: false, error: { code: "version_conflict", title: "x" } };
const p: Problem = { type: "t", title: "t", status: 409, detail: "d", code: "version_conflict" };
const c: ErrorCode = "bad_json";
const snap: Snapshot = { room: "r", seq: 1, items: { a: { value: 1, version: 1, updated_at: "t" } } };
// @ts-expect-error unknown code
const bad: ErrorCode = "nope";
console.log(on, f, s, p, c, snap, bad);
