// Turns the `wasm-pack build` output into the npm package `tidewire`: sets the name, adds
// the README, the TypeScript declarations generated from the Rust types and the React
// bindings `tidewire/react` (client/react). Idempotent.
//
//   wasm-pack build client --release --target web --out-dir pkg
//   node client/scripts/package.mjs client/pkg
//   (cd client/pkg && npm pack)
import { execFileSync } from 'node:child_process';
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

// wasm-opt -Os with a binaryen that understands reference types (>= 116): $WASM_OPT, the one
// `cargo xtask setup` installed from npm (client/scripts/wasm-opt), the one npm installed for
// the Vite test, or the one on PATH. Skipped (with a note) when none works.
function wasmOpt(wasm) {
  const root = path.resolve(client, '..');
  const candidates = [
    process.env.WASM_OPT,
    path.join(client, 'scripts', 'wasm-opt', 'node_modules', '.bin', 'wasm-opt'),
    path.join(root, 'tests', 'vite-app', 'node_modules', '.bin', 'wasm-opt'),
    'wasm-opt',
  ].filter(Boolean);
  for (const bin of candidates) {
    let version;
    try {
      version = execFileSync(bin, ['--version'], { encoding: 'utf8' });
    } catch {
      continue;
    }
    const n = Number(/version[_ ](\d+)/.exec(version)?.[1] ?? 0);
    if (n < 116) continue;
    const before = fs.statSync(wasm).size;
    execFileSync(bin, [wasm, '-Os', '-o', wasm], { stdio: 'inherit' });
    console.log(`wasm-opt ${n}: ${before} -> ${fs.statSync(wasm).size} bytes`);
    return true;
  }
  console.warn('no wasm-opt >= 116 found (npm i binaryen, or set WASM_OPT): the .wasm is not optimized');
  return false;
}
// The marker holds the size of the optimized module, so a fresh wasm-pack build is optimized again.
// It is written only when wasm-opt ran: a module left unoptimized (no wasm-opt found) is tried
// again on the next run, once one is installed.
const wasmName = (pkg.files ?? []).find((f) => f.endsWith('.wasm'));
const marker = path.join(pkgDir, '.wasm-optimized');
if (wasmName) {
  const wasm = path.join(pkgDir, wasmName);
  const done = fs.existsSync(marker) && fs.readFileSync(marker, 'utf8') === String(fs.statSync(wasm).size);
  if (!done) {
    if (wasmOpt(wasm)) {
      fs.writeFileSync(marker, String(fs.statSync(wasm).size));
    } else {
      fs.rmSync(marker, { force: true });
    }
  }
}
delete pkg.tidewireOptimized;
pkg.name = 'tidewire';
pkg.description =
  'Tidewire browser SDK: live rooms over SSE, WebSocket, long-poll and polling, with exact resume, optimistic writes, presence and broadcast.';
pkg.keywords = ['realtime', 'sse', 'websocket', 'wasm', 'tidewire'];
const files = new Set(pkg.files ?? []);
fs.copyFileSync(path.join(client, 'README.md'), path.join(pkgDir, 'README.md'));
files.add('README.md');
// The declarations generated from the Rust types: the wire types (protocol.d.ts) and the
// JavaScript API's objects (client.d.ts, also embedded in the package's main .d.ts).
for (const name of ['protocol.d.ts', 'client.d.ts']) {
  const types = path.join(client, 'types', name);
  if (fs.existsSync(types)) {
    fs.mkdirSync(path.join(pkgDir, 'types'), { recursive: true });
    fs.copyFileSync(types, path.join(pkgDir, 'types', name));
    files.add(`types/${name}`);
  }
}
// `tidewire/react`: the React bindings (plain JavaScript, React as an optional peer), reached
// through the `exports` map next to the SDK itself and its declarations.
const reactSrc = path.join(client, 'react');
if (fs.existsSync(reactSrc)) {
  fs.mkdirSync(path.join(pkgDir, 'react'), { recursive: true });
  for (const name of ['index.js', 'store.js', 'index.d.ts']) {
    fs.copyFileSync(path.join(reactSrc, name), path.join(pkgDir, 'react', name));
    files.add(`react/${name}`);
  }
  const main = pkg.module ?? pkg.main;
  const types = pkg.types ?? pkg.typings;
  pkg.exports = {
    '.': { types: `./${types}`, default: `./${main}` },
    './react': { types: './react/index.d.ts', default: './react/index.js' },
    './types/*': { types: './types/*.d.ts' },
    './package.json': './package.json',
    './*': './*',
  };
  pkg.peerDependencies = { react: '>=18' };
  pkg.peerDependenciesMeta = { react: { optional: true } };
}
pkg.files = [...files];
fs.writeFileSync(manifestPath, JSON.stringify(pkg, null, 2) + '\n');
console.log(`${manifestPath}: ${pkg.name}@${pkg.version}, files ${pkg.files.join(', ')}`);
