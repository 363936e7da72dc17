#!/usr/bin/env node
// npm run interop: the Eclipse Paho MQTT interoperability suites (3.1.1: client_test.py, 10 tests;
// 5: client_test5.py, 27 tests; vendored in test/interop/paho, see its NOTICE.md) against the built
// gateway (dist/), optionally beside Debian's Mosquitto as the baseline. Each test runs alone, in
// its own python3 process, with a deadline; a table of passed/failed per test and totals is printed.
// Nothing is fetched from the network. Not part of `npm test`: a full run takes 8-15 minutes (the
// suites sleep between steps) and a few tests depend on timing, so it is a measurement, not a gate
// (use --min-v5/--min-v311 to make it one).
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, writeFileSync, closeSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import YAML from 'yaml';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const SUITE_DIR = join(ROOT, 'test', 'interop', 'paho');
const RUNONE = join(ROOT, 'scripts', 'paho-runone.py');
const CLI = join(ROOT, 'dist', 'src', 'cli.js');
const MOSQUITTO = '/usr/sbin/mosquitto';
const SUITES = { '311': 'client_test.py', '5': 'client_test5.py' };

const USAGE = `usage: node scripts/paho-interop.mjs [options]   (npm run interop -- [options])
  --suite 311|5|all     which suite(s) (default all)
  --only a,b            only these tests (names with or without the test_ prefix)
  --timeout S           deadline per test, seconds (default 60)
  --mosquitto           also run ${MOSQUITTO} (defaults + the same ACL) as the baseline
  --aedes               also run plain aedes (node_modules, patched; scripts/paho-aedes-server.mjs):
                        which failures come from aedes, which from the gateway's layer
  --parallel            run the brokers at the same time (each one's tests stay serial)
  --kafka HOST:PORT     Kafka for the gateway (default none: 127.0.0.1:1, unreachable - the gateway
                        acknowledges from its commit log and keeps the records there)
  --merge FILE          YAML deep-merged into the generated gateway config (e.g. mqtt.* settings)
  --logs DIR            where configs, broker logs and one log per test go (default a new temp dir)
  --json FILE           also write the results as JSON
  --min-v5 N, --min-v311 N   exit 1 if the gateway passes fewer`;

