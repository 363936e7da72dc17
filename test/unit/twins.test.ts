import { copyFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { Forwarder, type ForwarderOptions, type StepOutcome } from '../../src/forward/forwarder.js';
import { CommitLog } from '../../src/log/commit-log.js';
import { LogReader } from '../../src/log/log-reader.js';
import { entry } from '../helpers/entries.js';
import { useTmpDirs } from '../helpers/tmp.js';
import { KafkaModel, ModelSink } from '../sim/kafka-model.js';

const options: ForwarderOptions = {
  batchMaxRecords: 100,
  batchMaxBytes: 1_000_000,
  commitIntervalMs: 0,
  retry: { initialMs: 5, maxMs: 20 },
  logger: pino({ level: 'silent' }),
  deadLetter: false,
};

/** A gate the test opens: a connect waits on it between its fence and its checkpoint read. */
function gate(): { wait: () => Promise<void>; open: () => void; closed: boolean } {
  let open = (): void => undefined;
  const g = { closed: true, wait: () => (g.closed ? new Promise<void>((r) => (open = r)) : Promise.resolve()), open: () => ((g.closed = false), open()) };
  return g;
}

/** Steps on from `first` (or a first step) while the outcome is a retry; a bounded number of times. */
async function pastRetries(fwd: Forwarder, first?: StepOutcome): Promise<StepOutcome> {
  let outcome = first ?? (await fwd.step());
  for (let i = 0; i < 50 && outcome.kind === 'retry'; i++) outcome = await fwd.step();
  return outcome;
}

describe('two gateways with one gateway.id (twins), against the Kafka model', () => {
  const tmp = useTmpDirs();
  const gateway = (model: KafkaModel, readGate?: () => Promise<void>, dir = tmp()) => {
    const log = new CommitLog({ dir, synchronous: 'full' });
    const reader = new LogReader({ dir, synchronous: 'full' });
    const sink = new ModelSink(model, {
      gatewayId: 'gw-twin',
      logId: log.logId,
      writer: log.epoch.id,
      topics: ['iot.telemetry'],
      checkpointTopic: 'edgebridge.checkpoints',
      deadLetterTopic: undefined,
      ...(readGate ? { readGate } : {}),
    });
    return { log, reader, fwd: new Forwarder(reader, sink, options), close: () => (reader.close(), log.close()) };
  };

  it('the older one, busy forwarding, sees the newer one by its probe while that still reads its checkpoint: the older stops, the newer goes on', async () => {
    const model = new KafkaModel(1_000_000);
    const older = gateway(model);
    older.log.append([entry('a', 1)]);
    expect(await older.fwd.step()).toEqual({ kind: 'forwarded', records: 1 });

    // The newer gateway fences the older one and commits its probe, then takes a while to read
    // the checkpoint partition (a consumer group join).
    const slowRead = gate();
    const newer = gateway(model, () => slowRead.wait());
    newer.log.append([entry('b', 1)]);
    const newerFirst = newer.fwd.step();

    // Meanwhile the older one has more to send: fenced, it checks for a twin (fencing the newer
    // one in turn) and finds the newer one's probe after its own last checkpoint.
    older.log.append([entry('a', 2)]);
    expect(await older.fwd.step()).toEqual({ kind: 'retry', delayMs: 0 });
    expect(await older.fwd.step()).toEqual({ kind: 'fenced' });
    expect(older.fwd.state).toBe('fenced');

    // The newer one's first claim was fenced by that check; it tries again and wins.
    slowRead.open();
    expect((await newerFirst).kind).toBe('retry');
    const outcome = await pastRetries(newer.fwd);
    expect(outcome).toEqual({ kind: 'forwarded', records: 1 });
    expect(newer.fwd.state).toBe('forwarding');
    expect(model.records('iot.telemetry').map((r) => `${r.key}:${r.offset}`)).toEqual(['a:1', 'b:1']);
    older.close();
    newer.close();
  });

  it("a check by a fenced gateway claims nothing: the gateway it checks on does not take it for a twin", async () => {
    const model = new KafkaModel(1_000_000);
    const older = gateway(model);
    older.log.append([entry('a', 1)]);
    await older.fwd.step();
    const newer = gateway(model);
    newer.log.append([entry('b', 1)]);
    expect(await newer.fwd.step()).toEqual({ kind: 'forwarded', records: 1 }); // newer claimed and forwards
    older.log.append([entry('a', 2)]);
    expect(await older.fwd.step()).toEqual({ kind: 'retry', delayMs: 0 }); // fenced: checks (and fences the newer)
    expect(await older.fwd.step()).toEqual({ kind: 'fenced' }); // the newer one's checkpoint: a twin
    newer.log.append([entry('b', 2)]);
    const outcome = await pastRetries(newer.fwd); // fenced by that check first
    expect(outcome).toEqual({ kind: 'forwarded', records: 1 });
    expect(newer.fwd.state).toBe('forwarding');
    older.close();
    newer.close();
  });

  it('the older one reconnecting after an outage (a claiming connect) while the newer one checks on it: one goes on, never neither', async () => {
    const model = new KafkaModel(1_000_000);
    const slowRead = gate();
    slowRead.open(); // reads are quick until the test closes the gate
    const older = gateway(model, () => slowRead.wait());
    older.log.append([entry('a', 1)]);
    expect(await older.fwd.step()).toEqual({ kind: 'forwarded', records: 1 });
    model.down = true; // the older one's uplink fails once: Kafka errors, not a fence
    older.log.append([entry('a', 2)]);
    expect((await older.fwd.step()).kind).toBe('retry');
    model.down = false;
    const newer = gateway(model);
    newer.log.append([entry('b', 1)]);
    expect(await newer.fwd.step()).toEqual({ kind: 'forwarded', records: 1 });
    // the older one reconnects: it fences the newer one and claims, then reads slowly
    slowRead.closed = true;
    const olderReconnect = older.fwd.step();
    // the busy newer one is fenced and checks at once: the older one's claim came after its own
    newer.log.append([entry('b', 2)]);
    expect(await newer.fwd.step()).toEqual({ kind: 'retry', delayMs: 0 });
    expect(await newer.fwd.step()).toEqual({ kind: 'fenced' });
    // the older one's claim was fenced by that check: it checks in turn, finds no claim after its own, goes on
    slowRead.open();
    const outcome = await pastRetries(older.fwd, await olderReconnect);
    expect(outcome).toEqual({ kind: 'forwarded', records: 1 });
    expect([older.fwd.state, newer.fwd.state].sort()).toEqual(['fenced', 'forwarding']);
    expect(model.records('iot.telemetry').map((r) => `${r.key}:${r.offset}`)).toEqual(['a:1', 'b:1', 'a:2']);
    older.close();
    newer.close();
  });

  it("a batch committed just before a twin's checkpoint (its response lost) is not sent again", async () => {
    const model = new KafkaModel(1_000_000);
    const older = gateway(model);
    older.log.append([entry('a', 1)]);
    await older.fwd.step();
    older.log.append([entry('a', 2)]);
    model.faults.push('fail-after'); // committed, the response lost
    expect((await older.fwd.step()).kind).toBe('retry');
    const newer = gateway(model);
    newer.log.append([entry('b', 1)]);
    expect(await newer.fwd.step()).toEqual({ kind: 'forwarded', records: 1 }); // the twin's checkpoint is now the latest
    const outcome = await pastRetries(older.fwd); // reconnects: resumes from its own checkpoint, not the twin's
    const a = model.records('iot.telemetry').filter((r) => r.key === 'a').map((r) => r.offset);
    expect(a).toEqual([1, 2]);
    older.close();
    newer.close();
  });

  it('a twin cloned from the same storage.dir (the same log id) is still a twin: one stops', async () => {
    const model = new KafkaModel(1_000_000);
    const dir = tmp();
    const older = gateway(model, undefined, dir);
    older.log.append([entry('a', 1)]);
    await older.fwd.step();
    older.close();
    const cloneDir = tmp();
    for (const f of readdirSync(dir)) copyFileSync(join(dir, f), join(cloneDir, f));
    const first = gateway(model, undefined, dir); // the original, restarted
    const clone = gateway(model, undefined, cloneDir); // the image with a used storage.dir
    expect(first.log.logId).toBe(clone.log.logId);
    first.log.append([entry('a', 2)]);
    expect(await first.fwd.step()).toEqual({ kind: 'forwarded', records: 1 });
    clone.log.append([entry('c', 1)]);
    expect((await clone.fwd.step()).kind).toBe('forwarded');
    first.log.append([entry('a', 3)]);
    expect(await first.fwd.step()).toEqual({ kind: 'retry', delayMs: 0 });
    expect(await first.fwd.step()).toEqual({ kind: 'fenced' });
    clone.log.append([entry('c', 2)]);
    const outcome = await pastRetries(clone.fwd);
    expect(clone.fwd.state).toBe('forwarding');
    first.close();
    clone.close();
  });
});
