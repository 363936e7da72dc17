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

function writeServerProperties({ dataDir, nodeId, port, controllerPort, voters, replication, security }) {
  const file = join(dataDir, 'server.properties');
  const listenerLines = security
    ? secureListenerLines({ port, controllerPort, security })
    : [
        `listeners=PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${controllerPort}`,
        `advertised.listeners=PLAINTEXT://127.0.0.1:${port}`,
        'controller.listener.names=CONTROLLER',
        'inter.broker.listener.name=PLAINTEXT',
        'listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT',
      ];
  writeFileSync(
    file,
    [
      'process.roles=broker,controller',
      `node.id=${nodeId}`,
      `controller.quorum.voters=${voters.map((v) => `${v.nodeId}@127.0.0.1:${v.controllerPort}`).join(',')}`,
      ...listenerLines,
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

/** The StorageTool's arguments that format one node's storage (its first start only). */
function formatArgs({ lib, props, clusterId, security }) {
  // SCRAM credentials live in the cluster metadata: the secured broker's are written at format
  // time (KIP-900), so the broker can authenticate its own inter-broker connections at once.
  const scram = security ? scramFormatArgs(security) : [];
  return [...QUICK_START_JVM, '-cp', join(lib, '*'), `-Dlog4j2.configurationFile=${LOG4J}`, 'kafka.tools.StorageTool', 'format', `--cluster-id=${clusterId}`, '-c', props, ...scram];
}

/** Formats the storage of several nodes at once (one JVM each, in parallel); launchNode then skips it. */
async function formatNodes(specs) {
  await Promise.all(
    specs.map(
      ({ lib, dataDir, nodeId, port, controllerPort, voters, clusterId, replication, security }) =>
        new Promise((resolveFormat, reject) => {
          mkdirSync(dataDir, { recursive: true });
          const props = writeServerProperties({ dataDir, nodeId, port, controllerPort, voters, replication, security });
          const child = spawn('java', formatArgs({ lib, props, clusterId, security }), { stdio: ['ignore', 'pipe', 'pipe'] });
          let output = '';
          child.stdout.on('data', (d) => (output += d));
          child.stderr.on('data', (d) => (output += d));
          child.once('error', reject);
          child.once('exit', (code) =>
            code === 0 ? resolveFormat() : reject(new KafkaSetupError(`formatting the Kafka storage of node ${nodeId} failed:\n${output}`)),
          );
        }),
    ),
  );
}

// The JIT's C1 tier alone: a JVM that starts in about half the time and CPU (the format tool:
// 3 s instead of 6 s; a broker restart of a test cluster 4-10 s instead of 10-13 s on 2 cores),
// at a peak throughput far above anything a test asks of it.
const QUICK_START_JVM = ['-XX:TieredStopAtLevel=1'];

/**
 * Formats (first time only) and spawns one KRaft node; does not wait for it. `jvmOptions`: extra
 * JVM flags for the broker.
 */
function launchNode({ lib, dataDir, nodeId, port, controllerPort, voters, clusterId, replication, heap, detached, security, jvmOptions = [] }) {
  mkdirSync(dataDir, { recursive: true });
  const props = writeServerProperties({ dataDir, nodeId, port, controllerPort, voters, replication, security });
  const javaBase = ['-cp', join(lib, '*'), `-Dlog4j2.configurationFile=${LOG4J}`];
  if (!existsSync(join(dataDir, 'logs', 'meta.properties'))) {
    const format = spawnSync('java', formatArgs({ lib, props, clusterId, security }), { encoding: 'utf8' });
    if (format.status !== 0) {
      throw new KafkaSetupError(`formatting the Kafka storage failed:\n${format.stdout}${format.stderr}`);
    }
  }
  const logFile = join(dataDir, 'server.log');
  const out = openSync(logFile, 'a');
  const child = spawn(
    'java',
    [`-Xmx${heap}`, '-Xms128m', '-XX:+UseG1GC', ...jvmOptions, '-Djava.awt.headless=true', ...javaBase, 'kafka.Kafka', props],
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

/**
 * Waits until the broker answers metadata requests. `client`: extra kafkajs options (ssl, sasl)
 * for a secured broker.
 */
export async function waitForKafka(brokers, { timeoutMs = 90_000, isAlive = () => true, client = {} } = {}) {
  const { Kafka, logLevel } = kafkajs;
  const kafka = new Kafka({ brokers, clientId: 'edgebridge-kafka-wait', logLevel: logLevel.NOTHING, retry: { retries: 0 }, ...client });
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

/** The broker and controller ports: the given ones, free ones for those not given. */
async function brokerPorts(port, controllerPort) {
  if (port === undefined || controllerPort === undefined) {
    const [a, b] = await freePorts(2);
    port ??= a;
    controllerPort ??= port === b ? a : b;
  }
  return { port, controllerPort };
}

/** One KRaft node that is both the broker and the only controller. */
function launchSingleNode({ lib, dataDir, port, controllerPort, heap, detached, security }) {
  return launchNode({
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
    security,
  });
}

/**
 * Starts a broker on 127.0.0.1. Reuses `dataDir` when it is already formatted (a restart keeps
 * topics and data, which the fault tests rely on). Resolves once the broker answers.
 */
export async function startKafka({ dataDir, port, controllerPort, detached = false, heap = '1g' } = {}) {
  const lib = ensureKafkaJars();
  dataDir = resolve(dataDir ?? join(STATE, 'data'));
  ({ port, controllerPort } = await brokerPorts(port, controllerPort));
  if (port === controllerPort) throw new KafkaSetupError(`the broker and controller ports must differ (both ${port})`);
  const node = launchSingleNode({ lib, dataDir, port, controllerPort, heap, detached });
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
 * it), for broker-failover tests. Each node can be killed or stopped and restarted with its data.
 * Its JVMs run the C1 tier only (QUICK_START_JVM): these tests restart nodes again and again.
 */
export async function startKafkaCluster({ baseDir, size = 3, heap = '384m' }) {
  const lib = ensureKafkaJars();
  const ports = await freePorts(size * 2);
  const clusterId = kafkaUuid();
  const voters = Array.from({ length: size }, (_, i) => ({ nodeId: i + 1, port: ports[2 * i], controllerPort: ports[2 * i + 1] }));
  const replication = Math.min(3, size);
  const spec = (v) => ({
    lib,
    dataDir: join(resolve(baseDir), `node-${v.nodeId}`),
    ...v,
    voters,
    clusterId,
    replication,
    heap,
    detached: false,
    jvmOptions: QUICK_START_JVM,
  });
  await formatNodes(voters.map(spec));
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
    /** Clean stop of one node (SIGTERM: a controlled shutdown moves its leaderships away first). */
    stopNode: (id, graceMs = 30_000) => nodes.get(id).stop(graceMs),
    /** Starts a node again with its data (killing it first if it still runs); resolves once it answers. */
    async restart(id) {
      const v = voters.find((x) => x.nodeId === id);
      await nodes.get(id).kill();
      nodes.set(id, launchNode(spec(v)));
      await waitAll([id]);
    },
    /**
     * Resolves once every partition of every topic (the internal ones too) has all its replicas in
     * the ISR: a restarted node has caught up. Answering metadata requests comes well before that.
     */
    waitInSync: (timeoutMs = 120_000) => waitInSync(brokers, timeoutMs),
    stop: () => Promise.all([...nodes.values()].map((n) => n.stop(5000))),
  };
}

/** Partitions (topic:partition) whose ISR lacks one of their replicas, as the cluster reports them. */
async function outOfSync(brokers) {
  const { Kafka, logLevel } = kafkajs;
  const admin = new Kafka({ brokers, clientId: 'edgebridge-kafka-isr', logLevel: logLevel.NOTHING, retry: { retries: 0 } }).admin();
  await admin.connect();
  try {
    const { topics } = await admin.fetchTopicMetadata();
    const lagging = [];
    for (const t of topics) {
      for (const p of t.partitions) {
        if (p.leader < 0 || p.replicas.some((r) => !p.isr.includes(r))) lagging.push(`${t.name}:${p.partitionId}`);
      }
    }
    return lagging;
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}

async function waitInSync(brokers, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let last = 'no answer yet';
  while (Date.now() < deadline) {
    try {
      const lagging = await outOfSync(brokers);
      if (lagging.length === 0) return;
      last = `out of sync: ${lagging.slice(0, 10).join(', ')}${lagging.length > 10 ? ` and ${lagging.length - 10} more` : ''}`;
    } catch (err) {
      last = err.message;
    }
    await sleep(500);
  }
  throw new KafkaSetupError(`the cluster's replicas did not all rejoin the ISR in ${timeoutMs} ms (${last})`);
}

// --- A secured broker: SASL_SSL, SCRAM and PLAIN users, ACLs enforced --------------------------

function openssl(args, cwd) {
  const run = spawnSync('openssl', args, { cwd, encoding: 'utf8' });
  if (run.error || run.status !== 0) {
    throw new KafkaSetupError(`openssl ${args.join(' ')} failed (is openssl installed?): ${run.error?.message ?? ''}${run.stderr ?? ''}`);
  }
}

/**
 * A throw-away PKI in `dir` (openssl): a CA, and a certificate for the broker signed by it, valid
 * for IP 127.0.0.1 and DNS localhost. Returns the file names (PEM). `name` prefixes the files, so
 * a second, unrelated CA (a wrong one, for tests) can live beside the first.
 */
export function generateTestPki(dir, name = 'test') {
  mkdirSync(dir, { recursive: true });
  const f = (suffix) => join(dir, `${name}-${suffix}`);
  openssl(
    ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '30', '-subj', `/CN=edgebridge ${name} CA`,
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'],
    dir,
  );
  openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('broker.key'), '-out', f('broker.csr'), '-subj', '/CN=localhost'], dir);
  writeFileSync(f('broker.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n');
  openssl(
    ['x509', '-req', '-in', f('broker.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-set_serial', `0x${randomBytes(8).toString('hex')}`,
      '-days', '30', '-sha256', '-extfile', f('broker.ext'), '-out', f('broker.pem')],
    dir,
  );
  // Kafka's PEM key store (KIP-651): the unencrypted PKCS#8 key, then the certificate chain.
  const keystore = f('broker-keystore.pem');
  writeFileSync(keystore, readFileSync(f('broker.key'), 'utf8') + readFileSync(f('broker.pem'), 'utf8') + readFileSync(f('ca.pem'), 'utf8'));
  return { caFile: f('ca.pem'), caKeyFile: f('ca.key'), certFile: f('broker.pem'), keyFile: f('broker.key'), keystoreFile: keystore };
}

const jaasQuote = (v) => `"${String(v).replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;

function scramFormatArgs(security) {
  const args = [];
  for (const user of [security.admin, ...security.users]) {
    for (const mechanism of ['SCRAM-SHA-256', 'SCRAM-SHA-512']) {
      args.push('--add-scram', `${mechanism}=[name=${user.username},password=${user.password}]`);
    }
  }
  return args;
}

/**
 * The listener part of a secured broker's server.properties.
 *
 * - Clients, and the broker's own inter-broker traffic, use one SASL_SSL listener. The broker
 *   logs in to it as the super user `admin` with SCRAM-SHA-512, whose credentials were written at
 *   format time: no plaintext listener for brokers, and inter-broker requests (transaction
 *   markers) pass the authorizer as a super user.
 * - The KRaft controller listener stays PLAINTEXT, bound to 127.0.0.1 only. Its connections have
 *   the principal User:ANONYMOUS, which must be a super user so that the broker's registration,
 *   heartbeats and metadata fetches pass the StandardAuthorizer. (SCRAM is no option there:
 *   KRaft controllers do not take SCRAM on their own listener, KAFKA-15513, since they hold the
 *   credentials only once the metadata log is read.) Acceptable for a loopback test broker; a
 *   production cluster puts the controller listener on SSL (or SASL PLAIN) with the brokers'
 *   principal as its super user.
 */
function secureListenerLines({ port, controllerPort, security }) {
  const { admin, users, tls } = security;
  const scramJaas = `org.apache.kafka.common.security.scram.ScramLoginModule required username=${jaasQuote(admin.username)} password=${jaasQuote(admin.password)};`;
  const plainUsers = [admin, ...users].map((u) => `user_${u.username}=${jaasQuote(u.password)}`).join(' ');
  return [
    `listeners=SASL_SSL://127.0.0.1:${port},CONTROLLER://127.0.0.1:${controllerPort}`,
    `advertised.listeners=SASL_SSL://127.0.0.1:${port}`,
    'controller.listener.names=CONTROLLER',
    'inter.broker.listener.name=SASL_SSL',
    'listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL',
    'sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256,PLAIN',
    'sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512',
    `listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=${scramJaas}`,
    `listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=${scramJaas}`,
    `listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username=${jaasQuote(admin.username)} password=${jaasQuote(admin.password)} ${plainUsers};`,
    'ssl.keystore.type=PEM',
    `ssl.keystore.location=${tls.keystoreFile}`,
    'ssl.truststore.type=PEM',
    `ssl.truststore.location=${tls.caFile}`,
    'ssl.client.auth=none',
    'authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer',
    `super.users=User:${admin.username};User:ANONYMOUS`,
    'allow.everyone.if.no.acl.found=false',
  ];
}

/**
 * Starts a secured single-node KRaft broker on 127.0.0.1: a SASL_SSL listener (PLAIN,
 * SCRAM-SHA-256 and SCRAM-SHA-512; certificates from a fresh CA in `<dataDir>/tls`), ACLs enforced
 * by the StandardAuthorizer, a super user `admin` and the given `users` (both SCRAM mechanisms and
 * PLAIN, each with its password). Resolves once the admin can list topics. `client(user)` gives
 * kafkajs options (brokers, ssl, sasl) for a user.
 */
export async function startSecureKafka({ dataDir, users = [], heap = '384m', detached = false, adminPassword, port, controllerPort } = {}) {
  const lib = ensureKafkaJars();
  dataDir = resolve(dataDir ?? join(STATE, 'secure'));
  const admin = { username: 'admin', password: adminPassword ?? randomBytes(12).toString('hex') };
  const tlsDir = join(dataDir, 'tls');
  const tls = existsSync(join(tlsDir, 'test-broker-keystore.pem'))
    ? { caFile: join(tlsDir, 'test-ca.pem'), keystoreFile: join(tlsDir, 'test-broker-keystore.pem') }
    : generateTestPki(tlsDir);
  for (const u of users) {
    if (!/^[A-Za-z0-9._-]+$/.test(u.username) || !/^[A-Za-z0-9._-]+$/.test(u.password)) {
      throw new KafkaSetupError(`test user names and passwords are limited to A-Z a-z 0-9 . _ - (${u.username})`);
    }
  }
  const security = { admin, users, tls };
  ({ port, controllerPort } = await brokerPorts(port, controllerPort));
  const node = launchSingleNode({ lib, dataDir, port, controllerPort, heap, detached, security });
  const brokers = [`127.0.0.1:${port}`];
  const ca = readFileSync(tls.caFile, 'utf8');
  const client = (user = admin, mechanism = 'scram-sha-512') => ({
    brokers,
    ssl: { ca: [ca] },
    sasl: { mechanism, username: user.username, password: user.password },
  });
  try {
    const { brokers: _b, ...options } = client();
    await waitForKafka(brokers, { isAlive: () => !node.exited, client: options });
  } catch (err) {
    await node.kill();
    throw new KafkaSetupError(`${err.message}\n--- ${node.logFile} (last lines) ---\n${logTail(node.logFile)}`);
  }
  return {
    ...node,
    brokers,
    caFile: tls.caFile,
    admin,
    client,
    get exited() {
      return node.exited;
    },
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

// `start-secure`: the secured broker for trying kafka.ssl / kafka.sasl by hand. Passwords are made
// once and kept in .kafka/secure (the broker's SCRAM credentials are written when it is formatted).
const SECURE = join(STATE, 'secure');
const SECURE_PID_FILE = join(SECURE, 'kafka.pid');

async function cliStartSecure() {
  const port = Number(process.env.KAFKA_SECURE_PORT ?? 9094);
  if (existsSync(SECURE_PID_FILE) && alive(Number(readFileSync(SECURE_PID_FILE, 'utf8')))) {
    console.log(`secured kafka already running (pid ${readFileSync(SECURE_PID_FILE, 'utf8')}); credentials in ${SECURE}`);
    return;
  }
  mkdirSync(SECURE, { recursive: true });
  const credentialsFile = join(SECURE, 'credentials.json');
  const credentials = existsSync(credentialsFile)
    ? JSON.parse(readFileSync(credentialsFile, 'utf8'))
    : { admin: randomBytes(12).toString('hex'), edgebridge: randomBytes(12).toString('hex') };
  writeFileSync(credentialsFile, JSON.stringify(credentials), { mode: 0o600 });
  const kafka = await startSecureKafka({
    dataDir: join(SECURE, 'data'),
    users: [{ username: 'edgebridge', password: credentials.edgebridge }],
    adminPassword: credentials.admin,
    port,
    controllerPort: port + 1,
    detached: true,
  });
  writeFileSync(SECURE_PID_FILE, String(kafka.pid));
  writeFileSync(join(SECURE, 'edgebridge.password'), `${credentials.edgebridge}\n`, { mode: 0o600 });
  // a Kafka client config for the Java tools (kafka-acls.sh --command-config, kafka-console-consumer.sh --consumer.config)
  writeFileSync(
    join(SECURE, 'admin.properties'),
    [
      'security.protocol=SASL_SSL',
      'sasl.mechanism=SCRAM-SHA-512',
      `sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="${credentials.admin}";`,
      'ssl.truststore.type=PEM',
      `ssl.truststore.location=${kafka.caFile}`,
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  console.log(
    [
      `secured kafka ready on SASL_SSL://${kafka.brokers[0]} (pid ${kafka.pid}, log ${kafka.logFile})`,
      `  CA file:             ${kafka.caFile}`,
      `  gateway user:        edgebridge (SCRAM-SHA-512, SCRAM-SHA-256, PLAIN), password in ${join(SECURE, 'edgebridge.password')}`,
      `  admin client config: ${join(SECURE, 'admin.properties')} (super user admin)`,
    ].join('\n'),
  );
}

async function cliStopSecure() {
  if (!existsSync(SECURE_PID_FILE)) {
    console.log('secured kafka is not running (no .kafka/secure/kafka.pid)');
    return;
  }
  const pid = Number(readFileSync(SECURE_PID_FILE, 'utf8'));
  await stopProcess(pid);
  rmSync(SECURE_PID_FILE, { force: true });
  console.log(`secured kafka stopped (pid ${pid})`);
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
  const run = {
    start: cliStart,
    stop: cliStop,
    'start-secure': cliStartSecure,
    'stop-secure': cliStopSecure,
    jars: async () => console.log(ensureKafkaJars()),
  }[command];
  if (!run) {
    console.error('usage: node scripts/kafka.mjs start|stop|start-secure|stop-secure|jars');
    process.exit(64);
  }
  run().catch((err) => {
    console.error(`kafka: ${err.message}`);
    process.exit(1);
  });
}
