import { spawn, spawnSync } from 'node:child_process';
import { accessSync, constants, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';

export type MosquittoTool = 'mosquitto' | 'mosquitto_passwd' | 'mosquitto_pub' | 'mosquitto_sub';

function find(name: MosquittoTool): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/usr/bin', '/usr/local/sbin', '/usr/local/bin'];
  for (const dir of dirs) {
    if (!dir) continue;
    const path = join(dir, name);
    try {
      accessSync(path, constants.X_OK);
      return path;
    } catch {
      // next
    }
  }
  return undefined;
}

let installTried = false;

/**
 * The path of a Mosquitto program (Debian's packages `mosquitto` and `mosquitto-clients`). If it
 * is missing, installs both with apt-get once, synchronously; throws if that does not help.
 */
export function mosquittoTool(name: MosquittoTool): string {
  const found = find(name);
  if (found) return found;
  let detail = '';
  if (!installTried) {
    installTried = true;
    const r = spawnSync('sh', ['-c', 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients'], {
      encoding: 'utf8',
      timeout: 300_000,
    });
    detail = r.error ? ` (${r.error.message})` : r.status === 0 ? '' : ` (apt-get exited ${r.status}: ${(r.stderr || r.stdout).trim().slice(-500)})`;
    const again = find(name);
    if (again) return again;
  }
  throw new Error(
    `${name} is not installed and could not be installed${detail}: run \`apt-get install mosquitto mosquitto-clients\` (Debian/Ubuntu) and run the tests again`,
  );
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

export interface MosquittoBroker {
  readonly port: number;
  /** What the broker logged so far (stdout and stderr). */
  log(): string;
  stop(): Promise<void>;
}

/**
 * Starts a real Mosquitto broker with `conf` plus a listener on a free 127.0.0.1 port, and waits
 * (up to 10 s) until it accepts TCP connections (it must log to stderr, the default). Run as root, it is told to stay root (`user
 * root`): otherwise it drops to the mosquitto user, which cannot read files in test directories.
 */
export async function startMosquitto(conf: string): Promise<MosquittoBroker> {
  const bin = mosquittoTool('mosquitto');
  let lastError: Error | undefined;
  // The port may be taken between finding it and Mosquitto binding it: try a few.
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const dir = mkdtempSync(join(tmpdir(), 'edgebridge-mosquitto-'));
    const file = join(dir, 'mosquitto.conf');
    const root = process.getuid?.() === 0 ? 'user root\n' : '';
    writeFileSync(file, `${root}listener ${port} 127.0.0.1\n${conf}\n`);
    const child = spawn(bin, ['-c', file], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    let exited = false;
    const exit = new Promise<void>((resolve) =>
      child.once('exit', () => {
        exited = true;
        resolve();
      }),
    );
    child.once('error', (err) => (output += `spawn error: ${err.message}\n`));
    const deadline = Date.now() + 10_000;
    let up = false;
    while (!exited && Date.now() < deadline) {
      // "running" is logged once every listener is open: a connection accepted before that would
      // be another program's, on a port taken since freePort().
      if (/ running\b/.test(output) && (await accepts(port)) && !exited) {
        up = true;
        break;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    const stop = async (): Promise<void> => {
      if (!exited) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 3_000);
        await exit;
        clearTimeout(timer);
      }
      rmSync(dir, { recursive: true, force: true });
    };
    if (up) return { port, log: () => output, stop };
    await stop();
    lastError = new Error(`mosquitto did not start listening on 127.0.0.1:${port} (${exited ? 'it exited' : 'timed out'}):\n${output}`);
    if (!/address already in use/i.test(output)) break;
  }
  throw lastError!;
}
