import { join } from 'node:path';
import Database from 'better-sqlite3';
import mqtt from 'mqtt';
import { describe, expect, it } from 'vitest';
// @ts-expect-error plain ESM script
import { freePort } from '../../scripts/kafka.mjs';
import { DB_FILE } from '../../src/log/commit-log.js';
import { testConfig } from '../helpers/gateway.js';
import { spawnGateway } from '../helpers/process.js';
import { useTmpDirs } from '../helpers/tmp.js';

describe('durability contract: PUBACK only after the message is in SQLite', () => {
  const tmp = useTmpDirs();

  it('every PUBACKed message is in the log after kill -9, across repeated kills', async () => {
    const dir = tmp();
    // Kafka is unreachable on purpose: the records stay in the log, where the test can see them.
    const deadBroker = `127.0.0.1:${await freePort()}`;
    const config = testConfig({ dir: join(dir, 'data'), topic: 'iot.durable', brokers: [deadBroker] });
    const acked = new Map<string, string>(); // payload -> topic
    const published = new Set<string>();

    for (let round = 0; round < 3; round++) {
      const gw = await spawnGateway(config, dir);
      const client = await mqtt.connectAsync(gw.url, { clientId: `durable-${round}`, reconnectPeriod: 0 });
      client.on('error', () => undefined);
      const killAfter = 200 + round * 150;
      let ackedThisRound = 0;
      // Pipeline many QoS 1 publishes, then SIGKILL the gateway the moment the Nth PUBACK arrives.
      for (let i = 0; i < 3000; i++) {
        const topic = `devices/dev-${i % 7}/telemetry`;
        const payload = JSON.stringify({ round, i, ts: Date.now() });
        published.add(payload);
        client.publish(topic, payload, { qos: 1 }, (err) => {
          if (err) return;
          acked.set(payload, topic);
          if (++ackedThisRound === killAfter) gw.child.kill('SIGKILL');
        });
      }
      expect(await gw.exited).toBeNull(); // killed by the signal
      client.end(true);
      expect(ackedThisRound).toBeGreaterThanOrEqual(killAfter);
    }

    const db = new Database(join(dir, 'data', DB_FILE), { readonly: true });
    const rows = db.prepare('SELECT mqtt_topic, device_id, payload FROM records ORDER BY log_offset').all() as {
      mqtt_topic: string;
      device_id: string;
      payload: Buffer;
    }[];
    db.close();
    const stored = new Map(rows.map((r) => [r.payload.toString('utf8'), r.mqtt_topic]));
    const missing = [...acked.keys()].filter((p) => !stored.has(p));
    expect(missing, `${missing.length} acknowledged messages are not in the log`).toEqual([]);
    for (const [payload, topic] of acked) expect(stored.get(payload)).toBe(topic);
    // and nothing appears in the log that was never published, or twice
    const strangers = rows.map((r) => r.payload.toString('utf8')).filter((p) => !published.has(p));
    expect(strangers, 'records in the log that were never published').toEqual([]);
    expect(new Set(rows.map((r) => r.payload.toString())).size).toBe(rows.length);
  });
});
