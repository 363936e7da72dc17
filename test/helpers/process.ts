import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { stringify } from 'yaml';
import type { ConfigInput } from '../../src/config/schema.js';

export const CLI = join(import.meta.dirname, '..', '..', 'dist', 'src', 'cli.js');

export interface GatewayProcess {
  readonly child: ChildProcess;
  readonly url: string;
  readonly port: number;
  /** The config file it was started with (rewrite it and send SIGHUP to reload). */
  readonly configFile: string;
  /** Every JSON log line the process wrote so far. */
  readonly lines: Record<string, unknown>[];
  readonly exited: Promise<number | null>;
  waitForLine(pred: (line: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
}

/** Runs `edgebridge start` as a child process (the built CLI), like a deployment would. */
export async function spawnGateway(config: ConfigInput, dir: string): Promise<GatewayProcess> {
  const file = join(dir, `config-${Date.now()}.yaml`);
  writeFileSync(file, stringify(config));
  const child = spawn(process.execPath, [CLI, 'start', '--config', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: Record<string, unknown>[] = [];
  const waiters: { pred: (l: Record<string, unknown>) => boolean; resolve: (l: Record<string, unknown>) => void }[] = [];
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  createInterface({ input: child.stdout! }).on('line', (text) => {
    let line: Record<string, unknown>;
    try {
      line = JSON.parse(text) as Record<string, unknown>;
    } catch {
      line = { msg: text };
    }
    lines.push(line);
    for (const w of [...waiters]) {
      if (w.pred(line)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(line);
      }
    }
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const waitForLine = (pred: (l: Record<string, unknown>) => boolean, timeoutMs = 30_000) => {
    const found = lines.find(pred);
    if (found) return Promise.resolve(found);
    return new Promise<Record<string, unknown>>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`gateway did not log the expected line in ${timeoutMs} ms; stderr: ${stderr}`)),
        timeoutMs,
      );
      waiters.push({ pred, resolve: (l) => (clearTimeout(timer), resolve(l)) });
      void exited.then((code) => {
        clearTimeout(timer);
        reject(new Error(`gateway exited (${code}) before the expected line; stderr: ${stderr}`));
      });
    });
  };
  const listening = await waitForLine((l) => l.msg === 'mqtt listening');
  const port = listening.port as number;
  return { child, url: `mqtt://127.0.0.1:${port}`, port, configFile: file, lines, exited, waitForLine };
}
