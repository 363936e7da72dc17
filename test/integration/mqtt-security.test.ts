import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, writeFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { join } from 'node:path';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { generate } from 'mqtt-packet';
import { describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/schema.js';
import { addUserToFile } from '../../src/ingress/auth/password-file.js';
import { makeCa, type TestCa } from '../helpers/certs.js';
import { kafkaBrokers, startTestGateway, uniqueName } from '../helpers/gateway.js';
import { consumeAll } from '../helpers/kafka.js';
import { mosquittoTool } from '../helpers/mosquitto.js';
import { reading } from '../helpers/publish.js';
import { useCleanups, useTmpDirs } from '../helpers/tmp.js';

type Outcome = { ok: true; client: MqttClient } | { ok: false; code: number | undefined; message: string };

/** Connects once (no reconnects) and reports CONNACK refusal codes and TLS errors. */
function tryConnect(url: string, options: IClientOptions = {}): Promise<Outcome> {
  return new Promise((resolve) => {
    const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: 10_000, ...options });
    client.once('connect', () => resolve({ ok: true, client }));
    client.on('error', (err: Error & { code?: number }) => {
      client.end(true);
      resolve({ ok: false, code: typeof err.code === 'number' ? err.code : undefined, message: err.message });
    });
    client.once('close', () => resolve({ ok: false, code: undefined, message: 'closed' }));
  });
}

async function connected(url: string, options: IClientOptions = {}): Promise<MqttClient> {
  const outcome = await tryConnect(url, options);
  if (!outcome.ok) throw new Error(`connect failed: ${outcome.message}`);
  return outcome.client;
}

