import { execFile } from 'node:child_process';
import { chmodSync, existsSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { stringify } from 'yaml';
import { describe, expect, it } from 'vitest';
// @ts-expect-error plain ESM script
import { freePort } from '../../scripts/kafka.mjs';
import type { ConfigInput } from '../../src/config/schema.js';
import type { BacklogSummary } from '../../src/log/backlog.js';
import { testConfig, uniqueName } from '../helpers/gateway.js';
import { CLI, spawnGateway } from '../helpers/process.js';
import { publishAcked, reading } from '../helpers/publish.js';
import { until } from '../helpers/raw-mqtt.js';
import { useCleanups, useTmpDirs } from '../helpers/tmp.js';

const exec = promisify(execFile);

async function run(args: string[], as?: { uid: number; gid: number }): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await exec(process.execPath, [CLI, ...args], { timeout: 30_000, ...as });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** A table row of the CLI's output: its cells, split on runs of 2+ spaces. */
function row(stdout: string, first: string): string[] | undefined {
  return stdout
    .split('\n')
    .map((line) => line.split(/ {2,}/))
    .find((cells) => cells[0] === first);
}

describe('edgebridge status and backlog (real gateway processes)', () => {
  const tmp = useTmpDirs();
  const cleanup = useCleanups();

  /** `edgebridge start` in a child process; its config file as the CLI commands are given it. */
  async function gateway(brokers?: string[]) {
    const dir = tmp();
    const config = testConfig({ dir: join(dir, 'data'), topic: uniqueName('iot.cli-status'), ...(brokers ? { brokers } : {}) });
    const gw = await spawnGateway(config, dir);
    cleanup(() => {
      gw.child.kill('SIGTERM');
      return gw.exited;
    });
    const admin = await gw.waitForLine((l) => l.msg === 'admin endpoint listening');
    const url = `http://127.0.0.1:${admin.port as number}`;
    // the config of the running gateway, with the ports it got: what an operator's file says
    const file = join(dir, 'edgebridge.yaml');
    const actual: ConfigInput = { ...config, mqtt: { ...config.mqtt, port: gw.port }, admin: { host: '127.0.0.1', port: admin.port as number } };
    writeFileSync(file, stringify(actual));
    return { gw, dir, file, url, gatewayId: config.gateway.id };
  }

  /** Kafka is unreachable: every acknowledged reading stays in the log. */
  async function bufferingGateway() {
    const g = await gateway([`127.0.0.1:${(await freePort()) as number}`]);
    const published = { 'dev-a': 5, 'dev-b': 3, 'dev-c': 1 };
    const payloadBytes: Record<string, number> = {};
    for (const [device, n] of Object.entries(published)) {
      const payloads = Array.from({ length: n }, (_, i) => reading(device, 'boot-1', i + 1));
      await publishAcked(g.gw.url, device, payloads);
      payloadBytes[device] = payloads.reduce((sum, p) => sum + Buffer.byteLength(p), 0);
    }
    return { ...g, payloadBytes };
  }

  it('backlog: per-device counts, bytes and oldest age read from the log while the gateway runs; --device, --limit, --json', async () => {
    const startedAt = Date.now();
    const { gw, file, dir, payloadBytes } = await bufferingGateway();

    const all = await run(['backlog', '-c', file]);
    expect(all.stderr).toBe('');
    expect(all.code).toBe(0);
    expect(row(all.stdout, 'records')).toEqual(['records', '9']);
    expect(row(all.stdout, 'devices')).toEqual(['devices', '3']);
    expect(row(all.stdout, 'oldest')?.[1]).toMatch(/^\d+s ago$/);
    expect(row(all.stdout, 'bytes')?.[1]).toBe(`${payloadBytes['dev-a']! + payloadBytes['dev-b']! + payloadBytes['dev-c']!} B`);
    const devices = all.stdout.split('\n').filter((line) => line.startsWith('dev-'));
    expect(devices.map((line) => line.split(/ +/))).toEqual([
      ['dev-a', '5', String(payloadBytes['dev-a']), 'B', expect.stringMatching(/^\d+s$/)],
      ['dev-b', '3', String(payloadBytes['dev-b']), 'B', expect.stringMatching(/^\d+s$/)],
      ['dev-c', '1', String(payloadBytes['dev-c']), 'B', expect.stringMatching(/^\d+s$/)],
    ]);

    const one = await run(['backlog', '-c', file, '--device', 'dev-b']);
    expect(one.code).toBe(0);
    expect(row(one.stdout, 'records')).toEqual(['records', '9']);
    expect(one.stdout.split('\n').filter((line) => line.startsWith('dev-'))).toHaveLength(1);
    expect(row(one.stdout, 'dev-b')?.slice(0, 2)).toEqual(['dev-b', '3']);
    const none = await run(['backlog', '-c', file, '--device', 'dev-z']);
    expect(none.code).toBe(0);
    expect(none.stdout).toContain('no backlog for device dev-z');

    const limited = await run(['backlog', '--dir', join(dir, 'data'), '--limit', '1']);
    expect(limited.code).toBe(0);
    expect(limited.stdout.split('\n').filter((line) => line.startsWith('dev-'))).toEqual([expect.stringMatching(/^dev-a +5 /)]);
    expect(limited.stdout).toContain('(1 of 3 devices: --limit N for more)');

    const json = await run(['backlog', '-c', file, '--json']);
    expect(json.code).toBe(0);
    const summary = JSON.parse(json.stdout) as BacklogSummary;
    expect(summary).toMatchObject({ position: 0, records: 9, devices: 3 });
    expect(summary.top.map(({ deviceId, records, bytes }) => ({ deviceId, records, bytes }))).toEqual([
      { deviceId: 'dev-a', records: 5, bytes: payloadBytes['dev-a'] },
      { deviceId: 'dev-b', records: 3, bytes: payloadBytes['dev-b'] },
      { deviceId: 'dev-c', records: 1, bytes: payloadBytes['dev-c'] },
    ]);
    expect(summary.oldestReceivedAt).toBeGreaterThanOrEqual(startedAt);
    expect(summary.oldestReceivedAt).toBeLessThanOrEqual(summary.readAt);

    // the gateway was only read: it still runs and stores
    expect(gw.child.exitCode).toBeNull();
    await publishAcked(gw.url, 'dev-c', [reading('dev-c', 'boot-1', 2)]);
    expect(JSON.parse((await run(['backlog', '-c', file, '--json'])).stdout)).toMatchObject({ records: 10 });
  });

  it('backlog as a user who may not write storage.dir: reads while the gateway runs; with it stopped, exits 1 saying why', async () => {
    if (process.getuid?.() !== 0) throw new Error('this test runs the CLI as user nobody: run it as root (as CI does)');
    const { gw, dir } = await bufferingGateway();
    const data = join(dir, 'data');
    chmodSync(dir, 0o755); // mkdtemp's 0700 would keep nobody out of the log altogether
    // nobody must reach the CLI too: a clone inside a 0700 folder (mktemp -d) keeps it out. The
    // folders above the checkout get o+x (traverse, not list) for this test, and back after.
    for (let d = dirname(CLI); d !== dirname(d); d = dirname(d)) {
      const mode = statSync(d).mode & 0o7777;
      if ((mode & 0o001) === 0) {
        chmodSync(d, mode | 0o001);
        cleanup(() => chmodSync(d, mode));
      }
    }
    const nobody = { uid: 65534, gid: 65534 };
    const running = await run(['backlog', '--dir', data, '--json'], nobody);
    expect(running.stderr).toBe('');
    expect(JSON.parse(running.stdout)).toMatchObject({ records: 9, devices: 3 });

    gw.child.kill('SIGTERM');
    expect(await gw.exited).toBe(0);
    expect(existsSync(join(data, 'edgebridge.db-shm'))).toBe(false); // a clean close removes it
    const stopped = await run(['backlog', '--dir', data], nobody);
    expect(stopped.code).toBe(1);
    expect(stopped.stderr).toContain('EB_ERR_LOG_OPEN: cannot read commit log');
    expect(stopped.stderr).toContain("SQLite must create edgebridge.db-shm beside it; run as the gateway's user");
    // the log's owner reads it with the gateway stopped
    expect(JSON.parse((await run(['backlog', '--dir', data, '--json'])).stdout)).toMatchObject({ records: 9, devices: 3 });
  });

  it('backlog: a storage.dir without a log, or a bad option, exits 1 with the reason', async () => {
    const dir = tmp();
    const missing = await run(['backlog', '--dir', dir]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain(`EB_ERR_LOG_NOT_FOUND: no commit log at ${join(dir, 'edgebridge.db')}`);
    expect(missing.stdout).toBe('');
    const badLimit = await run(['backlog', '--dir', dir, '--limit', 'ten']);
    expect(badLimit.code).toBe(1);
    expect(badLimit.stderr).toContain("option '--limit <n>' argument 'ten' is invalid");
  });

  it('status: a gateway without Kafka is not ready (exit 1), with the reason and its backlog in the table', async () => {
    const { file, url, gatewayId } = await bufferingGateway();
    // settled: the table and the JSON below are two requests and must see the same state
    await until('the forwarder to be retrying', async () => ((await (await fetch(`${url}/readyz`)).json()) as { status?: string }).status === 'retrying', 30_000, 100);
    // the admin endpoint from the config file (admin.host, admin.port)
    const table = await run(['status', '-c', file]);
    expect(table.stderr).toBe('');
    expect(table.code).toBe(1);
    expect(row(table.stdout, 'gateway')).toEqual(['gateway', gatewayId]);
    expect(row(table.stdout, 'ready')?.[1]).toMatch(/^no \(retrying\): \S/);
    expect(row(table.stdout, 'backlog')?.[1]).toMatch(/^9 records, \d+ B, oldest \d+s$/);
    expect(row(table.stdout, 'backlog by device')?.[1]).toBe('dev-a 5, dev-b 3, dev-c 1');
    expect(row(table.stdout, 'devices')?.[1]).toMatch(/^3 active, 0 silent for more than 15m00s$/);
    expect(row(table.stdout, 'received')).toEqual(['received', '9']);
    expect(row(table.stdout, 'forwarded')).toEqual(['forwarded', '0']);
    expect(row(table.stdout, 'storage')?.[1]).toMatch(/^\d+(\.\d+)? (B|KiB|MiB)$/);
    // a field the table has no row of its own for is listed by its name
    expect(row(table.stdout, 'group commits')?.[1]).toMatch(/^[1-9]\d*$/);

    const json = await run(['status', '--url', url, '--json']);
    expect(json.code).toBe(1);
    const parsed = JSON.parse(json.stdout) as { status: { gatewayId: string; backlog: number }; readiness: { status: string; reason: string } };
    expect(parsed.status).toMatchObject({ gatewayId, backlog: 9 });
    expect(parsed.readiness.reason).toBeTruthy();
    expect(row(table.stdout, 'ready')?.[1]).toContain(parsed.readiness.status);
  });

  it('status: a gateway forwarding to Kafka is ready (exit 0)', async () => {
    const { gw, url, dir } = await gateway();
    await until('the gateway ready', async () => (await run(['status', '--url', url])).code === 0, 60_000, 200);
    await publishAcked(gw.url, 'dev-r', [reading('dev-r', 'boot-1', 1), reading('dev-r', 'boot-1', 2)]);
    let last = { code: -1, stdout: '', stderr: '' };
    await until(
      'both readings forwarded',
      async () => {
        last = await run(['status', '--url', url]);
        return row(last.stdout, 'forwarded')?.[1] === '2';
      },
      60_000,
      200,
    );
    expect(last.code).toBe(0);
    expect(row(last.stdout, 'ready')).toEqual(['ready', 'yes']);
    expect(row(last.stdout, 'forwarder')).toEqual(['forwarder', 'forwarding']);
    expect(row(last.stdout, 'backlog')).toEqual(['backlog', '0 records']);
    // and the log agrees: nothing after the forward position
    const backlog = JSON.parse((await run(['backlog', '--dir', join(dir, 'data'), '--json'])).stdout) as BacklogSummary;
    expect(backlog).toMatchObject({ records: 0, devices: 0, top: [] });
    expect(backlog.position).toBeGreaterThanOrEqual(2);
  });

  it('status: an endpoint that does not answer exits 2 naming the URL and the cause', async () => {
    const port = (await freePort()) as number;
    const closed = await run(['status', '--url', `http://127.0.0.1:${port}`]);
    expect(closed.code).toBe(2);
    expect(closed.stdout).toBe('');
    expect(closed.stderr).toContain(`EB_ERR_ADMIN_UNREACHABLE: cannot reach http://127.0.0.1:${port}/`);
    expect(closed.stderr).toContain('ECONNREFUSED: is the gateway running? is admin.enabled true?');

    const file = join(tmp(), 'no-admin.yaml');
    writeFileSync(file, stringify({ ...testConfig({ dir: tmp(), topic: 't', brokers: ['127.0.0.1:9092'] }), admin: { enabled: false } }));
    const disabled = await run(['status', '-c', file]);
    expect(disabled.code).toBe(2);
    expect(disabled.stderr).toContain(`admin.enabled is false in ${file}`);

    const badUrl = await run(['status', '--url', 'not a url']);
    expect(badUrl.code).toBe(2);
    expect(badUrl.stderr).toContain("option '--url <url>' argument 'not a url' is invalid");
  });
});
