// Turns the `wasm-pack build` output into the npm package `tidewire`: sets the name, adds
// the README and the protocol's TypeScript declarations. Idempotent.
//
//   wasm-pack build client --release --target web --out-dir pkg
//   node client/scripts/package.mjs client/pkg
//   (cd client/pkg && npm pack)
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const client = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const pkgDir = path.resolve(process.argv[2] ?? path.join(client, 'pkg'));
const manifestPath = path.join(pkgDir, 'package.json');
if (!fs.existsSync(manifestPath)) {
  console.error(`no ${manifestPath}: run wasm-pack build first`);
  process.exit(1);
}
const pkg = JSON.parse(fs.readFileSync(manifestPath, 'utf8'));
pkg.name = 'tidewire';
pkg.description =
  'Tidewire browser SDK: live rooms over SSE, WebSocket, long-poll and polling, with exact resume, optimistic writes, presence and broadcast.';
pkg.keywords = ['realtime', 'sse', 'websocket', 'wasm', 'tidewire'];
const files = new Set(pkg.files ?? []);
fs.copyFileSync(path.join(client, 'README.md'), path.join(pkgDir, 'README.md'));
files.add('README.md');
const protocolTypes = path.join(client, 'types', 'protocol.d.ts');
if (fs.existsSync(protocolTypes)) {
  fs.mkdirSync(path.join(pkgDir, 'types'), { recursive: true });
  fs.copyFileSync(protocolTypes, path.join(pkgDir, 'types', 'protocol.d.ts'));
  files.add('types/protocol.d.ts');
}
pkg.files = [...files];
fs.writeFileSync(manifestPath, JSON.stringify(pkg, null, 2) + '\n');
console.log(`${manifestPath}: ${pkg.name}@${pkg.version}, files ${pkg.files.join(', ')}`);