/** Resolves when `check` holds, or fails naming `what` after the deadline. */
async function until(what: string, check: () => boolean, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Runs a Mosquitto client tool to its end without blocking the event loop (the gateway under test
 * runs in this process).
 */
async function run(tool: 'mosquitto_pub' | 'mosquitto_sub', args: string[], timeoutMs = 20_000): Promise<{ status: number | null; stderr: string }> {
  const child = spawn(mosquittoTool(tool), args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const [status] = (await once(child, 'exit')) as [number | null];
  clearTimeout(timer);
  return { status, stderr };
}

/** SUBACK return codes; MQTT.js rejects a SUBACK with a refused (0x80) filter, so both are read here. */
async function subscribeCodes(client: MqttClient, filters: Record<string, { qos: 0 | 1 | 2 }>): Promise<number[]> {
  try {
    return (await client.subscribeAsync(filters)).map((g) => g.qos);
  } catch (err) {
    const granted = (err as { packet?: { granted?: number[] } }).packet?.granted;
    if (!granted) throw err;
    return granted;
  }
}

/** A password file written by Debian's real `mosquitto_passwd`. */
function mosquittoPasswordFile(dir: string, users: Record<string, string>): string {
  const file = join(dir, 'passwd');
  const tool = mosquittoTool('mosquitto_passwd');
  let first = true;
  for (const [user, password] of Object.entries(users)) {
    const r = spawnSync(tool, [...(first ? ['-c'] : []), '-b', file, user, password], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`mosquitto_passwd failed: ${r.stderr}`);
    first = false;
  }
  expect(readFileSync(file, 'utf8')).toMatch(/^dev-1:\$7\$101\$/m);
  return file;
}

describe('MQTT security: logins, own-topic ACLs, TLS, takeover', () => {
  const tmp = useTmpDirs();
  const cleanup = useCleanups();

  /**
   * A gateway with the given MQTT config. Unless `forwarding`, its Kafka is unreachable, so that
   * the commit log keeps every stored record for `stored()` to show (forwarded ones are removed).
   */
  async function secureGateway(mqttConfig: Record<string, unknown>, { forwarding = false } = {}) {
    const dir = tmp();
    const topic = uniqueName('iot.secure');
    const overrides = { mqtt: { host: '127.0.0.1', port: 0, ...mqttConfig } } as Partial<ConfigInput>;
    const gateway = await startTestGateway({ dir, topic, overrides, ...(forwarding ? {} : { brokers: ['127.0.0.1:1'] }) });
    cleanup(() => gateway.close());
    const stored = () => gateway.log.readAfter(0, 10_000).map((r) => `${r.deviceId}:${r.payload.toString()}`);
    return { gateway, topic, stored, counters: () => gateway.status().mqtt };
  }

  it('with a mosquitto_passwd file: anonymous and wrong passwords are refused, a device publishes only as itself, # is denied', async () => {
    const dir = tmp();
    const passwordFile = mosquittoPasswordFile(dir, { 'dev-1': 'secret-1', 'dev-2': 'secret-2' });
    const { gateway, topic, counters } = await secureGateway({ auth: { passwordFile } }, { forwarding: true });

    const anonymous = await tryConnect(gateway.url);
    expect(anonymous).toMatchObject({ ok: false, code: 5 });
    const wrong = await tryConnect(gateway.url, { username: 'dev-1', password: 'secret-2' });
    expect(wrong).toMatchObject({ ok: false, code: 4 });
    expect(counters().loginsFailed).toBe(2);

    const dev1 = await connected(gateway.url, { username: 'dev-1', password: 'secret-1', clientId: 'dev-1' });
    cleanup(() => dev1.end(true));
    await dev1.publishAsync('devices/dev-1/telemetry', reading('dev-1', 'b1', 1), { qos: 1 });

    // dev-1 writing into dev-2's topic (e.g. to pre-empt its dedup identity): no PUBACK, disconnected, nothing stored.
    const closed = new Promise<void>((resolve) => dev1.once('close', () => resolve()));
    dev1.publish('devices/dev-2/telemetry', reading('dev-2', 'b2', 1), { qos: 1 });
    await closed;
    expect(counters().publishesDenied).toBe(1);

    const again = await connected(gateway.url, { username: 'dev-1', password: 'secret-1', clientId: 'dev-1' });
    cleanup(() => again.end(true));
    expect(await subscribeCodes(again, { '#': { qos: 1 }, 'devices/dev-2/#': { qos: 1 }, 'devices/dev-1/#': { qos: 1 } })).toEqual([128, 128, 1]);
    expect(counters().subscriptionsDenied).toBe(2);

    // dev-2's real reading is stored although dev-1 tried to send one with its identity first.
    const dev2 = await connected(gateway.url, { username: 'dev-2', password: 'secret-2', clientId: 'dev-2' });
    cleanup(() => dev2.end(true));
    await dev2.publishAsync('devices/dev-2/telemetry', reading('dev-2', 'b2', 1, { real: true }), { qos: 1 });
    const records = await consumeAll(kafkaBrokers(), topic, { expected: 2 });
    expect(records.map((r) => `${r.key}:${r.value.toString()}`).sort()).toEqual([`dev-1:${reading('dev-1', 'b1', 1)}`, `dev-2:${reading('dev-2', 'b2', 1, { real: true })}`]);
    expect(gateway.status().received).toBe(2);
  });

  it('works with the real mosquitto_pub and mosquitto_sub (same password file)', async () => {
    const dir = tmp();
    const passwordFile = mosquittoPasswordFile(dir, { 'dev-1': 'secret-1', 'dev-2': 'secret-2' });
    const { gateway, stored } = await secureGateway({ auth: { passwordFile } });
    const port = String(gateway.mqttAddress.port);
    const pub = (user: string, password: string, topic: string, message: string) =>
      run('mosquitto_pub', ['-h', '127.0.0.1', '-p', port, '-q', '1', '-u', user, '-P', password, '-t', topic, '-m', message]);

    expect((await pub('dev-1', 'secret-1', 'devices/dev-1/telemetry', reading('dev-1', 'm', 1))).status).toBe(0);
    const wrong = await pub('dev-1', 'nope', 'devices/dev-1/telemetry', reading('dev-1', 'm', 2));
    expect(wrong.status).not.toBe(0);
    expect(wrong.stderr).toMatch(/not authori[sz]ed|bad user name or password/i);
    // A denied QoS 1 publish is never acknowledged: mosquitto_pub sees the connection closed.
    expect((await pub('dev-1', 'secret-1', 'devices/dev-2/telemetry', reading('dev-2', 'm', 1))).status).not.toBe(0);
    expect(stored()).toEqual([`dev-1:${reading('dev-1', 'm', 1)}`]);

    // mosquitto_sub on '#' is refused (return code 0x80).
    const sub = spawn(mosquittoTool('mosquitto_sub'), ['-h', '127.0.0.1', '-p', port, '-u', 'dev-2', '-P', 'secret-2', '-t', '#', '-v', '-d'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    sub.stdout.on('data', (d: Buffer) => (output += d.toString()));
    sub.stderr.on('data', (d: Buffer) => (output += d.toString()));
    cleanup(() => sub.kill());
    await until('mosquitto_sub to get its SUBACK', () => /SUBACK|denied/i.test(output));
    expect(output).toMatch(/Subscribed \(mid: \d+\): 128|denied/i);
  });

  it('an ACL file in Mosquitto syntax grants a monitoring user more; deny lines win', async () => {
    const dir = tmp();
    const passwordFile = mosquittoPasswordFile(dir, { 'dev-1': 'secret-1', monitor: 'watch' });
    const aclFile = join(dir, 'acl');
    writeFileSync(aclFile, ['# monitoring', 'user monitor', 'topic read devices/#', 'topic deny devices/dev-1/private', '', 'pattern write site/%u/status'].join('\n'));
    const { gateway, counters } = await secureGateway({ auth: { passwordFile, aclFile } });

    // A persistent session with QoS 1: messages the ACL denies it are not queued for it either.
    const monitor = await connected(gateway.url, { username: 'monitor', password: 'watch', clientId: 'monitor', clean: false });
    cleanup(() => monitor.end(true));
    const got: string[] = [];
    monitor.on('message', (topic) => got.push(topic));
    expect(await subscribeCodes(monitor, { 'devices/#': { qos: 1 }, '#': { qos: 1 } })).toEqual([1, 128]);

    const dev1 = await connected(gateway.url, { username: 'dev-1', password: 'secret-1', clientId: 'dev-1' });
    cleanup(() => dev1.end(true));
    await dev1.publishAsync('devices/dev-1/private', 'p', { qos: 1 }); // its own subtree: allowed, but the monitor may not read it
    await dev1.publishAsync('site/dev-1/status', 'online', { qos: 1 }); // granted by the pattern line
    await dev1.publishAsync('devices/dev-1/telemetry', reading('dev-1', 'a', 1), { qos: 1 });
    await dev1.publishAsync('devices/dev-1/private', 'p2', { qos: 1 });
    await dev1.publishAsync('devices/dev-1/telemetry', reading('dev-1', 'a', 2), { qos: 1 });
    await until('the monitor to receive the telemetry', () => got.length >= 2);
    expect(got).toEqual(['devices/dev-1/telemetry', 'devices/dev-1/telemetry']);
    expect(monitor.connected).toBe(true);
    expect(counters().publishesDenied).toBe(0);
  });

  it('refuses a second connection with the same client id but another identity; the same identity takes over', async () => {
    const dir = tmp();
    const passwordFile = mosquittoPasswordFile(dir, { 'dev-1': 'secret-1', 'dev-2': 'secret-2' });
    const { gateway, counters } = await secureGateway({ auth: { passwordFile } });
    const first = await connected(gateway.url, { username: 'dev-1', password: 'secret-1', clientId: 'sensor-a', clean: false });
    cleanup(() => first.end(true));
    const thief = await tryConnect(gateway.url, { username: 'dev-2', password: 'secret-2', clientId: 'sensor-a', clean: false });
    expect(thief).toMatchObject({ ok: false, code: 5 });
    expect(counters().takeoversRefused).toBe(1);
    expect(first.connected).toBe(true);
    await first.publishAsync('devices/dev-1/telemetry', reading('dev-1', 'x', 1), { qos: 1 });

    // Its persistent session is still dev-1's after it disconnects.
    await first.endAsync();
    expect(await tryConnect(gateway.url, { username: 'dev-2', password: 'secret-2', clientId: 'sensor-a', clean: false })).toMatchObject({ ok: false, code: 5 });
    const back = await connected(gateway.url, { username: 'dev-1', password: 'secret-1', clientId: 'sensor-a', clean: false });
    cleanup(() => back.end(true));
    const takeover = await connected(gateway.url, { username: 'dev-1', password: 'secret-1', clientId: 'sensor-a', clean: false });
    cleanup(() => takeover.end(true));
    await until('the older connection of the same identity to be closed', () => !back.connected);

    // A clean connection followed by a persistent one of the same identity keeps the id its own.
    const clean = await connected(gateway.url, { username: 'dev-1', password: 'secret-1', clientId: 'sensor-b', clean: true });
    const persistent = await connected(gateway.url, { username: 'dev-1', password: 'secret-1', clientId: 'sensor-b', clean: false });
    await until('the clean connection to be taken over', () => !clean.connected);
    clean.end(true);
    await persistent.endAsync();
    expect(await tryConnect(gateway.url, { username: 'dev-2', password: 'secret-2', clientId: 'sensor-b', clean: false })).toMatchObject({ ok: false, code: 5 });

    // A client id that is another user's name cannot be squatted before that device connects.
    expect(await tryConnect(gateway.url, { username: 'dev-2', password: 'secret-2', clientId: 'dev-1', clean: false })).toMatchObject({ ok: false, code: 5 });
    const own = await connected(gateway.url, { username: 'dev-1', password: 'secret-1', clientId: 'dev-1' });
    await own.endAsync();
  });

  it('answers failed logins from one address ever more slowly', async () => {
    const dir = tmp();
    const passwordFile = mosquittoPasswordFile(dir, { 'dev-1': 'secret-1', 'dev-2': 'secret-2' });
    const { gateway, counters } = await secureGateway({ auth: { passwordFile, failedLoginMaxDelayMs: 2000 } });
    const durations: number[] = [];
    for (let i = 0; i < 4; i++) {
      const started = Date.now();
      expect(await tryConnect(gateway.url, { username: 'dev-1', password: `guess-${i}` })).toMatchObject({ ok: false, code: 4 });
      durations.push(Date.now() - started);
    }
    expect(counters().loginsFailed).toBe(4);
    // The answers to the 1st, 2nd, 3rd and 4th failure are held 100, 200, 400 and 800 ms.
    expect(durations[0]).toBeGreaterThanOrEqual(100);
    expect(durations[1]).toBeGreaterThanOrEqual(200);
    expect(durations[2]).toBeGreaterThanOrEqual(400);
    expect(durations[3]).toBeGreaterThanOrEqual(800);
    // Parallel guesses gain little: while 10 failures await their answer, more are refused unchecked (CONNACK 3).
    // (Each failure's answer is now held 1.6-2 s, far longer than 20 connections take to arrive.)
    const guesses = await Promise.all(Array.from({ length: 20 }, (_, i) => tryConnect(gateway.url, { username: 'dev-1', password: `parallel-${i}` })));
    expect(guesses.every((g) => !g.ok)).toBe(true);
    expect(guesses.filter((g) => !g.ok && g.code === 3).length).toBeGreaterThanOrEqual(5);
    // Devices behind the same address are not held up by dev-1's failures: none waits or is refused.
    const others = await Promise.all(Array.from({ length: 4 }, () => tryConnect(gateway.url, { username: 'dev-2', password: 'secret-2' })));
    for (const o of others) {
      expect(o.ok).toBe(true);
      if (o.ok) o.client.end(true);
    }
    // The right password still gets in (a success is never held) and resets the count.
    const ok = await connected(gateway.url, { username: 'dev-1', password: 'secret-1' });
    await ok.endAsync();
  });

  it('re-reads the password file on reload (SIGHUP); a broken file leaves the previous one in force', async () => {
    const dir = tmp();
    const passwordFile = mosquittoPasswordFile(dir, { 'dev-1': 'secret-1' });
    const { gateway } = await secureGateway({ auth: { passwordFile } });
    expect(await tryConnect(gateway.url, { username: 'dev-9', password: 'new' })).toMatchObject({ ok: false, code: 4 });
    addUserToFile(passwordFile, 'dev-9', 'new');
    expect(gateway.reloadAuth()).toBeUndefined();
    (await connected(gateway.url, { username: 'dev-9', password: 'new' })).end(true);
    writeFileSync(passwordFile, 'dev-1 has no hash\n');
    expect(gateway.reloadAuth()?.code).toBe('EB_ERR_AUTH_FILE');
    (await connected(gateway.url, { username: 'dev-1', password: 'secret-1' })).end(true);
  });

  describe('TLS', () => {
    const certs = (): { ca: TestCa; otherCa: TestCa } => {
      const dir = tmp();
      return { ca: makeCa(dir, 'site'), otherCa: makeCa(dir, 'rogue') };
    };

    it('serves MQTT over TLS; a client that does not trust the server certificate fails', async () => {
      const { ca, otherCa } = certs();
      const server = ca.issue('gateway', 'server');
      const passwordFile = mosquittoPasswordFile(tmp(), { 'dev-1': 'secret-1' });
      const { gateway, stored } = await secureGateway({ port: false, auth: { passwordFile }, tls: { host: '127.0.0.1', port: 0, ...server } });
      const url = `mqtts://127.0.0.1:${gateway.mqttAddresses.tls!.port}`;
      const client = await connected(url, { ca: readFileSync(ca.caFile), username: 'dev-1', password: 'secret-1' });
      await client.publishAsync('devices/dev-1/telemetry', reading('dev-1', 't', 1), { qos: 1 });
      await client.endAsync();
      expect(stored()).toEqual([`dev-1:${reading('dev-1', 't', 1)}`]);
      const untrusted = await tryConnect(url, { ca: readFileSync(otherCa.caFile), username: 'dev-1', password: 'secret-1' });
      expect(untrusted.ok).toBe(false);
      expect((untrusted as { message: string }).message).toMatch(/self[- ]signed|unable to verify|certificate/i);
      // mosquitto_pub over TLS with the site CA
      const r = await run('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(gateway.mqttAddresses.tls!.port), '--cafile', ca.caFile, '-q', '1', '-u', 'dev-1', '-P', 'secret-1', '-t', 'devices/dev-1/telemetry', '-m', reading('dev-1', 't', 2)]);
      expect(r.status, r.stderr).toBe(0);
      expect(stored()).toHaveLength(2);
    });

    it('with requireCertificate alone, a certificate identifies the device by its CN, not by the username it claims', async () => {
      const { ca } = certs();
      const server = ca.issue('gateway', 'server');
      const dev1 = ca.issue('dev-1', 'client');
      const { gateway, stored, counters } = await secureGateway({ port: false, tls: { host: '127.0.0.1', port: 0, ...server, caFile: ca.caFile, requireCertificate: true } });
      const url = `mqtts://127.0.0.1:${gateway.mqttAddresses.tls!.port}`;
      const client = await connected(url, { ca: readFileSync(ca.caFile), cert: readFileSync(dev1.certFile), key: readFileSync(dev1.keyFile), username: 'dev-2' });
      await client.publishAsync('devices/dev-1/telemetry', reading('dev-1', 'n', 1), { qos: 1 });
      const closed = new Promise<void>((resolve) => client.once('close', () => resolve()));
      client.publish('devices/dev-2/telemetry', reading('dev-2', 'n', 1), { qos: 1 });
      await closed;
      client.end(true);
      expect(stored()).toEqual([`dev-1:${reading('dev-1', 'n', 1)}`]);
      expect(counters().publishesDenied).toBe(1);
    });

    it('with requireCertificate and useIdentityAsUsername: the certificate CN is the device identity; no or a foreign certificate fails', async () => {
      const { ca, otherCa } = certs();
      const server = ca.issue('gateway', 'server');
      const dev1 = ca.issue('dev-1', 'client');
      const rogue = otherCa.issue('dev-1', 'client');
      const { gateway, stored, counters } = await secureGateway({
        port: false,
        tls: { host: '127.0.0.1', port: 0, ...server, caFile: ca.caFile, requireCertificate: true, useIdentityAsUsername: true },
      });
      const url = `mqtts://127.0.0.1:${gateway.mqttAddresses.tls!.port}`;
      const trust = { ca: readFileSync(ca.caFile) };
      // A certificate holder cannot squat another device's client id for good: the device whose
      // identity the id is takes it back.
      const evilCert = ca.issue('evil', 'client');
      const squatter = await connected(url, { ...trust, cert: readFileSync(evilCert.certFile), key: readFileSync(evilCert.keyFile), clientId: 'dev-1', clean: false });
      await squatter.endAsync();
      (await connected(url, { ...trust, cert: readFileSync(dev1.certFile), key: readFileSync(dev1.keyFile), clientId: 'dev-1', clean: false })).end(true);
      const client = await connected(url, { ...trust, cert: readFileSync(dev1.certFile), key: readFileSync(dev1.keyFile), username: 'dev-2' });
      await client.publishAsync('devices/dev-1/telemetry', reading('dev-1', 'c', 1), { qos: 1 });
      const closed = new Promise<void>((resolve) => client.once('close', () => resolve()));
      client.publish('devices/dev-2/telemetry', reading('dev-2', 'c', 1), { qos: 1 }); // the CONNECT username does not count
      await closed;
      expect(stored()).toEqual([`dev-1:${reading('dev-1', 'c', 1)}`]);

      expect((await tryConnect(url, trust)).ok).toBe(false);
      expect((await tryConnect(url, { ...trust, cert: readFileSync(rogue.certFile), key: readFileSync(rogue.keyFile) })).ok).toBe(false);
      await until('the failed handshakes to be counted', () => counters().tlsHandshakesFailed >= 2);
      const r = await run('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(gateway.mqttAddresses.tls!.port), '--cafile', ca.caFile, '--cert', dev1.certFile, '--key', dev1.keyFile, '-q', '1', '-t', 'devices/dev-1/telemetry', '-m', reading('dev-1', 'c', 2)]);
      expect(r.status, r.stderr).toBe(0);
      expect(stored()).toHaveLength(2);
    });
  });

  it('by default listens on loopback only; MQTT 3.1.1 zero-length client ids: clean=0 refused (0x02), clean=1 given an id', async () => {
    const dir = tmp();
    const gateway = await startTestGateway({ dir, topic: uniqueName('iot.default'), overrides: { mqtt: { port: 0 } } });
    cleanup(() => gateway.close());
    expect(gateway.mqttAddress.address).toBe('127.0.0.1');
    // MQTT.js will not send an empty client id with clean=0; a raw CONNECT does.
    const connack = async (clean: boolean): Promise<number> => {
      const socket = netConnect(gateway.mqttAddress.port, '127.0.0.1');
      socket.on('error', () => undefined);
      // CONNECT: "MQTT" level 4, flags (cleanSession = 0x02), keepalive 30, client id of length 0
      const connect = Buffer.from([0x10, 12, 0, 4, 0x4d, 0x51, 0x54, 0x54, 4, clean ? 0x02 : 0x00, 0, 30, 0, 0]);
      const [data] = (await Promise.all([once(socket, 'data'), socket.write(connect)])) as [[Buffer], boolean];
      socket.destroy();
      expect(data[0][0]).toBe(0x20); // CONNACK
      return data[0][3]!;
    };
    expect(await connack(false)).toBe(2);
    expect(await connack(true)).toBe(0);
    const clean = await connected(gateway.url, { clientId: '', clean: true });
    await clean.publishAsync('devices/d/telemetry', 'x', { qos: 1 });
    await clean.endAsync();
  });

  it('serves MQTT over WebSocket with the same logins and topics; a message larger than the limit is refused by its header', async () => {
    const dir = tmp();
    const passwordFile = mosquittoPasswordFile(dir, { 'dev-1': 'secret-1' });
    const { gateway, stored, counters } = await secureGateway({ port: false, maxPayloadBytes: 1024, auth: { passwordFile }, websocket: { host: '127.0.0.1', port: 0 } });
    const url = `ws://127.0.0.1:${gateway.mqttAddresses.websocket!.port}/mqtt`;
    expect(await tryConnect(url, { username: 'dev-1', password: 'wrong' })).toMatchObject({ ok: false, code: 4 });
    const client = await connected(url, { username: 'dev-1', password: 'secret-1', clientId: 'dev-1' });
    await client.publishAsync('devices/dev-1/telemetry', reading('dev-1', 'w', 1), { qos: 1 });
    expect(await subscribeCodes(client, { '#': { qos: 0 } })).toEqual([128]);
    const closed = new Promise<void>((resolve) => client.once('close', () => resolve()));
    client.publish('devices/dev-1/telemetry', Buffer.alloc(64 * 1024), { qos: 1 });
    await closed;
    client.end(true);
    expect(stored()).toEqual([`dev-1:${reading('dev-1', 'w', 1)}`]);
    expect(counters().loginsFailed).toBe(1);
    // A plain HTTP request gets an explanation, not a hang.
    const res = await fetch(`http://127.0.0.1:${gateway.mqttAddresses.websocket!.port}/`);
    expect(res.status).toBe(426);
  });

  /**
   * A gateway whose password check is slow (a million PBKDF2 iterations), and a raw connection
   * that has sent its CONNECT and is being logged in 50 ms later.
   */
  async function slowLogin() {
    const passwordFile = join(tmp(), 'passwd');
    addUserToFile(passwordFile, 'dev-1', 'secret-1', 1_000_000);
    const { gateway, stored } = await secureGateway({ auth: { passwordFile } });
    const socket = netConnect(gateway.mqttAddress.port, '127.0.0.1');
    socket.on('error', () => undefined);
    socket.resume();
    const closed = once(socket, 'close');
    socket.write(generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId: 'dev-1', keepalive: 30, username: 'dev-1', password: Buffer.from('secret-1') }));
    await new Promise((resolve) => setTimeout(resolve, 50));
    return { gateway, stored, socket, closed };
  }

  it('stores QoS 0 readings a device sends right behind its CONNECT and then closes, while its login is checked', async () => {
    // MQTT 3.1.1 lets a client send before the CONNACK [MQTT-3.1.4]; a sensor that wakes, sends and sleeps does.
    const { stored, socket, closed } = await slowLogin();
    for (let seq = 1; seq <= 3; seq++) {
      socket.write(generate({ cmd: 'publish', topic: 'devices/dev-1/telemetry', payload: Buffer.from(reading('dev-1', 'q0', seq)), qos: 0, dup: false, retain: false }));
    }
    socket.end(generate({ cmd: 'disconnect' }));
    await closed;
    await until('the three readings to be stored', () => stored().length >= 3);
    expect(stored()).toEqual([1, 2, 3].map((seq) => `dev-1:${reading('dev-1', 'q0', seq)}`));
  });

  it('stops while a login is being checked (aedes leaves such a connection open)', async () => {
    const { gateway, closed } = await slowLogin();
    await gateway.close();
    await closed;
  });

  it('acknowledges a routed QoS 2 reading although retained messages of another device fill the memory budget', async () => {
    const dir = tmp();
    const passwordFile = mosquittoPasswordFile(dir, { 'dev-1': 'secret-1', 'dev-2': 'secret-2' });
    const { gateway, stored, counters } = await secureGateway({ auth: { passwordFile }, limits: { maxSessionBytes: '1MiB' } });
    const hog = await connected(gateway.url, { username: 'dev-1', password: 'secret-1', clientId: 'dev-1' });
    // Fill the budget to the last few bytes: each size until one is refused, then smaller ones.
    let n = 0;
    for (const size of [200_000, 20_000, 2_000, 200, 20, 1]) {
      const refusedBefore = counters().retainedRefused;
      while (counters().retainedRefused === refusedBefore) {
        await hog.publishAsync(`devices/dev-1/s/${n++}`, Buffer.alloc(size, 0x61), { qos: 1, retain: true });
      }
    }
    hog.end(true);
    const dev2 = await connected(gateway.url, { username: 'dev-2', password: 'secret-2', clientId: 'dev-2' });
    cleanup(() => dev2.end(true));
    await dev2.publishAsync('devices/dev-2/telemetry', reading('dev-2', 'q2', 1), { qos: 2 });
    await dev2.publishAsync('devices/dev-2/telemetry', reading('dev-2', 'q2', 2), { qos: 2 });
    expect(stored()).toEqual([1, 2].map((seq) => `dev-2:${reading('dev-2', 'q2', seq)}`));
  });

  it('refuses topics with U+0000 or invalid UTF-8 (they would collapse into one device ID)', async () => {
    const { gateway, stored, counters } = await secureGateway({});
    for (const [i, level] of [Buffer.from([0x64, 0xc0, 0x80]), Buffer.from('d\u0000x'), Buffer.from([0x64, 0xff, 0x78])].entries()) {
      const topic = Buffer.concat([Buffer.from('devices/'), level, Buffer.from('/telemetry')]);
      const socket = netConnect(gateway.mqttAddress.port, '127.0.0.1');
      socket.on('error', () => undefined);
      socket.resume(); // read the CONNACK, so that the server's FIN is seen
      const closed = once(socket, 'close');
      socket.write(generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId: `raw-${i}`, keepalive: 30 }));
      // PUBLISH QoS 1 with the raw topic bytes
      const body = Buffer.concat([Buffer.from([topic.length >> 8, topic.length & 0xff]), topic, Buffer.from([0, 1]), Buffer.from('{}')]);
      socket.write(Buffer.concat([Buffer.from([0x32, body.length]), body]));
      await closed;
    }
    expect(stored()).toEqual([]);
    expect(counters().topicsRefused).toBe(3);
  });

  it('cuts off a packet whose header announces more than the limit, on any topic, before its body arrives', async () => {
    const { gateway, counters } = await secureGateway({ maxPayloadBytes: 1024 });
    const socket = netConnect(gateway.mqttAddress.port, '127.0.0.1');
    socket.on('error', () => undefined);
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    socket.write(generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId: 'big', keepalive: 30 }));
    // A PUBLISH header announcing 100 MB on an unrouted topic, then only a few bytes of it.
    socket.write(Buffer.from([0x30, 0x80, 0x80, 0x80, 0x30, 0x00, 0x01, 0x78]));
    await closed;
    expect(counters().oversized).toBe(1);
  });
});
