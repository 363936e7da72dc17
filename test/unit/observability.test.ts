import { Writable } from 'node:stream';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { RecentErrors } from '../../src/admin/recent-errors.js';
import { DrainProgress, type DrainReading } from '../../src/forward/drain-progress.js';
import { Traffic } from '../../src/ingress/traffic.js';
import { createLogger } from '../../src/logger.js';

describe('Traffic: per-route counters and per-device activity', () => {
  it('counts stored and duplicate publishes per route and topic', () => {
    const t = new Traffic({ silentAfterMs: 60_000, clock: () => 0 });
    t.heard('s/{deviceId}/t', 'iot.t', 'a', false);
    t.heard('s/{deviceId}/t', 'iot.t', 'a', true);
    t.heard('s/{deviceId}/t', 'iot.t', 'b', false);
    t.heard('s/{deviceId}/state', 'iot.state', 'a', false);
    expect(t.routeTraffic()).toEqual([
      { route: 's/{deviceId}/t', topic: 'iot.t', stored: 2, duplicates: 1 },
      { route: 's/{deviceId}/state', topic: 'iot.state', stored: 1, duplicates: 0 },
    ]);
  });

  it('ranks devices by their publishes in the past minute and lists the silent ones, longest silent first', () => {
    let now = 1_000_000;
    const t = new Traffic({ silentAfterMs: 120_000, clock: () => now });
    t.heard('r', 't', 'quiet', false);
    now += 10_000;
    t.heard('r', 't', 'dead', false);
    now += 10_000;
    for (let i = 0; i < 30; i++) t.heard('r', 't', 'busy', false);
    for (let i = 0; i < 5; i++) t.heard('r', 't', 'calm', false);
    let a = t.activity(10);
    expect(a.topByRate.map((d) => [d.deviceId, d.perMinute])).toEqual([['busy', 30], ['calm', 5], ['dead', 1], ['quiet', 1]]);
    expect(a).toMatchObject({ active: 4, silent: 0, silentDevices: [] });
    // 150 s later: quiet and dead went silent (dead's last publish is younger); busy kept publishing
    now += 130_000;
    t.heard('r', 't', 'calm', false);
    for (let i = 0; i < 12; i++) t.heard('r', 't', 'busy', false);
    a = t.activity(10);
    expect(a.active).toBe(2);
    expect(a.silent).toBe(2);
    expect(a.silentDevices).toEqual([
      { deviceId: 'quiet', silentSeconds: 150, seenSinceStart: true },
      { deviceId: 'dead', silentSeconds: 140, seenSinceStart: true },
    ]);
    expect(a.topByRate[0]).toMatchObject({ deviceId: 'busy', perMinute: 12 });
  });

  it('the rate is a sliding 60 s estimate: last full minute weighted by how much of it is still inside the window', () => {
    let now = 0;
    const t = new Traffic({ silentAfterMs: 600_000, clock: () => now });
    for (let i = 0; i < 60; i++) t.heard('r', 't', 'd', false); // minute 0
    now = 60_000;
    t.heard('r', 't', 'd', false); // minute 1 starts
    now = 90_000; // half of minute 0 is still inside the past 60 s
    expect(t.activity().topByRate[0]!.perMinute).toBe(31);
    now = 200_000; // minutes without publishes: nothing left
    expect(t.activity().topByRate[0]!.perMinute).toBe(0);
  });

  it('known devices not heard since the start count as silent once the start is longer ago than silentAfter', () => {
    let now = 0;
    const t = new Traffic({ silentAfterMs: 60_000, clock: () => now });
    t.know(['never', 'back']);
    expect(t.activity().silent).toBe(0); // the gateway just started: not silent yet
    now = 61_000;
    t.heard('r', 't', 'back', false);
    const a = t.activity();
    expect(a.silent).toBe(1);
    expect(a.silentDevices).toEqual([{ deviceId: 'never', silentSeconds: 61, seenSinceStart: false }]);
  });

  it('keeps at most maxDevices, forgetting the least recently heard, and says so', () => {
    const t = new Traffic({ silentAfterMs: 60_000, maxDevices: 3, clock: () => 0 });
    for (const id of ['a', 'b', 'c', 'a', 'd']) t.heard('r', 't', id, false);
    const a = t.activity();
    expect(a.topByRate.map((d) => d.deviceId).sort()).toEqual(['a', 'c', 'd']);
    expect(a.truncated).toBe(true);
  });
});

