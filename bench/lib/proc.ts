// Child processes of the bench (each in its own process group, all stopped on exit, also on
// errors and signals), /proc readers, and conditional waits with deadlines.
import { spawn, execFileSync, type ChildProcess, type StdioOptions } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

export const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

export interface SpawnOptions {
  /** CPU list for taskset -c (e.g. "0"): the command is exec'd by taskset, so the pid is its own. */
  readonly cpus?: string | undefined;
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
  /** stdin: a pipe (for line commands), nothing, or a file descriptor to read from. */
  readonly stdin?: 'pipe' | 'ignore' | number;
  /** Keep all of stdout (generators print JSON); otherwise only the last lines. */
  readonly keepStdout?: boolean;
}

/** A running child: its pid, its output, its exit. */
export class Child {
  readonly pid: number;
  readonly exited: Promise<number | null>;
  exitCode: number | null | undefined;
  private out = '';
  private errTail: string[] = [];
  private outTail: string[] = [];
  private lineWaiters: { test: (line: string) => boolean; resolve: (line: string) => void }[] = [];
  private partial = '';

  constructor(
    readonly name: string,
    readonly proc: ChildProcess,
    private readonly keepStdout: boolean,
  ) {
    // a command that cannot be spawned (ENOENT) reports it as an event: never an uncaught one
    proc.once('error', (err) => this.errTail.push(`spawn error: ${err.message}`));
    if (proc.pid === undefined) throw new Error(`${name}: could not be started`);
    this.pid = proc.pid;
    this.exited = new Promise((resolve) => {
      proc.once('exit', (code, signal) => {
        this.exitCode = code ?? (signal ? -1 : null);
        live.delete(this);
        resolve(this.exitCode);
      });
      proc.once('error', () => {
        this.exitCode = -1;
        live.delete(this);
        resolve(-1);
      });
    });
    proc.stdout?.on('data', (d: Buffer) => this.onStdout(d.toString()));
    proc.stderr?.on('data', (d: Buffer) => {
      this.errTail.push(...d.toString().split('\n').filter((l) => l.length > 0));
      if (this.errTail.length > 40) this.errTail.splice(0, this.errTail.length - 40);
    });
  }

  private onStdout(text: string): void {
    if (this.keepStdout) this.out += text;
    const lines = (this.partial + text).split('\n');
    this.partial = lines.pop() ?? '';
    for (const line of lines) {
      this.outTail.push(line);
      if (this.outTail.length > 40) this.outTail.shift();
      for (const w of [...this.lineWaiters]) {
        if (w.test(line)) {
          this.lineWaiters.splice(this.lineWaiters.indexOf(w), 1);
          w.resolve(line);
        }
      }
    }
  }

  get running(): boolean {
    return this.exitCode === undefined;
  }

  stdout(): string {
    return this.out;
  }

  /** The last lines of stderr and stdout, for error messages. */
  tail(): string {
    return [...this.errTail.slice(-15), ...this.outTail.slice(-10)].join('\n');
  }

  /** Resolves with the first stdout line (from now on) that passes `test`; fails at exit or deadline. */
  async line(test: (line: string) => boolean, timeoutMs: number, what: string): Promise<string> {
    let entry: { test: (line: string) => boolean; resolve: (line: string) => void } | undefined;
    const found = new Promise<string>((resolve) => {
      entry = { test, resolve };
      this.lineWaiters.push(entry);
    });
    const timer = new AbortController();
    try {
      return await Promise.race([
        found,
        this.exited.then((code) => {
          throw new Error(`${this.name} exited (${code}) before ${what}\n${this.tail()}`);
        }),
        sleep(timeoutMs, undefined, { signal: timer.signal }).then(() => {
          throw new Error(`${this.name}: no ${what} within ${timeoutMs} ms\n${this.tail()}`);
        }),
      ]);
    } finally {
      timer.abort();
      const i = entry ? this.lineWaiters.indexOf(entry) : -1;
      if (i >= 0) this.lineWaiters.splice(i, 1);
    }
  }

  /** Writes a command line to the child's stdin. */
  send(line: string): void {
    this.proc.stdin?.write(`${line}\n`);
  }

  /** SIGTERM to the whole process group, SIGKILL after `graceMs`. */
  async stop(graceMs = 10_000, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    if (!this.running) return this.exitCode ?? null;
    killGroup(this.pid, signal);
    const done = await Promise.race([this.exited.then(() => true), sleep(graceMs).then(() => false)]);
    if (!done) {
      killGroup(this.pid, 'SIGKILL');
      await this.exited;
    }
    return this.exitCode ?? null;
  }

  /** Waits for the child to exit by itself; kills it at the deadline and fails. */
  async finished(timeoutMs: number): Promise<number | null> {
    const done = await Promise.race([this.exited.then(() => true), sleep(timeoutMs).then(() => false)]);
    if (!done) {
      await this.stop(2000, 'SIGKILL');
      throw new Error(`${this.name} did not finish within ${timeoutMs} ms\n${this.tail()}`);
    }
    return this.exitCode ?? null;
  }
}

const live = new Set<Child>();
/** Processes started by others for the bench (Kafka): killed on exit if still there. */
const adopted = new Set<number>();

export function adopt(pid: number): void {
  adopted.add(pid);
}