const { values: opt } = parseArgs({
  options: {
    suite: { type: 'string', default: 'all' },
    only: { type: 'string' },
    timeout: { type: 'string', default: '60' },
    mosquitto: { type: 'boolean', default: false },
    aedes: { type: 'boolean', default: false },
    parallel: { type: 'boolean', default: false },
    kafka: { type: 'string' },
    merge: { type: 'string' },
    logs: { type: 'string' },
    json: { type: 'string' },
    'min-v5': { type: 'string' },
    'min-v311': { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});
if (opt.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}
const fail = (message) => {
  process.stderr.write(`paho-interop: ${message}\n`);
  process.exit(2);
};
const suiteKeys = opt.suite === 'all' ? ['311', '5'] : [opt.suite];
if (!suiteKeys.every((k) => k in SUITES)) fail(`--suite must be 311, 5 or all, not "${opt.suite}"`);
const timeoutMs = Number(opt.timeout) * 1000;
if (!(timeoutMs > 0)) fail(`--timeout must be a positive number of seconds, not "${opt.timeout}"`);
if (!existsSync(CLI)) fail(`${CLI} is missing: run npm run build first (npm run interop does)`);
if (opt.mosquitto && !existsSync(MOSQUITTO)) fail(`${MOSQUITTO} is missing: apt-get install mosquitto, or run without --mosquitto`);
if (spawnSync('python3', ['--version']).status !== 0) fail('python3 is missing: the Paho suites are Python 3 (standard library only)');
const only = opt.only?.split(',').map((t) => (t.startsWith('test') ? t : `test_${t}`));

if (only) {
  const known = new Set(suiteKeys.flatMap((k) => allTestsOf(SUITES[k])));
  const unknown = only.filter((t) => !known.has(t));
  if (unknown.length > 0) fail(`no such test in ${suiteKeys.map((k) => SUITES[k]).join(' or ')}: ${unknown.join(', ')}`);
}

const LOGS = opt.logs ? resolve(opt.logs) : mkdtempSync(join(tmpdir(), 'paho-interop-'));
// Mosquitto started as root drops to its own user: it must be able to read its ACL file here.
chmodSync(LOGS, 0o755);
mkdirSync(LOGS, { recursive: true });
const say = (line) => process.stdout.write(`${line}\n`);

/** The tests unittest collects from a suite: methods of class Test whose name starts with "test". */
function allTestsOf(suiteFile) {
  return [...readFileSync(join(SUITE_DIR, suiteFile), 'utf8').matchAll(/^ {4}def (test\w*)\(self/gm)].map((m) => m[1]);
}
function testsOf(suiteFile) {
  const names = allTestsOf(suiteFile);
  return only ? names.filter((n) => only.includes(n)) : names;
}

function freePort() {
  return new Promise((ok, ko) => {
    const server = createServer();
    server.once('error', ko);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
  });
}

const CONNECT_PROBE = Buffer.from([0x10, 12, 0, 4, 0x4d, 0x51, 0x54, 0x54, 4, 0x02, 0, 60, 0, 0]);

async function waitForPort(port, child, what) {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${what} exited (code ${child.exitCode}) before listening; see its log in ${LOGS}`);
    // Ready means answering an MQTT 3.1.1 CONNECT (empty client id, clean session) with a CONNACK,
    // not only accepting TCP: the first test must not race the broker's start.
    const up = await new Promise((ok) => {
      const socket = connect(port, '127.0.0.1', () => socket.write(CONNECT_PROBE));
      const timer = setTimeout(() => socket.destroy(), 2000);
      socket.once('data', (data) => {
        clearTimeout(timer);
        socket.end(Buffer.from([0xe0, 0x00]));
        ok(data[0] === 0x20);
      });
      socket.once('error', () => ok(false));
      socket.once('close', () => ok(false));
    });
    if (up) return;
    await sleep(200);
  }
  throw new Error(`${what} did not listen on 127.0.0.1:${port} within 30 s; see its log in ${LOGS}`);
}

async function stop(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((ok) => child.once('exit', ok));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  await exited;
  clearTimeout(timer);
}

function isPlainObject(v) {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
function deepMerge(base, extra) {
  const out = { ...base };
  for (const [k, v] of Object.entries(extra)) out[k] = isPlainObject(v) && isPlainObject(base[k]) ? deepMerge(base[k], v) : v;
  return out;
}

// An ACL that refuses subscriptions to test/nosubscribe, as test_subscribe_failure assumes the broker
// is configured (both suites' -n option); every other topic stays open to the anonymous test clients.
const ACL = 'topic deny test/nosubscribe\n';

async function startGateway(dir) {
  const port = await freePort();
  const aclFile = join(dir, 'acl');
  writeFileSync(aclFile, ACL);
  let config = {
    gateway: { id: 'paho-interop' },
    mqtt: { host: '127.0.0.1', port, auth: { allowAnonymous: true, aclFile } },
    kafka: { brokers: [opt.kafka ?? '127.0.0.1:1'] },
    storage: { dir: join(dir, 'data') },
    admin: { enabled: false },
    // Every test topic is routed (stored in the commit log before it is acknowledged), so the suites
    // exercise the gateway's own publish path; "{deviceId}/#" covers TopicA, TopicA/B, Topic/C,
    // client_test5/x, "/{deviceId}/#" covers /TopicA. $-topics never match a route.
    routes: [
      { mqtt: '{deviceId}/#', kafka: 'paho-interop' },
      { mqtt: '/{deviceId}/#', kafka: 'paho-interop' },
    ],
  };
  if (opt.merge) config = deepMerge(config, YAML.parse(readFileSync(opt.merge, 'utf8')) ?? {});
  const configFile = join(dir, 'edgebridge.yaml');
  writeFileSync(configFile, YAML.stringify(config));
  const log = openSync(join(dir, 'edgebridge.log'), 'w');
  const child = spawn(process.execPath, [CLI, 'start', '--config', configFile], { stdio: ['ignore', log, log] });
  closeSync(log);
  brokerProcesses.add(child); // stopped with the rest if another broker fails to start
  await waitForPort(port, child, 'the gateway');
  return { child, port, label: `edgebridge (${configFile})` };
}

async function startMosquitto(dir) {
  const port = await freePort();
  const aclFile = join(dir, 'acl');
  // Mosquitto denies what an ACL file does not grant: grant everything else to anonymous clients.
  writeFileSync(aclFile, `${ACL}topic readwrite #\n`);
  const configFile = join(dir, 'mosquitto.conf');
  writeFileSync(configFile, `listener ${port} 127.0.0.1\nallow_anonymous true\nacl_file ${aclFile}\n`);
  const log = openSync(join(dir, 'mosquitto.log'), 'w');
  const child = spawn(MOSQUITTO, ['-c', configFile], { stdio: ['ignore', log, log] });
  closeSync(log);
  brokerProcesses.add(child); // stopped with the rest if another broker fails to start
  await waitForPort(port, child, 'mosquitto');
  return { child, port, label: `mosquitto (${configFile})` };
}

async function startAedes(dir) {
  const port = await freePort();
  const log = openSync(join(dir, 'aedes.log'), 'w');
  const child = spawn(process.execPath, [join(ROOT, 'scripts', 'paho-aedes-server.mjs'), String(port)], { stdio: ['ignore', log, log] });
  closeSync(log);
  brokerProcesses.add(child); // stopped with the rest if another broker fails to start
  await waitForPort(port, child, 'aedes');
  return { child, port, label: 'plain aedes (default options)' };
}

// Ctrl-C: end the running tests (each in its own process group) and the brokers this run started.
const running = new Set();
const brokerProcesses = new Set();
function stopEverything() {
  for (const pid of running) {
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  for (const child of brokerProcesses) child.kill('SIGTERM');
}
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    stopEverything();
    process.exit(130);
  });
}

/** One test in its own python3 process group, killed at the deadline. */
function runOne(suiteFile, test, port, logFile) {
  return new Promise((ok) => {
    const out = openSync(logFile, 'w');
    const started = Date.now();
    const child = spawn('python3', [RUNONE, SUITE_DIR, suiteFile, '127.0.0.1', String(port), test], {
      stdio: ['ignore', out, out],
      detached: true,
      env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' },
    });
    closeSync(out);
    running.add(child.pid);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }, timeoutMs);
    child.once('exit', (code) => {
      running.delete(child.pid);
      clearTimeout(timer);
      const seconds = Math.round((Date.now() - started) / 1000);
      ok({ result: timedOut ? 'timeout' : code === 0 ? 'passed' : 'failed', seconds });
    });
  });
}

