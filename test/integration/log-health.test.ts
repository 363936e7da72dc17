import mqtt from 'mqtt';
import { describe, expect, it, vi } from 'vitest';
import { logError } from '../../src/log/database.js';
import { startTestGateway, uniqueName } from '../helpers/gateway.js';
import { useCleanups, useTmpDirs } from '../helpers/tmp.js';

describe('a commit log that cannot be written shows in health', () => {
  const tmp = useTmpDirs();
  const cleanup = useCleanups();

  it('corruption found while running: no PUBACK, /healthz 503 with the reason; back to 200 once appends succeed', async () => {
    const gw = await startTestGateway({ dir: tmp(), topic: uniqueName('iot.health') });
    cleanup(() => gw.close());
    const health = async () => {
      const res = await fetch(`http://127.0.0.1:${gw.adminAddress!.port}/healthz`);
      return { code: res.status, body: (await res.json()) as { status: string; reason?: string } };
    };
    expect((await health()).code).toBe(200);
    const append = vi.spyOn(gw.log, 'append').mockImplementation(() => {
      throw logError('EB_ERR_LOG_WRITE', gw.log.file, 'append', Object.assign(new Error('database disk image is malformed'), { code: 'SQLITE_CORRUPT' }));
    });
    const client = await mqtt.connectAsync(gw.url, { clientId: 'health-1', reconnectPeriod: 0 });
    client.on('error', () => undefined);
    const closed = new Promise<string>((resolve) => client.once('close', () => resolve('closed without a PUBACK')));
    const acked = client.publishAsync('devices/d1/telemetry', '{"bootId":"b","seq":1}', { qos: 1 }).then(() => 'acknowledged');
    expect(await Promise.race([closed, acked])).toBe('closed without a PUBACK');
    client.end(true);
    expect(gw.status()).toMatchObject({ logWritable: false, refused: 1, received: 0 });
    const sick = await health();
    expect(sick.code).toBe(503);
    expect(sick.body.status).toBe('log-unwritable');
    expect(sick.body.reason).toContain('corrupt');

    append.mockRestore();
    const again = await mqtt.connectAsync(gw.url, { clientId: 'health-2', reconnectPeriod: 0 });
    await again.publishAsync('devices/d1/telemetry', '{"bootId":"b","seq":1}', { qos: 1 });
    await again.endAsync();
    expect(gw.status()).toMatchObject({ logWritable: true, received: 1 });
    expect((await health()).code).toBe(200);
  });
});
