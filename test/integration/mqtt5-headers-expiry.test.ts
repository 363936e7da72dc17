import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { kafkaBrokers, startTestGateway, uniqueName } from '../helpers/gateway.js';
import { FaultKafka } from '../helpers/fault-kafka.js';
import { consumeAll, type ConsumedRecord } from '../helpers/kafka.js';
import { mosquittoTool } from '../helpers/mosquitto.js';
import { until } from '../helpers/raw-mqtt.js';
import { useCleanups, useTmpDirs } from '../helpers/tmp.js';

const run = promisify(execFile);

/** The record's headers in order, values as text (binary ones compared as bytes separately). */
const names = (r: ConsumedRecord) => r.headerList.map(([k]) => k);
const textPairs = (r: ConsumedRecord) => r.headerList.map(([k, v]) => [k, v.toString('utf8')]);

describe('MQTT 5 at the edge: what reaches Kafka from a v5 publish', () => {
  const tmp = useTmpDirs();
  const cleanup = useCleanups();

  it('user properties arrive as headers in the order sent (a, b, a), content type, payload format, response topic and correlation data as headers; a device never sets a gateway header', async () => {
    const topic = uniqueName('iot.v5headers');
    const gw = await startTestGateway({ dir: tmp(), topic, gatewayId: 'gw-v5' });
    cleanup(() => gw.close());
    const port = String(gw.mqttAddress.port);

    // Debian's mosquitto_pub: user properties interleaved (an object, as MQTT.js takes them, cannot say a, b, a)
    await run(mosquittoTool('mosquitto_pub'), [
      '-V', 'mqttv5', '-h', '127.0.0.1', '-p', port, '-i', 'dev-mosq', '-q', '1',
      '-t', 'devices/dev-mosq/telemetry', '-m', '{"t":21.5}',
      '-D', 'publish', 'user-property', 'a', '1',
      '-D', 'publish', 'user-property', 'b', '2',
      '-D', 'publish', 'user-property', 'a', '3',
      '-D', 'publish', 'user-property', 'gateway-id', 'spoofed',
      '-D', 'publish', 'content-type', 'application/json',
      '-D', 'publish', 'payload-format-indicator', '1',
    ]);

    // MQTT.js v5: response topic and binary correlation data, payload format 0 (bytes)
    const client = await mqtt.connectAsync(gw.url, { protocolVersion: 5, clientId: 'dev-js', reconnectPeriod: 0 });
    cleanup(() => client.endAsync());
    const correlation = Buffer.from([0x00, 0xff, 0x10, 0x80]);
    await client.publishAsync('devices/dev-js/telemetry', Buffer.from([1, 2, 3]), {
      qos: 1,
      properties: {
        contentType: 'application/octet-stream',
        payloadFormatIndicator: false,
        responseTopic: 'devices/dev-js/replies',
        correlationData: correlation,
        userProperties: { site: 'north', 'mqtt-topic': 'spoofed' },
      },
    });
    // MQTT 3.1.1: only the gateway's headers
    const old = await mqtt.connectAsync(gw.url, { protocolVersion: 4, clientId: 'dev-311', reconnectPeriod: 0 });
    cleanup(() => old.endAsync());
    await old.publishAsync('devices/dev-311/telemetry', 'x', { qos: 1 });

    const records = await consumeAll(kafkaBrokers(), topic, { expected: 3 });
    expect(records).toHaveLength(3);
    const byKey = new Map(records.map((r) => [r.key, r]));

    const mosq = byKey.get('dev-mosq')!;
    expect(textPairs(mosq)).toEqual([
      ['mqtt-topic', 'devices/dev-mosq/telemetry'],
      ['gateway-id', 'gw-v5'],
      ['content-type', 'application/json'],
      ['mqtt-payload-format', 'utf-8'],
      ['a', '1'],
      ['b', '2'],
      ['a', '3'],
      ['mqtt-user-gateway-id', 'spoofed'],
    ]);
    expect(mosq.headers['gateway-id']).toBe('gw-v5'); // the map view keeps working

    const js = byKey.get('dev-js')!;
    expect(names(js)).toEqual([
      'mqtt-topic',
      'gateway-id',
      'content-type',
      'mqtt-payload-format',
      'mqtt-response-topic',
      'mqtt-correlation-data',
      'site',
      'mqtt-user-mqtt-topic',
    ]);
    const header = (r: ConsumedRecord, name: string) => r.headerList.find(([k]) => k === name)?.[1];
    expect(header(js, 'mqtt-topic')?.toString()).toBe('devices/dev-js/telemetry');
    expect(header(js, 'mqtt-payload-format')?.toString()).toBe('bytes');
    expect(header(js, 'mqtt-response-topic')?.toString()).toBe('devices/dev-js/replies');
    expect(header(js, 'mqtt-correlation-data')).toEqual(correlation);
    expect(js.value).toEqual(Buffer.from([1, 2, 3]));

    expect(textPairs(byKey.get('dev-311')!)).toEqual([
      ['mqtt-topic', 'devices/dev-311/telemetry'],
      ['gateway-id', 'gw-v5'],
    ]);
  });
});

describe('MQTT 5 message expiry across a Kafka outage', () => {
  const tmp = useTmpDirs();
  let kafka: FaultKafka;
  beforeAll(async () => {
    kafka = await FaultKafka.allocate();
  });
  afterAll(async () => {
    await kafka.destroy();
  });

  it('a reading that expires while Kafka is unreachable is dropped and counted, never sent late; a long expiry and no expiry are delivered once Kafka is back', async () => {
    const topic = uniqueName('iot.v5expiry');
    // Kafka down from the start (its broker is started below), for this gateway only
    const gw = await startTestGateway({ dir: tmp(), topic, brokers: kafka.brokers, overrides: { forward: { retry: { initialMs: 100, maxMs: 1000 } } } });
    try {
      const client = await mqtt.connectAsync(gw.url, { protocolVersion: 5, clientId: 'dev-exp', reconnectPeriod: 0 });
      const publish = (n: string, properties: Record<string, unknown>) =>
        client.publishAsync('devices/dev-exp/telemetry', n, { qos: 1, properties });
      await publish('short', { messageExpiryInterval: 2 });
      const shortAckedAt = Date.now();
      await publish('long', { messageExpiryInterval: 3600 });
      await publish('none', {});
      await client.endAsync();
      // all three stored and acknowledged, none forwarded
      expect(gw.status()).toMatchObject({ received: 3, forwarded: 0 });
      await until('the forwarder says Kafka is unreachable', () => gw.status().forwarder === 'retrying', 60_000);
      // the outage outlasts the short expiry (2 s from its receipt, before its PUBACK)
      await until('the short message to have expired', () => Date.now() > shortAckedAt + 2000, 10_000, 100);
      expect(gw.status().forwarded).toBe(0);

      await kafka.start();
      const records = await consumeAll(kafka.brokers, topic, { expected: 2, timeoutMs: 120_000 });
      expect(records.map((r) => r.value.toString()).sort()).toEqual(['long', 'none']);
      await until('the backlog to drain', () => gw.status().backlog === 0, 60_000);
      expect(gw.status()).toMatchObject({ forwarded: 2, recordsExpired: 1 });
      const metrics = await (await fetch(`http://127.0.0.1:${gw.adminAddress!.port}/metrics`)).text();
      expect(metrics).toMatch(/^edgebridge_records_expired_total 1$/m);
    } finally {
      await gw.close();
    }
  });
});