async function runBroker(name, start) {
  const dir = join(LOGS, name);
  mkdirSync(dir, { recursive: true });
  const broker = await start(dir);
  brokerProcesses.add(broker.child);
  say(`${name}: ${broker.label}, port ${broker.port}`);
  const results = {};
  try {
    for (const key of suiteKeys) {
      const suiteFile = SUITES[key];
      results[key] = {};
      mkdirSync(join(dir, `v${key}`), { recursive: true });
      for (const test of testsOf(suiteFile)) {
        const r = await runOne(suiteFile, test, broker.port, join(dir, `v${key}`, `${test}.log`));
        results[key][test] = r.result;
        say(`  ${name} v${key} ${test}: ${r.result} (${r.seconds} s)`);
      }
    }
  } finally {
    await stop(broker.child);
    brokerProcesses.delete(broker.child);
  }
  return results;
}

const brokers = [['edgebridge', startGateway]];
if (opt.mosquitto) brokers.push(['mosquitto', startMosquitto]);
if (opt.aedes) brokers.push(['aedes', startAedes]);
say(`Paho interop: suites ${suiteKeys.map((k) => SUITES[k]).join(', ')}, ${opt.timeout} s per test, logs in ${LOGS}`);
let all;
try {
  all = opt.parallel
    ? Object.fromEntries(await Promise.all(brokers.map(async ([name, start]) => [name, await runBroker(name, start)])))
    : Object.fromEntries(await brokers.reduce(async (acc, [name, start]) => [...(await acc), [name, await runBroker(name, start)]], []));
} catch (err) {
  // one broker failed to start: the others (--parallel) and their running tests go too
  stopEverything();
  fail(err instanceof Error ? err.message : String(err));
}

// The table: one row per test, one column per broker; totals per suite.
const names = Object.keys(all);
const mark = { passed: 'pass', failed: 'FAIL', timeout: 'TIMEOUT' };
say('');
for (const key of suiteKeys) {
  const tests = Object.keys(all[names[0]][key]);
  const width = Math.max(...tests.map((t) => t.length), 10);
  say(`MQTT ${key === '5' ? '5' : '3.1.1'} (${SUITES[key]})`);
  say(`| ${'test'.padEnd(width)} | ${names.map((n) => n.padEnd(10)).join(' | ')} |`);
  say(`|${'-'.repeat(width + 2)}|${names.map(() => '-'.repeat(12)).join('|')}|`);
  for (const t of tests) say(`| ${t.padEnd(width)} | ${names.map((n) => mark[all[n][key][t]].padEnd(10)).join(' | ')} |`);
  const totals = names.map((n) => {
    const rs = Object.values(all[n][key]);
    return `${rs.filter((r) => r === 'passed').length}/${rs.length}`.padEnd(10);
  });
  say(`| ${'passed'.padEnd(width)} | ${totals.join(' | ')} |`);
  say('');
}
say(`logs: ${LOGS}`);
if (opt.json) writeFileSync(opt.json, `${JSON.stringify({ timeoutSeconds: Number(opt.timeout), results: all }, null, 2)}\n`);

const passed = (key) => Object.values(all.edgebridge[key] ?? {}).filter((r) => r === 'passed').length;
const short = [
  ['5', opt['min-v5']],
  ['311', opt['min-v311']],
].filter(([key, min]) => min !== undefined && suiteKeys.includes(key) && passed(key) < Number(min));
for (const [key, min] of short) process.stderr.write(`paho-interop: the gateway passed ${passed(key)} MQTT ${key} tests, fewer than --min-v${key} ${min}\n`);
process.exit(short.length > 0 ? 1 : 0);
