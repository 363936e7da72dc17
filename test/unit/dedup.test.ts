import { describe, expect, it } from 'vitest';
import { dedupMark, type PublishIdentity } from '../../src/ingress/dedup.js';
import { UnstoredSends } from '../../src/log/unstored-sends.js';
import { compileRoute } from '../../src/ingress/routes.js';

const route = compileRoute({
  mqtt: 'devices/{deviceId}/telemetry',
  kafka: 't',
  dedup: { fields: ['bootId', 'seq'], window: 60_000 },
});
const publish = (payload: string, extra: Partial<PublishIdentity> = {}): PublishIdentity => ({
  clientId: 'c1',
  messageId: 7,
  qos: 1,
  dup: false,
  payload: Buffer.from(payload),
  ...extra,
});
const reading = (seq: number, bootId = 'b1', more = '') => `{"bootId":"${bootId}","seq":${seq}${more}}`;

describe('dedup identity', () => {
  it('is the same for a replay, whatever the packet, client or other fields', () => {
    const a = dedupMark(route, 'd1', publish(reading(5, 'b1', ',"t":1')))!;
    const b = dedupMark(route, 'd1', publish(reading(5, 'b1', ',"t":2'), { clientId: 'other', messageId: 99, dup: true }))!;
    expect(a.mode).toBe('window');
    expect(a.key.equals(b.key)).toBe(true);
    expect(a.counter!.stream.equals(b.counter!.stream)).toBe(true);
    expect(a.counter!.value).toBe(5);
    expect(a.windowMs).toBe(60_000);
  });

  it('names a counter stream by route, device and the fields before the counter', () => {
    const stream = (deviceId: string, payload: string, r = route) => dedupMark(r, deviceId, publish(payload))!.counter!.stream.toString('hex');
    expect(stream('d1', reading(5))).toBe(stream('d1', reading(900)));
    const streams = new Set([stream('d1', reading(5)), stream('d2', reading(5)), stream('d1', reading(5, 'b2'))]);
    expect(streams.size).toBe(3);
    const other = compileRoute({ mqtt: 'sensors/{deviceId}', kafka: 't', dedup: { fields: ['bootId', 'seq'], window: 60_000 } });
    expect(stream('d1', reading(5), other)).not.toBe(stream('d1', reading(5)));
    // a single id field is no counter unless the route says so (a random message id, a counter
    // that restarts at boot): exact by default; with mode: window the stream is the device
    const single = compileRoute({ mqtt: 'x/{deviceId}', kafka: 't', dedup: { fields: ['n'], window: 60_000 } });
    expect([dedupMark(single, 'd1', publish('{"n":3}'))!.mode, dedupMark(single, 'd1', publish('{"n":3}'))!.counter!.value]).toEqual(['check', 3]);
    const opted = compileRoute({ mqtt: 'x/{deviceId}', kafka: 't', dedup: { fields: ['n'], mode: 'window', window: 60_000 } });
    expect(dedupMark(opted, 'd1', publish('{"n":3}'))!.mode).toBe('window');
  });

  it('keeps a per-reading key where the counter is no non-negative integer, or the route asks for exact', () => {
    for (const seq of ['"a"', 'true', '-5']) {
      const mark = dedupMark(route, 'd1', publish(`{"bootId":"b1","seq":${seq}}`))!;
      expect([mark.mode, mark.counter]).toEqual(['check', undefined]);
    }
    const exact = compileRoute({ mqtt: 'x/{deviceId}', kafka: 't', dedup: { fields: ['bootId', 'seq'], mode: 'exact', window: 60_000 } });
    const mark = dedupMark(exact, 'd1', publish(reading(5)))!;
    // exact mode still carries the counter, so readings remembered by window mode are checked too
    expect([mark.mode, mark.counter?.value]).toEqual(['check', 5]);
  });

  it('differs by device, boot and seq', () => {
    const key = (deviceId: string, payload: string) => dedupMark(route, deviceId, publish(payload))!.key.toString('hex');
    const keys = new Set([key('d1', reading(5)), key('d2', reading(5)), key('d1', reading(5, 'b2')), key('d1', reading(6))]);
    expect(keys.size).toBe(4);
  });

  it('needs every identity field: a payload with seq but no bootId is deduplicated only on DUP retransmits', () => {
    // a sensor whose counter restarts at boot and that sends no bootId: seq alone is no identity
    const readings = ['{"seq":1,"t":20.1}', '{"seq":1,"t":20.2}', '{"seq":1,"t":20.3}'].map((p, i) =>
      dedupMark(route, 'd1', publish(p, { messageId: i + 1 })),
    );
    expect(readings.map((m) => m!.mode)).toEqual(['remember', 'remember', 'remember']);
    expect(new Set(readings.map((m) => m!.key.toString('hex'))).size).toBe(3);
    expect(dedupMark(route, 'd1', publish('{"bootId":null,"seq":1}'))!.mode).toBe('remember');
  });

  it('orders a device stream by seq, so index inserts stay local', () => {
    const keys = [1, 2, 9, 10, 11, 100, 1000].map((seq) => dedupMark(route, 'd1', publish(reading(seq)))!.key);
    const sorted = [...keys].sort(Buffer.compare);
    expect(sorted).toEqual(keys);
  });

  it('falls back to DUP-only dedup when no identity field is present', () => {
    const first = dedupMark(route, 'd1', publish('21.5'))!;
    const retransmit = dedupMark(route, 'd1', publish('21.5', { dup: true }))!;
    expect(first.mode).toBe('remember');
    expect(retransmit.mode).toBe('check');
    expect(first.key.equals(retransmit.key)).toBe(true);
    // packet ids are reused: DUP-only keys are remembered for the short retransmit window
    const dayRoute = compileRoute({ mqtt: 'x/{deviceId}', kafka: 't', dedup: { fields: ['seq'], window: 86400e3, retransmitWindow: 30_000 } });
    expect(dedupMark(dayRoute, 'd1', publish('21.5'))!.windowMs).toBe(30_000);
    expect(dedupMark(dayRoute, 'd1', publish('{"seq":1}'))!.windowMs).toBe(86400e3);
    expect(dedupMark(route, 'd1', publish('21.5', { messageId: 8 }))!.key.equals(first.key)).toBe(false);
    expect(dedupMark(route, 'd1', publish('{"other":1}'))!.mode).toBe('remember');
    expect(dedupMark(route, 'd1', publish('21.5', { qos: 0, messageId: undefined }))).toBeUndefined();
  });

  it('keeps DUP-only keys apart by device: a client id another device used first is no identity', () => {
    // Device d2's retransmit on client id c1 must not match what device d1 sent on c1 before.
    expect(dedupMark(route, 'd1', publish('OPEN'))!.key.equals(dedupMark(route, 'd2', publish('OPEN', { dup: true }))!.key)).toBe(false);
  });

  it('is off when the route says dedup: false', () => {
    const off = compileRoute({ mqtt: 'x/{deviceId}', kafka: 't', dedup: false });
    expect(dedupMark(off, 'd1', publish(reading(1)))).toBeUndefined();
  });

  it('takes no identity from an integer beyond 2^53: JSON would round distinct counters to one', () => {
    // snowflake-style seqs: 1541815603606036480, …481, …482 parse to the same double
    const marks = ['480', '481', '482'].map((tail, i) =>
      dedupMark(route, 'd1', publish(`{"bootId":"b1","seq":1541815603606036${tail}}`, { messageId: i + 1 })),
    );
    expect(marks.map((m) => m!.mode)).toEqual(['remember', 'remember', 'remember']);
    expect(new Set(marks.map((m) => m!.key.toString('hex'))).size).toBe(3);
    // as strings they are exact identities
    const strings = ['480', '481', '482'].map((tail) => dedupMark(route, 'd1', publish(`{"bootId":"b1","seq":"1541815603606036${tail}"}`))!);
    expect(strings.map((m) => m.mode)).toEqual(['check', 'check', 'check']);
    expect(new Set(strings.map((m) => m.key.toString('hex'))).size).toBe(3);
    expect(dedupMark(route, 'd1', publish(reading(Number.MAX_SAFE_INTEGER)))!.mode).toBe('window');
  });

  it('takes identity only from values JSON carries exactly: strings, booleans, safe integers', () => {
    const mode = (seq: string) => dedupMark(route, 'd1', publish(`{"bootId":"b1","seq":${seq}}`))!.mode;
    expect(['"a"', 'true', '-5', '0', '42'].map(mode)).toEqual(['check', 'check', 'check', 'window', 'window']);
    // rounded or unbounded: 1e400 and 2e400 are both Infinity; a fraction may be rounded; nested
    // values may hold either (and a deeply nested one must not crash the key encoding)
    const deep = `${'['.repeat(30_000)}1${']'.repeat(30_000)}`;
    for (const seq of ['1e400', '-1e400', '2.5', '[1541815603606036480]', '{"b":1}', deep]) {
      expect(mode(seq), seq.slice(0, 20)).toBe('remember');
    }
    expect(dedupMark(route, 'd1', publish(reading(-1)))!.key.equals(dedupMark(route, 'd1', publish(reading(1)))!.key)).toBe(false);
  });
});