describe('DrainProgress: a backlog forwarded after an outage', () => {
  function capture() {
    const lines: Record<string, unknown>[] = [];
    const stream = new Writable({
      write(chunk, _enc, done) {
        lines.push(JSON.parse(String(chunk)) as Record<string, unknown>);
        done();
      },
    });
    return { lines, logger: pino({ level: 'info' }, stream) };
  }
  const reading = (r: Partial<DrainReading>): DrainReading => ({ forwarding: true, backlog: 0, backlogOldestAgeSeconds: 0, forwarded: 0, received: 0, ...r });

  it('logs the start, done/total/rate/ETA at an interval, and the end; /status shows it meanwhile', async () => {
    const { lines, logger } = capture();
    const p = new DrainProgress({ logger, startAgeSeconds: 10, logIntervalMs: 10_000, rateWindowMs: 10_000 });
    p.update(reading({ forwarding: false, backlog: 5000, backlogOldestAgeSeconds: 120 }), 0); // Kafka still away
    expect(p.drain).toBeUndefined();
    p.update(reading({ backlog: 5000, backlogOldestAgeSeconds: 122, forwarded: 0, received: 0 }), 2_000);
    expect(p.drain).toMatchObject({ done: 0, remaining: 5000, startedAt: 2_000 });
    p.update(reading({ backlog: 3000, backlogOldestAgeSeconds: 80, forwarded: 2_100, received: 100 }), 12_000);
    expect(p.drain).toMatchObject({ done: 2100, total: 5100, remaining: 3000, ratePerSecond: 210, etaSeconds: 15 });
    p.update(reading({ backlog: 0, backlogOldestAgeSeconds: 0, forwarded: 5_200, received: 200 }), 22_000);
    expect(p.drain).toBeUndefined();
    await new Promise((r) => setImmediate(r));
    expect(lines.map((l) => l.msg)).toEqual(['draining backlog: forwarding what was stored while Kafka was unreachable or behind', 'draining backlog', 'backlog drained']);
    expect(lines[1]).toMatchObject({ done: 2100, total: 5100, percent: 41, ratePerSecond: 210, etaSeconds: 15 });
    expect(lines[2]).toMatchObject({ records: 5200, seconds: 20 });
  });

  it('a backlog forwarded at once when Kafka returns (between two readings) still gets its drained line', async () => {
    const { lines, logger } = capture();
    const p = new DrainProgress({ logger, startAgeSeconds: 10 });
    p.update(reading({ forwarding: false, backlog: 30, backlogOldestAgeSeconds: 5, forwarded: 9 }), 0);
    p.update(reading({ forwarding: false, backlog: 30, backlogOldestAgeSeconds: 15, forwarded: 9 }), 10_000);
    p.update(reading({ forwarding: true, backlog: 0, forwarded: 39 }), 12_000);
    await new Promise((r) => setImmediate(r));
    expect(lines.map((l) => [l.msg, l.records])).toEqual([['backlog drained', 30]]);
  });

  it('no ETA while the backlog does not shrink; a small young backlog is no drain', () => {
    const { logger } = capture();
    const p = new DrainProgress({ logger, startAgeSeconds: 10, startRecords: 10_000 });
    p.update(reading({ backlog: 500, backlogOldestAgeSeconds: 1 }), 0);
    expect(p.drain).toBeUndefined();
    p.update(reading({ backlog: 20_000, backlogOldestAgeSeconds: 30 }), 1_000);
    p.update(reading({ forwarding: false, backlog: 21_000, backlogOldestAgeSeconds: 40, received: 1000 }), 11_000);
    expect(p.drain).toMatchObject({ remaining: 21_000, etaSeconds: null });
  });
});

