import { spawn } from 'node:child_process';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import mqtt from 'mqtt';
import { afterEach, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/schema.js';
import { DB_FILE } from '../../src/log/database.js';
import { testConfig, uniqueName } from '../helpers/gateway.js';
import { mosquittoTool } from '../helpers/mosquitto.js';
import { spawnGateway, type GatewayProcess } from '../helpers/process.js';
import { until as untilWithin } from '../helpers/raw-mqtt.js';
import { useTmpDirs } from '../helpers/tmp.js';

/** Runs a program to its end; its output and exit code. */
function run(command: string, args: string[], timeoutMs: number): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${command} ${args.join(' ')} did not finish in ${timeoutMs} ms; output: ${out}`));
    }, timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

/** Counts rows in the gateway's database (a reader beside the running gateway, as WAL allows). */
function countRows(dir: string, sql: string, ...params: unknown[]): number {
  const db = new Database(join(dir, DB_FILE), { readonly: true, fileMustExist: true });
  try {
    return (db.prepare(sql).pluck().get(...params) as number) ?? 0;
  } finally {
    db.close();
  }
}

/** Waits for a condition (raw-mqtt.ts's `until`), with this file's deadline. */
const until = (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 30_000): Promise<void> => untilWithin(what, check, timeoutMs, 100);

describe('MQTT sessions in the commit log database', () => {
  const tmp = useTmpDirs();
  let gw: GatewayProcess | undefined;

  afterEach(async () => {
    if (gw && gw.child.exitCode === null && gw.child.signalCode === null) {
      gw.child.kill('SIGKILL');
      await gw.exited;
    }
    gw = undefined;
  });

  it("passes aedes-persistence's abstract test suite", async () => {
    const suite = join(import.meta.dirname, '..', 'persistence', 'aedes-abstract.mjs');
    const { code, out } = await run(process.execPath, ['--test', suite], 240_000);
    const count = (name: string) => Number(new RegExp(`^# ${name} (\\d+)$`, 'm').exec(out)?.[1] ?? NaN);
    expect({ code, pass: count('pass'), fail: count('fail') }, out.split('\n').filter((l) => l.startsWith('not ok')).join('\n')).toEqual({
      code: 0,
      pass: count('tests'),
      fail: 0,
    });
    expect(count('tests')).toBeGreaterThanOrEqual(50);
  });

  it('a retained message and QoS 1 messages queued for an offline persistent session survive a SIGKILL (mosquitto_sub as the subscriber)', async () => {
    const dir = tmp();
    const config: ConfigInput = testConfig({ dir, topic: uniqueName('iot.sessions'), brokers: ['127.0.0.1:1'] });
    const sub = mosquittoTool('mosquitto_sub');
    gw = await spawnGateway(config, dir);

    // A persistent session subscribes and goes away; a clean session subscribes and stays.
    const first = await run(sub, ['-h', '127.0.0.1', '-p', String(gw.port), '-i', 'ops-console', '-c', '-q', '1', '-t', 'site/alerts/#', '-E'], 20_000);
    expect(first.code).toBe(0);
    const clean = await mqtt.connectAsync(gw.url, { clientId: 'clean-watcher', clean: true, reconnectPeriod: 0 });
    await clean.subscribeAsync('site/alerts/#', { qos: 1 });

    const pub = await mqtt.connectAsync(gw.url, { clientId: 'sensor-9', reconnectPeriod: 0 });
    await pub.publishAsync('site/alerts/door', 'queued-1', { qos: 1 });
    await pub.publishAsync('site/alerts/smoke', 'queued-2', { qos: 1 });
    await pub.publishAsync('site/state', 'on', { qos: 1, retain: true });
    await pub.endAsync();
    // aedes acknowledges a local publish before it queues it for offline subscribers: wait until
    // both are in the database, then kill.
    await until('the queued messages and the retained one in the database', () =>
      countRows(dir, "SELECT count(*) FROM session_queue WHERE client_id = 'ops-console'") === 2 &&
      countRows(dir, "SELECT count(*) FROM retained WHERE topic = 'site/state'") === 1,
    );
    expect(countRows(dir, "SELECT count(*) FROM session_subscriptions WHERE client_id = 'clean-watcher'")).toBe(0);

    gw.child.kill('SIGKILL');
    await gw.exited;
    clean.end(true);
    gw = await spawnGateway(config, dir);

    // The persistent session is back: its queued messages come once each, in order.
    const again = await run(sub, ['-h', '127.0.0.1', '-p', String(gw.port), '-i', 'ops-console', '-c', '-q', '1', '-t', 'site/alerts/#', '-v', '-C', '2', '-W', '30'], 40_000);
    expect(again.out.trim().split('\n')).toEqual(['site/alerts/door queued-1', 'site/alerts/smoke queued-2']);
    await until('the delivered messages to leave the queue', () => countRows(dir, 'SELECT count(*) FROM session_queue') === 0);

    // The retained message is served to a new subscriber.
    const reader = await mqtt.connectAsync(gw.url, { clientId: 'reader', reconnectPeriod: 0 });
    const retained = new Promise<string>((resolve) => reader.on('message', (topic, payload) => resolve(`${topic} ${payload.toString()}`)));
    await reader.subscribeAsync('site/state', { qos: 1 });
    await expect(retained).resolves.toBe('site/state on');
    await reader.endAsync();

    // The clean session's subscription was not restored: nothing is queued for it now.
    const pub2 = await mqtt.connectAsync(gw.url, { clientId: 'sensor-9', reconnectPeriod: 0 });
    await pub2.publishAsync('site/alerts/door', 'after-restart', { qos: 1 });
    await pub2.endAsync();
    await until('the new message queued for the persistent session', () => countRows(dir, "SELECT count(*) FROM session_queue WHERE client_id = 'ops-console'") === 1);
    expect(countRows(dir, "SELECT count(*) FROM session_queue WHERE client_id = 'clean-watcher'")).toBe(0);
  });
});
