import { describe, expect, it } from 'vitest';
import { formatAge, formatBytes, formatTable, printable } from '../../src/cli-format.js';
import { statusRows, type StatusBody } from '../../src/cli-status.js';

describe('CLI formatting', () => {
  it('ages in two units at most', () => {
    expect([0, 45.9, 60, 192, 3599, 3600, 7500, 86_399, 86_400 + 4 * 3600 + 59].map(formatAge)).toEqual([
      '0s', '45s', '1m00s', '3m12s', '59m59s', '1h00m', '2h05m', '23h59m', '1d04h',
    ]);
    expect(formatAge(-3)).toBe('0s'); // a clock that went back
  });

  it('bytes in binary units', () => {
    expect([0, 1023, 1024, 1536, 10 * 1024 * 1024 + 300 * 1024, 3 * 1024 ** 3].map(formatBytes)).toEqual([
      '0 B', '1023 B', '1.00 KiB', '1.50 KiB', '10.3 MiB', '3.00 GiB',
    ]);
  });

  it('tables: columns aligned, numbers right, no trailing blanks, line breaks in cells flattened', () => {
    expect(formatTable([['DEVICE', 'RECORDS'], ['a', '5'], ['long-name', '12,345'], ['x\ny', '1']], [1])).toBe(
      'DEVICE     RECORDS\n' + 'a                5\n' + 'long-name   12,345\n' + 'x y              1\n',
    );
  });
});

describe('edgebridge status rows', () => {
  // a partial mqtt object: an older or newer gateway's /status may not match this version's type
  const status = {
    gatewayId: 'gw-1',
    forwarder: 'retrying',
    forwarderError: 'Connection error: connect ECONNREFUSED 127.0.0.1:9092',
    logWritable: true,
    backlog: 1234,
    backlogOldestAgeSeconds: 192,
    storageBytes: 1536,
    mqttClients: 2,
    received: 1234,
    droppedOverflow: 0,
    droppedExpired: 3,
    droppedRejected: 0,
    mqtt: { loginsFailed: 2, oversized: 0 },
    lastOffset: 1234,
  } as StatusBody;
  const notReady = { code: 503, body: { status: 'retrying', reason: 'Connection error' } };

  it('known fields in rows of their own, the others by name', () => {
    expect(Object.fromEntries(statusRows(status, notReady))).toEqual({
      gateway: 'gw-1',
      ready: 'no (retrying): Connection error',
      forwarder: 'retrying: Connection error: connect ECONNREFUSED 127.0.0.1:9092',
      log: 'writable',
      backlog: '1,234 records, oldest 3m12s',
      storage: '1.50 KiB',
      'mqtt clients': '2',
      received: '1,234',
      dropped: '3 (expired 3)',
      'mqtt refused': 'logins failed 2',
      'last offset': '1,234',
    });
  });

  it('fields added by a newer gateway show up: numbers, flags, text and flat objects', () => {
    const newer = { ...status, devicesConnected: 7, flushing: true, pump: { state: 'idle', rate: 12.5 }, hosts: ['a'] };
    const rows = Object.fromEntries(statusRows(newer, { code: 200, body: { status: 'ready' } }));
    expect(rows).toMatchObject({ ready: 'yes', 'devices connected': '7', flushing: 'yes', pump: 'state idle, rate 12.5' });
    expect(rows).not.toHaveProperty('hosts'); // a list is left to --json
  });

  it('the drain, devices, transactions, backlog bytes and the last problem get rows of their own', () => {
    const now = Date.now();
    const rows = Object.fromEntries(
      statusRows(
        {
          ...status,
          backlog: 30,
          startedAt: now - 125_000,
          transactions: 12,
          transactionsFailed: 1,
          drain: { startedAt: now - 4000, done: 100, total: 400, remaining: 300, ratePerSecond: 25, etaSeconds: 12 },
          devices: { active: 2, silent: 1, silentAfterSeconds: 900, topByRate: [], silentDevices: [{ deviceId: 'c', silentSeconds: 1000, seenSinceStart: true }], truncated: false },
          errors: [{ at: now - 3000, level: 'warn', code: 'EB_ERR_FORWARD_KAFKA', message: 'kafka unreachable', detail: undefined, count: 4 }],
          backlogDetail: { bytes: 2048, estimated: false, devices: 2, readAt: now, topDevices: [{ deviceId: 'a', records: 20, bytes: 1000, oldestAgeSeconds: 9 }, { deviceId: 'b', records: 10, bytes: 1048, oldestAgeSeconds: 8 }] },
        },
        { code: 200, body: { status: 'ready' } },
      ),
    );
    expect(rows).toMatchObject({
      up: '2m05s',
      draining: '100 of 400 (25%), 25/s, about 12s to go',
      devices: '2 active, 1 silent for more than 15m00s (c)',
      'kafka transactions': '12 committed, 1 failed',
      'backlog by device': 'a 20, b 10',
      'last problem': '3s ago: EB_ERR_FORWARD_KAFKA kafka unreachable (4 times)',
    });
    expect(rows.backlog).toMatch(/^30 records, 2\.00 KiB/);
    for (const key of ['drain', 'errors', 'routes', 'backlog detail', 'started at']) expect(rows).not.toHaveProperty(key);
  });

  it('a /readyz that is neither 200 nor 503 is reported as such', () => {
    expect(Object.fromEntries(statusRows({ gatewayId: 'gw-1' }, { code: 404, body: {} })).ready).toBe('unknown: GET /readyz answered HTTP 404');
  });
});

describe('printable: what devices named reaches a terminal only as text', () => {
  it('escapes C0, DEL and C1 control characters (an escape sequence in a device ID cannot clear the screen or forge rows)', () => {
    expect(printable('x\u001b[2J\u001b]0;owned\u0007\u001b[1A\u009bdev')).toBe('x\\x1b[2J\\x1b]0;owned\\x07\\x1b[1A\\x9bdev');
    expect(printable('tab\there\u007f')).toBe('tab\\x09here\\x7f');
    expect(printable('line one\r\n  line two')).toBe('line one line two');
    expect(printable('sensor-ü-7')).toBe('sensor-ü-7');
    expect(formatTable([['dev\u001b[2K', '1']])).toBe('dev\\x1b[2K  1\n');
    // a literal backslash-x in an ID does not look like an escaped control character
    expect(printable('a\\x1b')).toBe('a\\\\x1b');
    // bidirectional overrides cannot reorder a cell
    expect(printable('abc\u202edef')).toBe('abc\\u202edef');
  });
});
