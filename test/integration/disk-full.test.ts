import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, statfsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import mqtt from 'mqtt';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
// @ts-expect-error plain ESM script
import { freePort } from '../../scripts/kafka.mjs';
import { parseConfig } from '../../src/config/load.js';
import { Gateway } from '../../src/gateway.js';
import { DB_FILE } from '../../src/log/commit-log.js';
import { testConfig } from '../helpers/gateway.js';

/**
 * A real full disk: the commit log lives on a 6 MiB tmpfs (CI runs as root, which mount needs),
 * filled up by a ballast file that is deleted later to give the space back.
 */
describe('disk full', () => {
  const mountPoint = mkdtempSync(join(tmpdir(), 'edgebridge-small-fs-'));
  beforeAll(() => {
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=6m', 'tmpfs', mountPoint]);
    } catch (err) {
      throw new Error(`the disk-full test needs a small filesystem: mount -t tmpfs failed (run as root): ${(err as Error).message}`);
    }
  });
  afterAll(() => {
    execFileSync('umount', [mountPoint]);
    rmSync(mountPoint, { recursive: true, force: true });
  });

  it('stops acknowledging, logs one error, loses nothing acknowledged, and recovers when space returns', async () => {
    const logLines: { level: number; msg: string }[] = [];
    const logger = pino({ level: 'info' }, { write: (line: string) => logLines.push(JSON.parse(line)) });
    const config = parseConfig(
      testConfig({
        dir: join(mountPoint, 'data'),
        topic: 'iot.diskfull',
        brokers: [`127.0.0.1:${await freePort()}`], // Kafka away: nothing is removed from the log
      }),
    );
    const gw = await Gateway.start(config, { logger, statusIntervalMs: 0 });
    const url = `mqtt://127.0.0.1:${gw.mqttAddress.port}`;
    // Leave ~1.5 MiB free for the log.
    const free = () => {
      const s = statfsSync(mountPoint);
      return s.bavail * s.bsize;
    };
    const ballast = join(mountPoint, 'ballast');
    writeFileSync(ballast, Buffer.alloc(Math.max(0, free() - 1.5 * 1024 * 1024)));

    const acked: string[] = [];
    let i = 0;
    // One publish on a connection of its own: true when PUBACKed, false when the gateway closed
    // the connection instead (it refuses what it cannot store, before or after CONNACK). Decided
    // by events, never by a timeout: a slow machine only makes it slower.
    const publishOne = async (): Promise<boolean> => {
      const payload = JSON.stringify({ deviceId: 'f1', bootId: 'b', seq: ++i, pad: 'x'.repeat(2000) });
      const client = mqtt.connect(url, { clientId: `filler-${i}`, reconnectPeriod: 0 });
      client.on('error', () => undefined);
      try {
        return await new Promise<boolean>((resolve) => {
          client.once('close', () => resolve(false));
          client.once('connect', () =>
            client.publish('devices/f1/telemetry', payload, { qos: 1 }, (err) => {
              if (!err) acked.push(payload);
              resolve(!err);
            }),
          );
        });
      } finally {
        client.end(true);
      }
    };
    // Publish until the disk refuses; the gateway must not acknowledge what it could not store.
    while ((await publishOne()) && i < 5000);
    expect(i).toBeLessThan(5000);
    expect(gw.status().refused).toBeGreaterThan(0);
    const ackedWhileFull = acked.length;
    // a few more attempts while full: still refused, and no log flood
    for (let k = 0; k < 5; k++) expect(await publishOne()).toBe(false);
    expect(acked.length).toBe(ackedWhileFull);
    const errors = logLines.filter((l) => l.msg.startsWith('commit log cannot store messages'));
    expect(errors).toHaveLength(1);

    // Space comes back: the device's retransmits and new publishes are stored and acknowledged.
    rmSync(ballast);
    await expect.poll(() => publishOne(), { timeout: 20_000, interval: 200 }).toBe(true);
    for (let k = 0; k < 20; k++) expect(await publishOne()).toBe(true);
    expect(logLines.some((l) => l.msg === 'commit log stores messages again')).toBe(true);
    await gw.close();

    // Every acknowledged message is in the log.
    const db = new Database(join(mountPoint, 'data', DB_FILE), { readonly: true });
    const stored = new Set(
      (db.prepare('SELECT payload FROM records').all() as { payload: Buffer }[]).map((r) => r.payload.toString()),
    );
    db.close();
    const missing = acked.filter((p) => !stored.has(p));
    expect(missing).toEqual([]);
    expect(acked.length).toBeGreaterThan(ackedWhileFull);
  });
});
