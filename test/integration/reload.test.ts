import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { afterEach, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import type { ConfigInput } from '../../src/config/schema.js';
import { addUserToFile } from '../../src/ingress/auth/password-file.js';
import { kafkaBrokers, testConfig, uniqueName } from '../helpers/gateway.js';
import { consumeAll } from '../helpers/kafka.js';
import { spawnGateway, type GatewayProcess } from '../helpers/process.js';
import { reading } from '../helpers/publish.js';
import { until } from '../helpers/raw-mqtt.js';
import { useTmpDirs } from '../helpers/tmp.js';

type Line = Record<string, unknown>;

/**
 * `edgebridge start` processes whose config file is rewritten and reloaded with SIGHUP while an
 * MQTT client stays connected.
 */
describe('SIGHUP reloads the config without dropping connections', () => {
  const tmp = useTmpDirs();
  const running: { gw?: GatewayProcess; clients: MqttClient[] } = { clients: [] };

  afterEach(async () => {
    for (const client of running.clients.splice(0)) await client.endAsync(true);
    const gw = running.gw;
    running.gw = undefined;
    if (gw && gw.child.exitCode === null) {
      gw.child.kill('SIGKILL');
      await gw.exited;
    }
  });

  function baseConfig(dir: string, topic: string): ConfigInput {
    return { ...testConfig({ dir: join(dir, 'data'), topic }), forward: { retry: { initialMs: 100, maxMs: 1000 } } };
  }

  async function start(config: ConfigInput, dir: string): Promise<GatewayProcess> {
    running.gw = await spawnGateway(config, dir);
    return running.gw;
  }

  /** A client that must stay connected: every close, offline, reconnect or disconnect is recorded. */
  async function device(gw: GatewayProcess, clientId: string, password?: string): Promise<{ client: MqttClient; events: string[] }> {
    const login = password === undefined ? {} : { username: clientId, password };
    const client = await mqtt.connectAsync(gw.url, { clientId, reconnectPeriod: 0, ...login });
    running.clients.push(client);
    const events: string[] = [];
    for (const event of ['close', 'offline', 'reconnect', 'disconnect'] as const) client.on(event, () => events.push(event));
    return { client, events };
  }

  /** Publishes with QoS 1 and waits for the PUBACK; fails if the connection closes first (MQTT.js would wait on). */
  function acked(client: MqttClient, topic: string, payload: string | Buffer): Promise<void> {
    return new Promise((resolve, reject) => {
      const closed = () => reject(new Error(`the connection closed before the PUBACK of a publish to ${topic}`));
      client.once('close', closed);
      client.publish(topic, payload, { qos: 1 }, (err) => {
        client.off('close', closed);
        if (err) reject(err);
        else resolve();
      });
    });
  }

  /** Rewrites the config file, sends SIGHUP, and returns the lines logged up to the reload's verdict. */
  async function reload(gw: GatewayProcess, config: ConfigInput | string): Promise<Line[]> {
    writeFileSync(gw.configFile, typeof config === 'string' ? config : stringify(config));
    const from = gw.lines.length;
    process.kill(gw.child.pid!, 'SIGHUP');
    const done = (l: Line) => l.msg === 'config reloaded' || l.msg === 'config not reloaded: the running config stays in force';
    await until('the reload to be logged', () => gw.lines.slice(from).some(done));
    return gw.lines.slice(from);
  }

  const valueOf = async (topic: string, expected: number) =>
    (await consumeAll(kafkaBrokers(), topic, { expected, settleMs: 1000 })).map((r) => ({ key: r.key, value: r.value.toString() }));

  it('a route added and log.level debug apply at once; the connected client publishes to the new route', async () => {
    const dir = tmp();
    const telemetry = uniqueName('iot.reload-telemetry');
    const status = uniqueName('iot.reload-status');
    const config = baseConfig(dir, telemetry);
    const gw = await start(config, dir);
    const { client, events } = await device(gw, 'd1');
    await acked(client, 'devices/d1/telemetry', reading('d1', 'b1', 1));
    expect(gw.lines.filter((l) => l.level === 20)).toEqual([]);

    const lines = await reload(gw, {
      ...config,
      routes: [...config.routes!, { mqtt: 'devices/{deviceId}/status', kafka: status }],
      log: { level: 'debug' },
    });
    expect(lines.find((l) => l.msg === 'config reloaded')).toMatchObject({ level: 30, applied: ['routes', 'log.level'] });
    expect(lines.filter((l) => (l.level as number) >= 40)).toEqual([]);
    const reloadedAt = gw.lines.findIndex((l) => l.msg === 'config reloaded');

    // the same connection, never closed, publishes on the new route
    await acked(client, 'devices/d1/status', reading('d1', 'b1', 2, { online: true }));
    expect(await valueOf(status, 1)).toEqual([{ key: 'd1', value: reading('d1', 'b1', 2, { online: true }) }]);
    expect(await valueOf(telemetry, 1)).toEqual([{ key: 'd1', value: reading('d1', 'b1', 1) }]);
    // The new topic's creation logs kafkajs lines at debug in the forwarder's thread, relayed by
    // the main thread: both loggers are at debug now.
    await until('a debug line from the forwarder thread', () => gw.lines.slice(reloadedAt).some((l) => l.level === 20 && l.stage === 'forward'));
    expect(events).toEqual([]);
    expect(client.connected).toBe(true);
  });

  it('with logins, the access rule follows the new routes, and the password file is read again', async () => {
    const dir = tmp();
    const telemetry = uniqueName('iot.reload-auth');
    const state = uniqueName('iot.reload-state');
    const passwordFile = join(dir, 'passwd');
    addUserToFile(passwordFile, 'meter-1', 'secret-1');
    const base = baseConfig(dir, telemetry);
    const config = { ...base, mqtt: { ...base.mqtt, auth: { passwordFile } } };
    const gw = await start(config, dir);
    const { client, events } = await device(gw, 'meter-1', 'secret-1');
    await expect(mqtt.connectAsync(gw.url, { clientId: 'meter-2', username: 'meter-2', password: 'secret-2', reconnectPeriod: 0 })).rejects.toThrow();

    addUserToFile(passwordFile, 'meter-2', 'secret-2');
    const lines = await reload(gw, { ...config, routes: [...config.routes!, { mqtt: 'sites/+/{deviceId}/state', kafka: state }] });
    expect(lines.find((l) => l.msg === 'config reloaded')).toMatchObject({ applied: ['routes'], passwordFile });
    // Outside the device's subtree: allowed only as a topic the new route gives to this device
    // (before the reload it was an unrouted topic of no one's, denied).
    await acked(client, 'sites/north/meter-1/state', reading('meter-1', 'b1', 1));
    expect(await valueOf(state, 1)).toEqual([{ key: 'meter-1', value: reading('meter-1', 'b1', 1) }]);
    const second = await device(gw, 'meter-2', 'secret-2');
    await acked(second.client, 'devices/meter-2/telemetry', reading('meter-2', 'b1', 1));
    expect(await valueOf(telemetry, 1)).toEqual([{ key: 'meter-2', value: reading('meter-2', 'b1', 1) }]);
    expect(events).toEqual([]);
  });

  it('a lowered mqtt.maxPayloadBytes refuses a publish that was accepted before the reload', async () => {
    const dir = tmp();
    const topic = uniqueName('iot.reload-limits');
    const config = baseConfig(dir, topic);
    const gw = await start(config, dir);
    const { client, events } = await device(gw, 'd2');
    const large = Buffer.alloc(2000, 'x');
    await acked(client, 'devices/d2/telemetry', large);

    const lines = await reload(gw, { ...config, mqtt: { ...config.mqtt, maxPayloadBytes: 1024 } });
    expect(lines.find((l) => l.msg === 'config reloaded')).toMatchObject({ applied: ['mqtt.maxPayloadBytes'] });
    // the reload closed nothing: a small publish on the same connection is acknowledged
    await acked(client, 'devices/d2/telemetry', Buffer.alloc(1000, 'y'));
    expect(events).toEqual([]);

    // the large one now gets no PUBACK, and the client is disconnected (as for any oversized publish)
    let pubacked = false;
    client.publish('devices/d2/telemetry', large, { qos: 1 }, (err) => (pubacked = !err));
    await until('the client to be disconnected', () => events.includes('close'));
    expect(pubacked).toBe(false);
    expect(gw.lines.find((l) => String(l.msg).startsWith('publish larger than mqtt.maxPayloadBytes refused'))).toMatchObject({
      maxPayloadBytes: 1024,
      bytes: 2000,
    });
    expect((await valueOf(topic, 2)).map((r) => r.value.length)).toEqual([2000, 1000]);
  });

  it('an invalid config is logged and changes nothing: the gateway goes on forwarding with the old one', async () => {
    const dir = tmp();
    const topic = uniqueName('iot.reload-invalid');
    const config = baseConfig(dir, topic);
    const gw = await start(config, dir);
    const { client, events } = await device(gw, 'd3');

    const lines = await reload(gw, { ...config, routes: [{ mqtt: 'devices/+/telemetry', kafka: uniqueName('iot.never') }], log: { level: 'debug' } });
    const error = lines.find((l) => l.msg === 'config not reloaded: the running config stays in force');
    expect(error).toMatchObject({ level: 50, code: 'EB_ERR_CONFIG_INVALID' });
    expect(error!.err).toContain('routes[0].mqtt');
    expect(error!.err).toContain(gw.configFile);
    expect(lines.filter((l) => l.msg === 'config reloaded' || l.level === 20)).toEqual([]);

    await acked(client, 'devices/d3/telemetry', reading('d3', 'b1', 1));
    expect(await valueOf(topic, 1)).toEqual([{ key: 'd3', value: reading('d3', 'b1', 1) }]);
    expect(events).toEqual([]);

    // a file that is not YAML at all: the same
    const unreadable = await reload(gw, 'routes: [unclosed\n');
    expect(unreadable.find((l) => l.msg === 'config not reloaded: the running config stays in force')).toMatchObject({ code: 'EB_ERR_CONFIG_READ' });
  });

  it('a change that needs a restart is logged with its key paths and not applied', async () => {
    const dir = tmp();
    const topic = uniqueName('iot.reload-restart');
    const config = baseConfig(dir, topic);
    const gw = await start(config, dir);
    const { client, events } = await device(gw, 'd4');
    const otherDir = join(dir, 'elsewhere');

    const lines = await reload(gw, { ...config, kafka: { brokers: ['127.0.0.1:1'] }, storage: { dir: otherDir } });
    expect(lines.filter((l) => l.msg === 'config changed: restart to apply')).toEqual([
      expect.objectContaining({ level: 40, changed: ['kafka.brokers', 'storage.dir'] }),
    ]);
    expect(lines.find((l) => l.msg === 'config reloaded')).toMatchObject({ applied: [] });

    // still the old brokers and storage.dir
    await acked(client, 'devices/d4/telemetry', reading('d4', 'b1', 1));
    expect(await valueOf(topic, 1)).toEqual([{ key: 'd4', value: reading('d4', 'b1', 1) }]);
    expect(existsSync(otherDir)).toBe(false);
    expect(events).toEqual([]);
  });
});
