import { spawnSync } from 'node:child_process';
import { accessSync, constants } from 'node:fs';

/** Debian's Chromium, which the browser tests drive with playwright-core (never a downloaded build). */
export const CHROMIUM = '/usr/bin/chromium';

/**
 * Flags for headless Chromium on a closed network, as root: without the background-networking
 * ones it keeps trying to reach Google's hosts.
 */
export const CHROMIUM_ARGS = [
  '--headless=new',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage',
];

function installed(): boolean {
  try {
    accessSync(CHROMIUM, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Installs Debian's `chromium` with apt-get if it is missing; throws with the reason if that fails. */
export function ensureChromium(): string {
  if (installed()) return CHROMIUM;
  const r = spawnSync('sh', ['-c', 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium'], {
    encoding: 'utf8',
    timeout: 600_000,
  });
  if (installed()) return CHROMIUM;
  const detail = r.error ? r.error.message : `apt-get exited ${r.status}: ${(r.stderr || r.stdout).trim().slice(-500)}`;
  throw new Error(`chromium is not installed and could not be installed (${detail}): run \`apt-get install chromium\` (Debian) and run the tests again`);
}