export function release(pid: number): void {
  adopted.delete(pid);
}

function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      // gone already
    }
  }
}

/** Spawns `cmd` in its own process group (so a stop reaches its children too). */
export function start(name: string, cmd: string, args: readonly string[], options: SpawnOptions = {}): Child {
  const [file, argv] = options.cpus !== undefined ? ['taskset', ['-c', options.cpus, cmd, ...args]] : [cmd, [...args]];
  const stdio: StdioOptions = [options.stdin ?? 'ignore', 'pipe', 'pipe'];
  const proc = spawn(file, argv, { stdio, detached: true, env: options.env ?? process.env, cwd: options.cwd });
  const child = new Child(name, proc, options.keepStdout ?? false);
  live.add(child);
  return child;
}

/** Spawns a Node script of the bench (dist/bench/NAME.js) with one JSON argument. */
export function startNode(
  name: string,
  script: string,
  arg: unknown,
  options: SpawnOptions & { nodeArgs?: readonly string[] } = {},
): Child {
  return start(name, process.execPath, [...(options.nodeArgs ?? []), script, JSON.stringify(arg)], { keepStdout: true, ...options });
}

/** Stops every child still running (process groups). */
export async function stopAll(): Promise<void> {
  await Promise.all([...live].map((c) => c.stop(5000)));
}

let cleanupInstalled = false;
/** On exit, errors and signals: no child is left behind. */
export function installCleanup(extra: () => Promise<void>): void {
  if (cleanupInstalled) return;
  cleanupInstalled = true;
  process.on('exit', () => {
    for (const c of live) killGroup(c.pid, 'SIGKILL');
    for (const pid of adopted) killGroup(pid, 'SIGKILL');
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      process.stderr.write(`bench: ${sig}, stopping children...\n`);
      void Promise.allSettled([stopAll(), extra()]).then(() => process.exit(130));
    });
  }
}

// --- /proc ----------------------------------------------------------------------------------

/** Resident set size in bytes. */
export function rssBytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /VmRSS:\s+(\d+) kB/.exec(status);
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]) * 1024;
}

/** CPU time (utime + stime) in seconds, all threads. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state): utime is field 14, stime field 15
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

export interface IoCounters {
  rchar: number;
  wchar: number;
  read_bytes: number;
  write_bytes: number;
  cancelled_write_bytes: number;
}

export function ioCounters(pid: number): IoCounters {
  const text = readFileSync(`/proc/${pid}/io`, 'utf8');
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const [k, v] = line.split(':');
    if (k && v) out[k.trim()] = Number(v.trim());
  }
  return out as unknown as IoCounters;
}

/** CPU use of `pids` between two calls, in % of one core. */
export function cpuMeter(pids: readonly number[]): () => number {
  const read = () => pids.reduce((s, p) => s + safe(() => cpuSeconds(p), 0), 0);
  const c0 = read();
  const t0 = performance.now();
  return () => ((read() - c0) / ((performance.now() - t0) / 1000)) * 100;
}

/**
 * Seconds the threads of `pid` spent runnable but waiting for a CPU (/proc/PID/task/TID/schedstat,
 * second field): how much the machine's other load held the process back.
 */
export function runqueueWaitSeconds(pid: number): number {
  let ns = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    ns += safe(() => Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[1]), 0);
  }
  return ns / 1e9;
}

/** Run-queue wait of `pid` between two calls, in % of wall time (summed over its threads). */
export function runqueueMeter(pid: number): () => number {
  const w0 = safe(() => runqueueWaitSeconds(pid), 0);
  const t0 = performance.now();
  return () => ((safe(() => runqueueWaitSeconds(pid), w0) - w0) / ((performance.now() - t0) / 1000)) * 100;
}

function safe<T>(f: () => T, fallback: T): T {
  try {
    return f();
  } catch {
    return fallback;
  }
}

// --- waits -----------------------------------------------------------------------------------

/** Polls `probe` until it returns a value other than undefined/false; fails at the deadline. */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined | false> | T | undefined | false,
  { timeoutMs, intervalMs = 100 }: { timeoutMs: number; intervalMs?: number },
): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      lastErr = err;
    }
    if (performance.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? ` (last error: ${(lastErr as Error).message})` : ''}`);
    }
    await sleep(intervalMs);
  }
}

/** Resolves once a TCP connection to host:port succeeds. */
export function waitForPort(port: number, timeoutMs: number, host = '127.0.0.1'): Promise<true> {
  return waitFor(
    `${host}:${port} to accept connections`,
    () =>
      new Promise<boolean>((resolve) => {
        const s = createConnection({ host, port });
        s.once('connect', () => {
          s.destroy();
          resolve(true);
        });
        s.once('error', () => resolve(false));
      }),
    { timeoutMs, intervalMs: 50 },
  );
}

/** Samples RSS (bytes) of `pid` every `intervalMs` for `durationMs` (the measurement window). */
export async function sampleRss(pid: number, durationMs: number, intervalMs = 250): Promise<number[]> {
  const samples: number[] = [];
  const end = performance.now() + durationMs;
  while (performance.now() < end) {
    samples.push(rssBytes(pid));
    await sleep(intervalMs);
  }
  samples.push(rssBytes(pid));
  return samples;
}

export const MiB = 1024 * 1024;