describe('unstored first sends', () => {
  const first = () => dedupMark(route, 'd1', publish('OPEN', { messageId: 1 }))!;
  const resend = () => dedupMark(route, 'd1', publish('OPEN', { messageId: 1, dup: true }))!;

  it('stores the DUP resend of a first send the log refused', () => {
    const unstored = new UnstoredSends();
    unstored.settled(unstored.resolve(first()), false);
    const mark = unstored.resolve(resend());
    expect(mark!.mode).toBe('remember');
    unstored.settled(mark, true);
    expect(unstored.size).toBe(0);
    // a later retransmit of that stored resend is a retransmit again
    expect(unstored.resolve(resend())!.mode).toBe('check');
  });

  it('leaves retransmits of stored first sends to the index', () => {
    const unstored = new UnstoredSends();
    unstored.settled(unstored.resolve(first()), true);
    expect(unstored.resolve(resend())!.mode).toBe('check');
    // a refused resend of a stored packet was stored before: still a retransmit
    unstored.settled(resend(), false);
    expect(unstored.size).toBe(0);
  });

  it('is bounded', () => {
    const unstored = new UnstoredSends(3);
    for (let id = 1; id <= 5; id++) unstored.settled(dedupMark(route, 'd1', publish('x', { messageId: id })), false);
    expect(unstored.size).toBe(3);
    expect(unstored.resolve(dedupMark(route, 'd1', publish('x', { messageId: 1, dup: true })))!.mode).toBe('check');
    expect(unstored.resolve(dedupMark(route, 'd1', publish('x', { messageId: 5, dup: true })))!.mode).toBe('remember');
  });
});
