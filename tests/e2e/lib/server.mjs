// Starts the `tidewire` binary for a browser test: a free loopback port, a fresh SQLite file,
// www/ at / and the npm package at /pkg/. Environment (set by `cargo xtask test`):
//   TIDEWIRE_BIN   the binary (default: <CARGO_TARGET_DIR or target>/debug/tidewire)
//   TIDEWIRE_ROOT  the repository root (default: two levels up from tests/e2e)
//   TIDEWIRE_PKG   the npm package directory (default: client/pkg)

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const root = process.env.TIDEWIRE_ROOT ?? path.resolve(here, '../../..');
const targetDir = process.env.CARGO_TARGET_DIR
  ? path.resolve(root, process.env.CARGO_TARGET_DIR)
  : path.join(root, 'target');
export const bin = process.env.TIDEWIRE_BIN ?? path.join(targetDir, 'debug', 'tidewire');
export const pkgDir = process.env.TIDEWIRE_PKG ?? path.join(root, 'client', 'pkg');

/** A free TCP port on 127.0.0.1 (the OS picks it; the server binds it right after). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Starts the server and resolves once it prints `tidewire listening on http://…`; `args` are
 * extra `serve` arguments (e.g. `['--jwt-secret', s]`).
 * Returns `{ url, stop, output }`; `stop()` ends the process and removes its database.
 */
export async function startServer({ timeoutMs = 30_000, args: extra = [] } = {}) {
  for (const [what, p] of [['tidewire binary', bin], ['npm package', pkgDir]]) {
    if (!existsSync(p)) {
      throw new Error(`${what} not found at ${p}: run \`cargo xtask test\` (or build it first)`);
    }
  }
  const port = await freePort();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tidewire-e2e-'));
  const args = [
    'serve',
    '--listen', `127.0.0.1:${port}`,
    '--database', `sqlite://${path.join(dir, 'e2e.db')}`,
    '--www-dir', path.join(root, 'www'),
    '--pkg-dir', pkgDir,
    ...extra,
  ];
  const child = spawn(bin, args, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`server not ready after ${timeoutMs} ms; output:\n${output}`)),
      timeoutMs,
    );
    const onData = (chunk) => {
      output += chunk;
      const m = output.match(/tidewire listening on (http:\/\/\S+)/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1].replace(/\/$/, ''));
      }
    };
    child.stdout.setEncoding('utf8').on('data', onData);
    child.stderr.setEncoding('utf8').on('data', onData);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`server exited (${code ?? signal}) before it was ready; output:\n${output}`));
    });
  }).catch(async (e) => {
    await stop();
    throw e;
  });
  return { url, stop, output: () => output };
}
