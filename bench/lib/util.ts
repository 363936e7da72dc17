// Small shared helpers: paths, ports, statistics, logging.
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** The repository (or worktree) root: dist/bench/lib/ -> ../../.. */
export const ROOT = join(import.meta.dirname, '..', '..', '..');
export const DIST_BENCH = join(ROOT, 'dist', 'bench');

/** Node entry points of the bench's own processes. */
export const script = (name: string): string => join(DIST_BENCH, `${name}.js`);

const temps = new Set<string>();

/** A fresh directory on the disk (not tmpfs): write_bytes must see the log's writes. */
export function tempDir(prefix: string): string {
  const dir = mkdtempSync(join(process.env.BENCH_TMP ?? tmpdir(), `eb-bench-${prefix}-`));
  temps.add(dir);
  return dir;
}

/** Removes every directory tempDir made that is still there (at exit, also after a signal). */
export function removeTempDirs(): void {
  for (const dir of temps) rmSync(dir, { recursive: true, force: true });
  temps.clear();
}

/** `count` distinct free TCP ports on 127.0.0.1 (held together, so none is handed out twice). */
export async function freePorts(count: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from(
      { length: count },
      () =>
        new Promise<Server>((resolve, reject) => {
          const s = createServer();
          s.once('error', reject);
          s.listen(0, '127.0.0.1', () => resolve(s));
        }),
    ),
  );
  const ports = servers.map((s) => (s.address() as { port: number }).port);
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

export async function freePort(): Promise<number> {
  return (await freePorts(1))[0]!;
}

/** Whether `port` can be bound on 127.0.0.1 now. */
export function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

export function median(values: readonly number[]): number {
  const s = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** Rounds for JSON: integers above 100, else 3 significant decimals. */
export function round(v: number): number {
  if (!Number.isFinite(v)) return v;
  return Math.abs(v) >= 100 ? Math.round(v) : Math.round(v * 1000) / 1000;
}

export function log(msg: string): void {
  const t = new Date().toISOString().slice(11, 19);
  process.stderr.write(`[${t}] ${msg}\n`);
}

export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Rotates `list` by `n` (A/B/C, then B/C/A, ...) so no target always runs first. */
export function rotate<T>(list: readonly T[], n: number): T[] {
  const k = ((n % list.length) + list.length) % list.length;
  return [...list.slice(k), ...list.slice(0, k)];
}
