import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { AdminServer, type BacklogDetail } from '../../src/admin/server.js';
import type { GatewayStatus } from '../../src/status.js';
import { useCleanups } from '../helpers/tmp.js';
import { sampleStatus } from '../helpers/status.js';

const sample = sampleStatus();

describe('the admin endpoint', () => {
  const cleanup = useCleanups();

  async function serve(status: () => GatewayStatus, storageDir?: string) {
    const server = new AdminServer({ host: '127.0.0.1', port: 0, status, logger: pino({ level: 'silent' }), ...(storageDir ? { storageDir } : {}) });
    const { port } = await server.start();
    cleanup(() => server.close());
    return { server, get: async (path: string) => fetch(`http://127.0.0.1:${port}${path}`) };
  }

  it('every metric of one /metrics comes from one status() (each reads the log and walks the devices on the ingest thread)', async () => {
    let calls = 0;
    const { get } = await serve(() => (calls++, sample));
    const text = await (await get('/metrics')).text();
    expect(text).toContain('edgebridge_backlog_records 20');
    expect(calls).toBe(1);
    // and the health endpoints read the state of now, each its own
    await get('/healthz');
    await get('/readyz');
    expect(calls).toBe(3);
  });

  it('a backlog only in flight (forwarding, under 10 s old) is not read from the log: its bytes are estimated from the records forwarded lately', async () => {
    // before any batch was forwarded there is nothing to estimate from: NaN, not 0
    const { get: getFresh } = await serve(() => ({ ...sample, forwarder: 'retrying', backlog: 5, backlogOldestAgeSeconds: 30 }), mkdtempSync(join(tmpdir(), 'edgebridge-admin-')));
    expect(await (await getFresh('/metrics')).text()).toMatch(/^edgebridge_backlog_bytes Nan$/m);
    const dir = mkdtempSync(join(tmpdir(), 'edgebridge-admin-')); // no log in it: a scan would fail
    let current: GatewayStatus = { ...sample, forwarder: 'forwarding', backlog: 100, backlogOldestAgeSeconds: 1 };
    const { server, get } = await serve(() => current, dir);
    server.observeBatch({ records: 10, bytes: 2_000, seconds: 0.01 });
    const detailOf = async () => ((await (await get('/status')).json()) as { backlogDetail?: BacklogDetail }).backlogDetail;
    expect(await detailOf()).toMatchObject({ estimated: true, bytes: 20_000, topDevices: [] });
    expect(await (await get('/metrics')).text()).toMatch(/^edgebridge_backlog_bytes 20000$/m);
    // an old backlog, or one Kafka does not take, is read from the log (here there is none to
    // read: the scan fails), estimated meanwhile
    current = { ...current, backlogOldestAgeSeconds: 30 };
    expect(await detailOf()).toMatchObject({ estimated: true, bytes: 20_000 });
    expect(await (await get('/metrics')).text()).toMatch(/^edgebridge_backlog_bytes 20000$/m);
    current = { ...current, backlog: 0, backlogOldestAgeSeconds: 0 };
    expect(await detailOf()).toMatchObject({ estimated: false, bytes: 0, devices: 0 });
  });
});
