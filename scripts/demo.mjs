#!/usr/bin/env node
// npm run demo: a local Kafka, the gateway with the shipped config on 127.0.0.1:1883, a small
// simulated fleet and a consumer; live counts until Ctrl-C, which stops everything it started.
import { spawn } from 'node:child_process';
import { mkdirSync, openSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import kafkajs from 'kafkajs';
import { startKafka, waitForKafka, stopProcess } from './kafka.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const CONFIG = join(ROOT, 'config', 'edgebridge.yaml');
const BROKERS = ['127.0.0.1:9092'];
const TOPIC = 'iot.telemetry';
const DEVICES = Number(process.env.DEMO_DEVICES ?? 20);
const RATE = Number(process.env.DEMO_RATE ?? 5);

const { runFleet } = await import(join(ROOT, 'dist', 'firmware-sim', 'fleet.js'));
const say = (line) => process.stdout.write(`${line}\n`);

let kafka; // set when this demo started the broker
let gateway;
let consumer;
const abort = new AbortController();
let stopping = false;

async function stopAll(code) {
  if (stopping) return;
  stopping = true;
  abort.abort();
  if (gateway) say('demo: stopping the gateway');
  if (gateway && gateway.exitCode === null) await stopProcess(gateway.pid, 15_000, () => gateway.exitCode !== null);
  await consumer?.disconnect().catch(() => undefined);
  if (kafka) {
    say('demo: stopping Kafka');
    await kafka.stop();
  }
  process.exit(code);
}
// First Ctrl-C: stop the fleet and tally; a second one stops everything at once.
let interrupts = 0;
const interrupt = () => (++interrupts === 1 && consumer ? abort.abort() : void stopAll(130));
process.on('SIGINT', interrupt);
process.on('SIGTERM', interrupt);

try {
  // 1. Kafka: reuse one already on 127.0.0.1:9092 (npm run kafka:start), else start our own.
  try {
    await waitForKafka(BROKERS, { timeoutMs: 1500 });
    say('demo: using the Kafka already running on 127.0.0.1:9092');
  } catch {
    say('demo: starting Kafka on 127.0.0.1:9092 (KRaft, from the Apache Kafka jars)...');
    // detached: Ctrl-C reaches only this script, which then stops everything in order
    kafka = await startKafka({ dataDir: join(ROOT, '.kafka', 'data'), port: 9092, controllerPort: 9093, detached: true });
    say(`demo: Kafka ready (log: ${kafka.logFile})`);
  }

  // 2. The gateway, exactly as `npm start` runs it.
  mkdirSync(join(ROOT, 'data'), { recursive: true });
  const logFile = join(ROOT, 'data', 'gateway.log');
  const out = openSync(logFile, 'a');
  gateway = spawn(process.execPath, [join(ROOT, 'dist', 'src', 'cli.js'), 'start', '--config', CONFIG], {
    cwd: ROOT,
    stdio: ['ignore', out, out],
    detached: true,
  });
  process.once('exit', () => gateway.exitCode === null && gateway.kill('SIGKILL'));
  gateway.once('exit', (code) => {
    if (!stopping) {
      say(`demo: the gateway exited (code ${code}); see ${logFile}`);
      void stopAll(1);
    }
  });
  say(`demo: gateway started with ${CONFIG} (MQTT 127.0.0.1:1883, log: ${logFile})`);

  // 3. A consumer, subscribed before the fleet starts.
  const { Kafka, logLevel } = kafkajs;
  const client = new Kafka({ brokers: BROKERS, clientId: 'edgebridge-demo', logLevel: logLevel.NOTHING });
  const admin = client.admin();
  await admin.connect();
  while (!(await admin.listTopics()).includes(TOPIC)) await sleep(200);
  await admin.disconnect();
  consumer = client.consumer({ groupId: `edgebridge-demo-${Date.now()}`, readUncommitted: false });
  await consumer.connect();
  await consumer.subscribe({ topic: TOPIC, fromBeginning: false });
  const boots = new Set();
  const lastSeq = new Map();
  const seen = { records: 0, outOfOrder: 0, duplicates: 0, shown: 0 };
  let resolveJoined;
  const joined = new Promise((r) => (resolveJoined = r));
  consumer.on(consumer.events.GROUP_JOIN, () => resolveJoined());
  await consumer.run({
    eachMessage: async ({ partition, message }) => {
      const reading = JSON.parse(message.value.toString());
      if (!boots.has(reading.bootId)) return; // a backlog from an earlier demo run
      seen.records++;
      const prev = lastSeq.get(reading.deviceId) ?? 0;
      if (reading.seq <= prev) seen.duplicates++;
      else if (reading.seq !== prev + 1) seen.outOfOrder++;
      lastSeq.set(reading.deviceId, Math.max(prev, reading.seq));
      if (seen.shown < 5) {
        seen.shown++;
        say(`  kafka <- key=${message.key} partition=${partition} offset=${message.offset} ${message.value}`);
      }
    },
  });
  await joined;

  // 4. The fleet, until Ctrl-C; then a final tally once Kafka caught up.
  say(`demo: ${DEVICES} simulated devices x ${RATE} msg/s (QoS 1). Ctrl-C stops everything.`);
  let fleetStats = { published: 0, acked: 0 };
  const started = Date.now();
  const line = () =>
    `published=${fleetStats.published} acked=${fleetStats.acked} in-kafka=${seen.records} ` +
    `duplicates=${seen.duplicates} out-of-order=${seen.outOfOrder}`;
  const ticker = setInterval(() => {
    say(`[${String(Math.round((Date.now() - started) / 1000)).padStart(4)}s] ${line()}`);
  }, 2000);
  const result = await runFleet({
    url: 'mqtt://127.0.0.1:1883',
    devices: DEVICES,
    rate: RATE,
    qos: 1,
    signal: abort.signal,
    onStart: (devices, live) => {
      devices.forEach((d) => boots.add(d.bootId));
      fleetStats = live;
    },
  });
  fleetStats = result;
  clearInterval(ticker);
  const deadline = Date.now() + 15_000;
  while (seen.records < result.acked && Date.now() < deadline) await sleep(200);
  say(`demo: final ${line()}`);
  say(
    seen.records === result.acked && seen.duplicates === 0 && seen.outOfOrder === 0
      ? 'demo: every acknowledged reading reached Kafka exactly once, in order per device'
      : 'demo: counts differ; see data/gateway.log',
  );
  await stopAll(0);
} catch (err) {
  say(`demo: ${err.message}`);
  await stopAll(1);
}
