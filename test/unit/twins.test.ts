import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { Forwarder, type ForwarderOptions } from '../../src/forward/forwarder.js';
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

describe('two gateways with one gateway.id (twins), against the Kafka model', () => {
  const tmp = useTmpDirs();
  const gateway = (model: KafkaModel, readGate?: () => Promise<void>) => {
    const dir = tmp();
    const log = new CommitLog({ dir, synchronous: 'full' });
    const reader = new LogReader({ dir, synchronous: 'full' });
    const sink = new ModelSink(model, {
      gatewayId: 'gw-twin',
      logId: log.logId,
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
    let outcome = await newer.fwd.step();
    while (outcome.kind === 'retry') outcome = await newer.fwd.step();
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
    let outcome = await newer.fwd.step(); // fenced by that check
    while (outcome.kind === 'retry') outcome = await newer.fwd.step();
    expect(outcome).toEqual({ kind: 'forwarded', records: 1 });
    expect(newer.fwd.state).toBe('forwarding');
    older.close();
    newer.close();
  });
});
