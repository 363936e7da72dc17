#!/usr/bin/env node
// A real Apache Kafka broker (KRaft, combined broker+controller) for development and tests, run
// from the official Maven Central jars: no Docker, no mocks. Used by `npm run kafka:start|stop`,
// by `npm run demo` and by the vitest global setup.
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes, createHash } from 'node:crypto';
import { existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync, closeSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import kafkajs from 'kafkajs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const POM = join(ROOT, 'kafka', 'pom.xml');
const LIB = join(ROOT, 'kafka', 'target', 'lib');
const LOG4J = join(ROOT, 'kafka', 'log4j2.yaml');
const STATE = join(ROOT, '.kafka');

export class KafkaSetupError extends Error {
  constructor(message) {
    super(message);
    this.name = 'KafkaSetupError';
  }
}

function have(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

/** Resolves the broker jars with Maven once (about 45 MB, cached in ~/.m2 and kafka/target/lib). */
export function ensureKafkaJars({ quiet = false } = {}) {
  const missing = ['java', 'mvn'].filter((c) => !have(c));
  if (missing.length > 0) {
    throw new KafkaSetupError(
      `the local Kafka broker needs ${missing.join(' and ')} (Java 17+ and Maven), which ${missing.length > 1 ? 'are' : 'is'} not on PATH. ` +
        'Install them, e.g. on Debian/Ubuntu/Raspberry Pi OS: sudo apt-get update && sudo apt-get install -y openjdk-17-jre-headless maven. ' +
        'Or point edgebridge at an existing cluster with KAFKA_BROKERS=host:port.',
    );
  }
  const stamp = join(LIB, '.resolved');
  const pomHash = createHash('sha256').update(readFileSync(POM)).digest('hex');
  if (existsSync(stamp) && readFileSync(stamp, 'utf8') === pomHash) return LIB;
  if (!quiet) process.stderr.write('kafka: resolving the Apache Kafka broker jars with Maven (first run only)...\n');
  rmSync(LIB, { recursive: true, force: true });
  const mvn = spawnSync(
    'mvn',
    ['-q', '-B', '-f', POM, 'dependency:copy-dependencies', `-DoutputDirectory=${LIB}`, '-DincludeScope=runtime'],
    { encoding: 'utf8' },
  );
  if (mvn.status !== 0) {
    throw new KafkaSetupError(
      `mvn could not resolve the Kafka jars (exit ${mvn.status}). Maven Central must be reachable.\n${(mvn.stdout ?? '') + (mvn.stderr ?? '')}`.trim(),
    );
  }
  writeFileSync(stamp, pomHash);
  return LIB;
}

/** `count` distinct free ports on 127.0.0.1 (all held open together, so none is handed out twice). */
export async function freePorts(count) {
  const servers = await Promise.all(
    Array.from(
      { length: count },
      () =>
        new Promise((resolveServer, reject) => {
          const server = createServer();
          server.once('error', reject);
          server.listen(0, '127.0.0.1', () => resolveServer(server));
        }),
    ),
  );
  const ports = servers.map((s) => s.address().port);
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

export async function freePort() {
  return (await freePorts(1))[0];
}

function kafkaUuid() {
  return randomBytes(16).toString('base64url');
}

// A base64url id starts with '-' one time in 64; passed as a separate argument the tool's
// parser takes it for an option ("--cluster-id: expected one argument"), so it is always
// attached with '='.

function writeServerProperties({ dataDir, nodeId, port, controllerPort, voters, replication }) {
  const file = join(dataDir, 'server.properties');
  writeFileSync(
    file,
    [
      'process.roles=broker,controller',
      `node.id=${nodeId}`,
      `controller.quorum.voters=${voters.map((v) => `${v.nodeId}@127.0.0.1:${v.controllerPort}`).join(',')}`,
      `listeners=PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${controllerPort}`,
      `advertised.listeners=PLAINTEXT://127.0.0.1:${port}`,
      'controller.listener.names=CONTROLLER',
      'inter.broker.listener.name=PLAINTEXT',
      'listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT',
      `log.dirs=${join(dataDir, 'logs')}`,
      // internal topics replicated as far as the cluster allows (1 for a single broker)
      `offsets.topic.replication.factor=${replication}`,
      'offsets.topic.num.partitions=4',
      `transaction.state.log.replication.factor=${replication}`,
      `transaction.state.log.min.isr=${Math.min(2, replication)}`,
      'transaction.state.log.num.partitions=4',
      `default.replication.factor=${replication}`,
      `min.insync.replicas=${Math.min(2, replication)}`,
      'group.initial.rebalance.delay.ms=0',
      'num.partitions=1',
      'auto.create.topics.enable=false',
      '',
    ].join('\n'),
  );
  return file;
}

/** Formats (first time only) and spawns one KRaft node; does not wait for it. */
function launchNode({ lib, dataDir, nodeId, port, controllerPort, voters, clusterId, replication, heap, detached }) {
  mkdirSync(dataDir, { recursive: true });
  const props = writeServerProperties({ dataDir, nodeId, port, controllerPort, voters, replication });
  const javaBase = ['-cp', join(lib, '*'), `-Dlog4j2.configurationFile=${LOG4J}`];
  if (!existsSync(join(dataDir, 'logs', 'meta.properties'))) {
    const format = spawnSync('java', [...javaBase, 'kafka.tools.StorageTool', 'format', `--cluster-id=${clusterId}`, '-c', props], {
      encoding: 'utf8',
    });
    if (format.status !== 0) {
      throw new KafkaSetupError(`formatting the Kafka storage failed:\n${format.stdout}${format.stderr}`);
    }
  }
  const logFile = join(dataDir, 'server.log');
  const out = openSync(logFile, 'a');
  const child = spawn(
    'java',
    [`-Xmx${heap}`, '-Xms128m', '-XX:+UseG1GC', '-Djava.awt.headless=true', ...javaBase, 'kafka.Kafka', props],
    { stdio: ['ignore', out, out], detached },
  );
  closeSync(out);
  const node = {
    nodeId,
    port,
    controllerPort,
    dataDir,
    logFile,
    pid: child.pid,
    exited: false,
    /** Clean stop (SIGTERM, then SIGKILL after `graceMs`). */
    stop: (graceMs = 20_000) => stopProcess(child.pid, graceMs, () => node.exited),
    /** Hard kill, for fault tests. */
    kill: () => stopProcess(child.pid, 0, () => node.exited),
  };
  child.once('exit', () => (node.exited = true));
  if (detached) child.unref();
  return node;
}

function logTail(logFile) {
  return existsSync(logFile) ? readFileSync(logFile, 'utf8').split('\n').slice(-30).join('\n') : '';
}

/** Waits until the broker answers metadata requests. */
export async function waitForKafka(brokers, { timeoutMs = 90_000, isAlive = () => true } = {}) {
  const { Kafka, logLevel } = kafkajs;
  const kafka = new Kafka({ brokers, clientId: 'edgebridge-kafka-wait', logLevel: logLevel.NOTHING, retry: { retries: 0 } });
  const deadline = Date.now() + timeoutMs;
  let lastErr;
  while (Date.now() < deadline) {
    if (!isAlive()) throw new KafkaSetupError('the Kafka process exited during start-up');
    const admin = kafka.admin();
    try {
      await admin.connect();
      await admin.describeCluster();
      await admin.listTopics();
      return;
    } catch (err) {
      lastErr = err;
    } finally {
      await admin.disconnect().catch(() => undefined);
    }
    await sleep(300);
  }
  throw new KafkaSetupError(`Kafka at ${brokers.join(',')} did not become ready in ${timeoutMs} ms: ${lastErr?.message}`);
}

/**
 * Starts a broker on 127.0.0.1. Reuses `dataDir` when it is already formatted (a restart keeps
 * topics and data, which the fault tests rely on). Resolves once the broker answers.
 */
export async function startKafka({ dataDir, port, controllerPort, detached = false, heap = '1g' } = {}) {
  const lib = ensureKafkaJars();
  dataDir = resolve(dataDir ?? join(STATE, 'data'));
  if (port === undefined || controllerPort === undefined) {
    const [a, b] = await freePorts(2);
    port ??= a;
    controllerPort ??= port === b ? a : b;
  }
  if (port === controllerPort) throw new KafkaSetupError(`the broker and controller ports must differ (both ${port})`);
  const node = launchNode({
    lib,
    dataDir,
    nodeId: 1,
    port,
    controllerPort,
    voters: [{ nodeId: 1, controllerPort }],
    clusterId: kafkaUuid(),
    replication: 1,
    heap,
    detached,
  });
  const brokers = [`127.0.0.1:${port}`];
  try {
    await waitForKafka(brokers, { isAlive: () => !node.exited });
  } catch (err) {
    await node.kill();
    throw new KafkaSetupError(`${err.message}\n--- ${node.logFile} (last lines) ---\n${logTail(node.logFile)}`);
  }
  return { ...node, brokers, get exited() { return node.exited; } };
}

/**
 * A cluster of `size` combined KRaft nodes on 127.0.0.1 (replication factor and min ISR set for
 * it), for broker-failover tests. Each node can be killed and restarted with its data.
 */
export async function startKafkaCluster({ baseDir, size = 3, heap = '384m' }) {
  const lib = ensureKafkaJars();
  const ports = await freePorts(size * 2);
  const clusterId = kafkaUuid();
  const voters = Array.from({ length: size }, (_, i) => ({ nodeId: i + 1, port: ports[2 * i], controllerPort: ports[2 * i + 1] }));
  const replication = Math.min(3, size);
  const spec = (v) => ({ lib, dataDir: join(resolve(baseDir), `node-${v.nodeId}`), ...v, voters, clusterId, replication, heap, detached: false });
  const nodes = new Map(voters.map((v) => [v.nodeId, launchNode(spec(v))]));
  const brokers = voters.map((v) => `127.0.0.1:${v.port}`);
  const waitAll = async (ids) => {
    for (const id of ids) {
      const node = nodes.get(id);
      try {
        await waitForKafka([`127.0.0.1:${node.port}`], { isAlive: () => !node.exited });
      } catch (err) {
        throw new KafkaSetupError(`${err.message}\n--- ${node.logFile} (last lines) ---\n${logTail(node.logFile)}`);
      }
    }
  };
  try {
    await waitAll([...nodes.keys()]);
  } catch (err) {
    await Promise.all([...nodes.values()].map((n) => n.kill()));
    throw err;
  }
  return {
    brokers,
    nodeIds: [...nodes.keys()],
    kill: (id) => nodes.get(id).kill(),
    async restart(id) {
      const v = voters.find((x) => x.nodeId === id);
      await nodes.get(id).kill();
      nodes.set(id, launchNode(spec(v)));
      await waitAll([id]);
    },
    stop: () => Promise.all([...nodes.values()].map((n) => n.stop(5000))),
  };
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export async function stopProcess(pid, graceMs = 20_000, hasExited = () => !alive(pid)) {
  if (!pid || hasExited()) return;
  try {
    process.kill(pid, graceMs > 0 ? 'SIGTERM' : 'SIGKILL');
  } catch {
    return;
  }
  const deadline = Date.now() + graceMs;
  while (!hasExited() && Date.now() < deadline) await sleep(100);
  if (!hasExited()) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      return;
    }
    while (!hasExited()) await sleep(50);
  }
}

// --- CLI: npm run kafka:start / kafka:stop -------------------------------------------------------
const PID_FILE = join(STATE, 'kafka.pid');

async function cliStart() {
  const port = Number(process.env.KAFKA_PORT ?? 9092);
  const controllerPort = Number(process.env.KAFKA_CONTROLLER_PORT ?? port + 1);
  if (existsSync(PID_FILE)) {
    const pid = Number(readFileSync(PID_FILE, 'utf8'));
    if (alive(pid)) {
      console.log(`kafka already running (pid ${pid}) on 127.0.0.1:${port}`);
      return;
    }
  }
  mkdirSync(STATE, { recursive: true });
  const kafka = await startKafka({ dataDir: join(STATE, 'data'), port, controllerPort, detached: true });
  writeFileSync(PID_FILE, String(kafka.pid));
  console.log(`kafka ready on ${kafka.brokers[0]} (pid ${kafka.pid}, data ${kafka.dataDir}, log ${kafka.logFile})`);
}

async function cliStop() {
  if (!existsSync(PID_FILE)) {
    console.log('kafka is not running (no .kafka/kafka.pid)');
    return;
  }
  const pid = Number(readFileSync(PID_FILE, 'utf8'));
  await stopProcess(pid);
  rmSync(PID_FILE, { force: true });
  console.log(`kafka stopped (pid ${pid})`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const command = process.argv[2];
  const run = { start: cliStart, stop: cliStop, jars: async () => console.log(ensureKafkaJars()) }[command];
  if (!run) {
    console.error('usage: node scripts/kafka.mjs start|stop|jars');
    process.exit(64);
  }
  run().catch((err) => {
    console.error(`kafka: ${err.message}`);
    process.exit(1);
  });
}
