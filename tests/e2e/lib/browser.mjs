// Launches Debian's Chromium through playwright-core (Playwright's own browser download is
// not used). TIDEWIRE_CHROMIUM overrides the path (default /usr/bin/chromium).

import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

export const chromiumPath = process.env.TIDEWIRE_CHROMIUM ?? '/usr/bin/chromium';

/**
 * Launches a headless Chromium with a fresh profile directory (Playwright passes it as
 * `--user-data-dir`); returns its browser context. `close()` also removes the profile.
 */
export async function launch() {
  const profile = mkdtempSync(path.join(os.tmpdir(), 'tidewire-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath,
    headless: true,
    timeout: 60_000,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  return {
    context,
    async close() {
      await context.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
