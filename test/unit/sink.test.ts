import { describe, expect, it } from 'vitest';
import type { Message } from 'kafkajs';
import { checkpointMetadata, parseCheckpoint, parseStoredCheckpoint, toDeadLetterMessage, toMessage } from '../../src/forward/kafka-sink.js';
import {
  authenticationFailure,
  authorizationFailure,
  deniedTopics,
  explainAuthenticationFailure,
  isFencedError,
  rejectionType,
} from '../../src/forward/sink.js';
import { entry, recordOf } from '../helpers/entries.js';

type Pairs = [string, string | Buffer][];

/** A message's ordered headers as an object (the last value of a repeated name). */
function asObject(headers: Message['headers']): Record<string, string> {
  return Object.fromEntries((headers as unknown as Pairs).map(([k, v]) => [k, v.toString()]));
}

// kafkajs wraps the broker's error in its retrier's error
const wrapped = (type: string) => Object.assign(new Error('retries exhausted'), { originalError: Object.assign(new Error(type), { type }) });

describe('kafka errors, told apart', () => {
  it('fencing: another producer with this transactional id', () => {
    expect(isFencedError(wrapped('PRODUCER_FENCED'))).toBe(true);
    expect(isFencedError(wrapped('INVALID_PRODUCER_EPOCH'))).toBe(true);
    expect(isFencedError(wrapped('TRANSACTIONAL_ID_AUTHORIZATION_FAILED'))).toBe(false);
  });

  it('missing ACLs are authorization failures, not a twin gateway', () => {
    expect(authorizationFailure(wrapped('TRANSACTIONAL_ID_AUTHORIZATION_FAILED'))).toBe('TRANSACTIONAL_ID_AUTHORIZATION_FAILED');
    expect(authorizationFailure(wrapped('TOPIC_AUTHORIZATION_FAILED'))).toBe('TOPIC_AUTHORIZATION_FAILED');
    expect(authorizationFailure(wrapped('LEADER_NOT_AVAILABLE'))).toBeUndefined();
  });

  it('a refused SASL login and a failed TLS handshake are authentication failures, told apart from an outage', () => {
    // shapes kafkajs 2.2.4 produced against the secured test broker
    const sasl = Object.assign(new Error('SASL SCRAM SHA512 authentication failed: Authentication failed during authentication due to invalid credentials'), {
      name: 'KafkaJSSASLAuthenticationError',
    });
    expect(authenticationFailure(sasl)).toMatchObject({ kind: 'sasl', code: 'SASL_AUTHENTICATION_FAILED' });
    expect(authenticationFailure(wrapped('SASL_AUTHENTICATION_FAILED'))).toMatchObject({ kind: 'sasl' });
    const tls = (code: string, message: string) =>
      Object.assign(new Error('retries exceeded'), {
        name: 'KafkaJSNumberOfRetriesExceeded',
        cause: Object.assign(new Error(`Connection error: ${message}`), { name: 'KafkaJSConnectionError', code }),
      });
    expect(authenticationFailure(tls('SELF_SIGNED_CERT_IN_CHAIN', 'self-signed certificate in certificate chain'))).toMatchObject({
      kind: 'tls',
      code: 'SELF_SIGNED_CERT_IN_CHAIN',
    });
    expect(authenticationFailure(tls('ECONNREFUSED', 'connect ECONNREFUSED 127.0.0.1:9093'))).toBeUndefined();
    expect(authenticationFailure(wrapped('TOPIC_AUTHORIZATION_FAILED'))).toBeUndefined();
    expect(authenticationFailure(Object.assign(new Error('Closed connection'), { name: 'KafkaJSConnectionClosedError' }))).toBeUndefined();
    // a Kafka protocol error's numeric code is not a TLS code
    expect(authenticationFailure(Object.assign(new Error('x'), { type: 'NOT_LEADER_FOR_PARTITION', code: 6 }))).toBeUndefined();

    const who = { tls: true, caFile: '/etc/ca.pem', username: 'gw-1', mechanism: 'scram-sha-512' };
    expect(explainAuthenticationFailure(authenticationFailure(sasl)!, who)).toBe(
      'Kafka refused the SASL login of user "gw-1" (mechanism SCRAM-SHA-512): check kafka.sasl (username, password or passwordFile, mechanism) and that the user exists on the brokers',
    );
    expect(explainAuthenticationFailure(authenticationFailure(tls('UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'unable to verify the first certificate'))!, who)).toBe(
      "cannot verify the Kafka broker's certificate (UNABLE_TO_VERIFY_LEAF_SIGNATURE): it is not signed by a CA in kafka.ssl.caFile (/etc/ca.pem); check kafka.ssl.caFile",
    );
    expect(explainAuthenticationFailure({ kind: 'tls', code: 'DEPTH_ZERO_SELF_SIGNED_CERT', detail: '' }, { tls: true })).toContain(
      "the system's CAs (kafka.ssl.caFile is not set)",
    );
    expect(explainAuthenticationFailure({ kind: 'tls', code: 'ERR_TLS_CERT_ALTNAME_INVALID', detail: "Connection error: Host: k1. is not in the cert's altnames" }, who)).toContain(
      'check kafka.brokers or kafka.ssl.servername',
    );
    expect(explainAuthenticationFailure({ kind: 'tls', code: 'ERR_SSL_WRONG_VERSION_NUMBER', detail: '' }, who)).toContain('does not speak TLS');
    expect(explainAuthenticationFailure({ kind: 'tls', code: 'CERT_HAS_EXPIRED', detail: '' }, who)).toContain('expired');
  });

  it('the topics a topic authorization failure names', () => {
    const creation = Object.assign(new Error('Topic creation errors'), {
      name: 'KafkaJSAggregateError',
      errors: [Object.assign(new Error('Topic authorization failed'), { type: 'TOPIC_AUTHORIZATION_FAILED', topic: 'iot.telemetry' })],
    });
    expect(authorizationFailure(creation)).toBe('TOPIC_AUTHORIZATION_FAILED');
    expect(deniedTopics(creation)).toEqual(['iot.telemetry']);
    expect(deniedTopics(wrapped('TOPIC_AUTHORIZATION_FAILED'))).toEqual([]);
  });

  it('records refused for good', () => {
    expect(rejectionType(wrapped('MESSAGE_TOO_LARGE'))).toBe('MESSAGE_TOO_LARGE');
    expect(rejectionType({ errors: [wrapped('INVALID_RECORD')] })).toBe('INVALID_RECORD');
    expect(rejectionType(wrapped('NOT_LEADER_FOR_PARTITION'))).toBeUndefined();
  });
});

describe('checkpoints in the checkpoint group (commit metadata)', () => {
  const uuid = (i: number) => `${String(i).padStart(8, '0')}-0000-4000-8000-000000000000`;
  const full = (logId: string, offset: number) => ({
    logId,
    offset,
    epoch: uuid(0),
    history: Array.from({ length: 16 }, (_, i) => ({ epoch: uuid(i), through: Number.MAX_SAFE_INTEGER - i })),
  });

  it('round-trips the checkpoint, its writer and claimer, and the other log\'s latest (twins)', () => {
    const mine = full(uuid(100), 42);
    const other = full(uuid(200), 7);
    const meta = checkpointMetadata(mine, uuid(300), uuid(301), other);
    expect(parseStoredCheckpoint(42, meta)).toEqual({ checkpoint: mine, writer: uuid(300), claimer: uuid(301), prior: other });
    // a probe of a gateway id without any checkpoint yet
    expect(parseStoredCheckpoint(0, checkpointMetadata(undefined, 'w', undefined))).toEqual({ checkpoint: undefined, writer: 'w', claimer: undefined });
  });

  it('stays under the brokers\' default offset.metadata.max.bytes (4096) at its largest: 16 epochs, twice', () => {
    const meta = checkpointMetadata(full(uuid(100), Number.MAX_SAFE_INTEGER), uuid(300), uuid(301), full(uuid(200), Number.MAX_SAFE_INTEGER));
    expect(Buffer.byteLength(meta)).toBeLessThan(4096);
  });

  it('a value written by a newer version is told apart (never overwritten); one that is not ours is no checkpoint', () => {
    expect(parseStoredCheckpoint(5, JSON.stringify({ v: 3, writer: 'w', logId: 'L' }))).toBe('newer');
    expect(parseStoredCheckpoint(5, 'consumer metadata')).toBeUndefined();
    expect(parseStoredCheckpoint(5, '')).toBeUndefined();
    expect(parseStoredCheckpoint(5, JSON.stringify({ v: 1 }))).toBeUndefined();
  });
});

describe('checkpoint and dead-letter records', () => {
  it('a checkpoint carries its epoch and history; one without (written before epochs) still parses', () => {
    expect(parseCheckpoint(Buffer.from('{"logId":"L","offset":7,"epoch":"e1","history":[["e1",7],["e0",3]]}'))).toEqual({
      logId: 'L',
      offset: 7,
      epoch: 'e1',
      history: [
        { epoch: 'e1', through: 7 },
        { epoch: 'e0', through: 3 },
      ],
    });
    expect(parseCheckpoint(Buffer.from('{"logId":"L","offset":7}'))).toEqual({ logId: 'L', offset: 7 });
    expect(parseCheckpoint(Buffer.from('{"probe":1}'))).toBeUndefined();
  });

  it('a dead letter says why and where from; a record too large for Kafka is described instead of carried', () => {
    const record = recordOf(entry('dev-1', 1), 42);
    const invalid = toDeadLetterMessage(record, 'INVALID_RECORD', 'gw');
    expect(invalid.value).toEqual(record.payload);
    expect(invalid.key).toBe('dev-1');
    expect(asObject(invalid.headers)).toMatchObject({
      'edgebridge-error': 'INVALID_RECORD',
      'edgebridge-original-topic': 'iot.telemetry',
      'edgebridge-log-offset': '42',
      'mqtt-topic': 'devices/dev-1/telemetry',
      'gateway-id': 'gw',
    });
    // stamped when dead-lettered (its own timestamp may be what Kafka refused), received-at kept
    expect(toDeadLetterMessage(record, 'INVALID_TIMESTAMP', 'gw', 1234).timestamp).toBe('1234');
    expect(asObject(invalid.headers)['edgebridge-received-at']).toBe(String(record.receivedAt));
    const large = toDeadLetterMessage(record, 'MESSAGE_TOO_LARGE', 'gw');
    expect(large.value).toEqual(Buffer.alloc(0));
    expect(asObject(large.headers)['edgebridge-payload-bytes']).toBe(String(record.payload.length));
    expect(asObject(large.headers)['edgebridge-payload-sha256']).toMatch(/^[0-9a-f]{64}$/);
  });

  it('headers are ordered pairs: the gateway\'s first, then the record\'s own in stored order, repeats kept', () => {
    const record = recordOf(
      {
        ...entry('dev-1', 1),
        headers: [
          ['content-type', 'application/json'],
          ['mqtt-correlation-data', Buffer.from([0, 1, 255])],
          ['a', '1'],
          ['b', '2'],
          ['a', '3'],
        ],
      },
      7,
    );
    const headers = toMessage(record, 'gw').headers as unknown as Pairs;
    expect(headers.map(([k]) => k)).toEqual(['mqtt-topic', 'gateway-id', 'content-type', 'mqtt-correlation-data', 'a', 'b', 'a']);
    expect(headers[0]).toEqual(['mqtt-topic', 'devices/dev-1/telemetry']);
    expect(headers[1]).toEqual(['gateway-id', 'gw']);
    expect(headers[3]![1]).toEqual(Buffer.from([0, 1, 255]));
    expect(headers.slice(4).map(([, v]) => v)).toEqual(['1', '2', '3']);
  });

  it('a stored header named like a gateway header never shadows it: kept under mqtt-user-', () => {
    const record = recordOf({ ...entry('dev-1', 1), headers: [['gateway-id', 'spoof'], ['MQTT-Topic', 'x']] }, 7);
    const headers = toMessage(record, 'gw').headers as unknown as Pairs;
    expect(headers).toEqual([
      ['mqtt-topic', 'devices/dev-1/telemetry'],
      ['gateway-id', 'gw'],
      ['mqtt-user-gateway-id', 'spoof'],
      ['mqtt-user-MQTT-Topic', 'x'],
    ]);
  });

  it('command ack headers stored as an object (earlier versions) keep working', () => {
    const record = recordOf({ ...entry('dev-1', 1), headers: { 'correlation-id': 'c-1', 'delivered-at': 'now' } }, 7);
    expect(asObject(toMessage(record, 'gw').headers)).toEqual({
      'mqtt-topic': 'devices/dev-1/telemetry',
      'gateway-id': 'gw',
      'correlation-id': 'c-1',
      'delivered-at': 'now',
    });
  });

  it('a dead letter refused for its size leaves out the record\'s own headers too, and counts them', () => {
    const record = recordOf({ ...entry('dev-1', 1), headers: [['big', 'x'.repeat(1000)], ['a', '1']] }, 42);
    const large = asObject(toDeadLetterMessage(record, 'MESSAGE_TOO_LARGE', 'gw').headers);
    expect(large.big).toBeUndefined();
    expect(large['edgebridge-headers-dropped']).toBe('2');
    const invalid = asObject(toDeadLetterMessage(record, 'INVALID_RECORD', 'gw').headers);
    expect(invalid.a).toBe('1');
  });
});
