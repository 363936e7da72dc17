import mqtt from 'mqtt';
import { describe, expect, it } from 'vitest';
import { startTestGateway, uniqueName } from '../helpers/gateway.js';
import { untilValue } from '../helpers/raw-mqtt.js';
import { useCleanups, useTmpDirs } from '../helpers/tmp.js';

interface Probe {
  readonly code: number;
  readonly body: { status: string; reason?: string; backlog: number; backlogOldestAgeSeconds: number };
}

describe('readiness and backlog age (issue 10, first step)', () => {
  const tmp = useTmpDirs();
  const cleanup = useCleanups();

  async function gateway(brokers?: string[]) {
    const gw = await startTestGateway({ dir: tmp(), topic: uniqueName('iot.ready'), ...(brokers ? { brokers } : {}) });
    cleanup(() => gw.close());
    const get = async (path: string) => {
      const res = await fetch(`http://127.0.0.1:${gw.adminAddress!.port}${path}`);
      return { code: res.status, body: (await res.json()) as Probe['body'] } satisfies Probe;
    };
    const metric = async (name: string) => {
      const text = await (await fetch(`http://127.0.0.1:${gw.adminAddress!.port}/metrics`)).text();
      return Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN);
    };
    const publish = async (seq: number) => {
      const client = await mqtt.connectAsync(gw.url, { clientId: `ready-${seq}`, reconnectPeriod: 0 });
      await client.publishAsync('devices/d1/telemetry', JSON.stringify({ bootId: 'b', seq }), { qos: 1 });
      await client.endAsync();
    };
    return { gw, get, metric, publish };
  }

  it('without Kafka: healthy but not ready (503 with the reason), and the backlog ages', async () => {
    const { get, metric, publish } = await gateway(['127.0.0.1:1']);
    const notReady = await get('/readyz');
    expect(notReady.code).toBe(503);
    expect(notReady.body.reason).toBeTruthy();
    expect((await get('/healthz')).code).toBe(200);
    await publish(1);
    const aged = await untilValue('the backlog to be a second old', () => get('/readyz'), (p) => p.body.backlogOldestAgeSeconds >= 1);
    expect(aged).toMatchObject({ code: 503, body: { backlog: 1 } });
    expect(await metric('edgebridge_backlog_oldest_age_seconds')).toBeGreaterThanOrEqual(1);
  });

  it('with Kafka: ready once forwarding, and the backlog age back to 0 after a reading is forwarded', async () => {
    const { get, metric, publish } = await gateway();
    await untilValue('ready', () => get('/readyz'), (p) => p.code === 200);
    await publish(1);
    const drained = await untilValue('the reading forwarded', () => get('/readyz'), (p) => p.body.backlog === 0);
    expect(drained).toMatchObject({ code: 200, body: { status: 'ready', backlogOldestAgeSeconds: 0 } });
    expect(await metric('edgebridge_backlog_oldest_age_seconds')).toBe(0);
  });
});
