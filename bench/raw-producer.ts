// The ceiling for draining a backlog: a raw kafkajs producer, its own process, sending `count`
// records shaped like the gateway's (key = device id, same payload size, the gateway's headers,
// the Java client's partitioner) in batches of the gateway's size (forward.batchMaxRecords /
// batchMaxBytes), acks=all, each batch awaited before the next as the forwarder does. `mode`:
// `idempotent` (plain idempotent producer) or `transactional` (one transaction per batch).
// Connecting is not timed. Prints one JSON line.
import kafkajs, { Partitioners, type Message } from 'kafkajs';
import { newBootId, reading } from './lib/payload.js';

interface Args {
  brokers: string[];
  topic: string;
  count: number;
  payloadBytes: number;
  devices: string[];
  batchRecords: number;
  batchBytes: number;
  mode: 'idempotent' | 'transactional';
}

const a = JSON.parse(process.argv[2] ?? '{}') as Args;
const kafka = new kafkajs.Kafka({ brokers: a.brokers, clientId: 'edgebridge-bench-raw', logLevel: kafkajs.logLevel.NOTHING });
const producer = kafka.producer({
  idempotent: true,
  maxInFlightRequests: 1,
  createPartitioner: Partitioners.DefaultPartitioner,
  allowAutoTopicCreation: false,
  ...(a.mode === 'transactional' ? { transactionalId: `edgebridge-bench-raw-${process.pid}`, transactionTimeout: 60_000 } : {}),
});
await producer.connect();
if (a.mode === 'transactional') await (await producer.transaction()).abort(); // InitProducerId, untimed

const bootId = newBootId();
const seqs = a.devices.map(() => 0);
let made = 0;
function nextBatch(): Message[] {
  const messages: Message[] = [];
  let bytes = 0;
  while (made < a.count && messages.length < a.batchRecords && bytes < a.batchBytes - a.payloadBytes) {
    const d = made % a.devices.length;
    const device = a.devices[d]!;
    const value = reading(bootId, ++seqs[d]!, a.payloadBytes);
    messages.push({
      key: device,
      value,
      timestamp: String(Date.now()),
      headers: { 'mqtt-topic': `devices/${device}/telemetry`, 'gateway-id': 'bench-raw' },
    });
    bytes += value.length;
    made++;
  }
  return messages;
}

let batches = 0;
const t0 = performance.now();
while (made < a.count) {
  const messages = nextBatch();
  if (a.mode === 'transactional') {
    const txn = await producer.transaction();
    await txn.sendBatch({ acks: -1, topicMessages: [{ topic: a.topic, messages }] });
    await txn.commit();
  } else {
    await producer.sendBatch({ acks: -1, topicMessages: [{ topic: a.topic, messages }] });
  }
  batches++;
}
const elapsedMs = performance.now() - t0;
await producer.disconnect();
process.stdout.write(`${JSON.stringify({ mode: a.mode, count: made, batches, elapsedMs, rate: made / (elapsedMs / 1000) })}\n`);
process.exit(0);