describe('RecentErrors and the logger tap', () => {
  it('keeps errors and coded warnings, newest first, repeats folded with a count; children of the logger are seen', () => {
    const recent = new RecentErrors(3);
    const logger = createLogger('info', 'test', recent, new Writable({ write: (_c, _e, done) => done() }));
    const child = logger.child({ stage: 'forward' });
    child.error({ code: 'EB_ERR_A', err: 'boom' }, 'first');
    logger.warn('a warning without a code is not a problem to list');
    logger.info({ code: 'EB_ERR_INFO' }, 'info lines are not problems');
    child.warn({ code: 'EB_ERR_B' }, 'coded warning');
    child.error({ code: 'EB_ERR_A', err: 'boom again' }, 'first');
    logger.fatal(new Error('plain error object'));
    expect(recent.list().map((e) => [e.level, e.code, e.message, e.detail, e.count])).toEqual([
      ['fatal', undefined, 'plain error object', 'plain error object', 1],
      ['error', 'EB_ERR_A', 'first', 'boom again', 2],
      ['warn', 'EB_ERR_B', 'coded warning', undefined, 1],
    ]);
    child.error('one more pushes the oldest out');
    expect(recent.list()).toHaveLength(3);
    expect(recent.list().at(-1)!.code).toBe('EB_ERR_A');
  });
});

describe('review fixes', () => {
  it('a gateway forwarding a high rate with a second of lag is not draining: no lines at all', async () => {
    const lines: unknown[] = [];
    const logger = pino({ level: 'info' }, new Writable({ write: (c, _e, done) => (lines.push(String(c)), done()) }));
    const p = new DrainProgress({ logger });
    for (let t = 0; t < 60_000; t += 2_000) {
      p.update({ forwarding: true, backlog: 12_000, backlogOldestAgeSeconds: 1.2, forwarded: t * 9, received: t * 9 }, t);
    }
    await new Promise((r) => setImmediate(r));
    expect(lines).toEqual([]);
    expect(p.drain).toBeUndefined();
  });

  it('device IDs are kept within a character budget, the least recently heard forgotten first', () => {
    const t = new Traffic({ silentAfterMs: 60_000, maxIdChars: 3000, clock: () => 0 });
    for (let i = 0; i < 10; i++) t.heard('r', 't', `${String(i)}${'x'.repeat(999)}`, false);
    const a = t.activity(20);
    expect(a.active).toBe(3);
    expect(a.topByRate.map((d) => d.deviceId[0]).sort()).toEqual(['7', '8', '9']);
    expect(a.truncated).toBe(true);
  });

  it('routes removed by a reload stop being reported', () => {
    const t = new Traffic({ silentAfterMs: 60_000, clock: () => 0 });
    t.heard('a/{deviceId}', 'ta', 'd', false);
    t.heard('b/{deviceId}', 'tb', 'd', false);
    t.keepRoutes([{ mqtt: 'b/{deviceId}', kafka: 'tb' }]);
    expect(t.routeTraffic().map((r) => r.route)).toEqual(['b/{deviceId}']);
  });
});

describe('caches and a wall clock set back', () => {
  it('the device figures are not frozen when the clock steps back (NTP): a copy of unknown age is computed again', () => {
    let now = 100_000;
    const t = new Traffic({ silentAfterMs: 600_000, clock: () => now });
    t.heard('r', 't', 'a', false);
    expect(t.activity().topByRate[0]!.perMinute).toBe(1);
    now = 40_000; // an hour-long step would freeze it for an hour
    t.heard('r', 't', 'a', false);
    t.heard('r', 't', 'a', false);
    expect(t.activity().topByRate[0]!.perMinute).toBe(3);
  });

  it('a new device shows within a quarter of a second, the rates of known ones within a second', () => {
    let now = 0;
    const t = new Traffic({ silentAfterMs: 600_000, clock: () => now });
    t.heard('r', 't', 'a', false);
    expect(t.activity().active).toBe(1);
    t.heard('r', 't', 'b', false);
    now = 100;
    expect(t.activity().active).toBe(1); // at most 4 walks of every device a second
    now = 300;
    expect(t.activity().active).toBe(2);
    t.heard('r', 't', 'a', false);
    now = 800;
    expect(t.activity().topByRate.find((d) => d.deviceId === 'a')!.perMinute).toBe(1);
    now = 1_400;
    expect(t.activity().topByRate.find((d) => d.deviceId === 'a')!.perMinute).toBe(2);
  });
});
