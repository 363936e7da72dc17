import { describe, expect, it } from 'vitest';
import { parseCheckpoint, toDeadLetterMessage } from '../../src/forward/kafka-sink.js';
import { authorizationFailure, isFencedError, rejectionType } from '../../src/forward/sink.js';
import { entry } from '../helpers/entries.js';

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

  it('records refused for good', () => {
    expect(rejectionType(wrapped('MESSAGE_TOO_LARGE'))).toBe('MESSAGE_TOO_LARGE');
    expect(rejectionType({ errors: [wrapped('INVALID_RECORD')] })).toBe('INVALID_RECORD');
    expect(rejectionType(wrapped('NOT_LEADER_FOR_PARTITION'))).toBeUndefined();
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
    const record = { ...entry('dev-1', 1), offset: 42 };
    const invalid = toDeadLetterMessage(record, 'INVALID_RECORD', 'gw');
    expect(invalid.value).toEqual(record.payload);
    expect(invalid.key).toBe('dev-1');
    expect(invalid.headers).toMatchObject({
      'edgebridge-error': 'INVALID_RECORD',
      'edgebridge-original-topic': 'iot.telemetry',
      'edgebridge-log-offset': '42',
      'mqtt-topic': 'devices/dev-1/telemetry',
      'gateway-id': 'gw',
    });
    // stamped when dead-lettered (its own timestamp may be what Kafka refused), received-at kept
    expect(toDeadLetterMessage(record, 'INVALID_TIMESTAMP', 'gw', 1234).timestamp).toBe('1234');
    expect((invalid.headers as Record<string, string>)['edgebridge-received-at']).toBe(String(record.receivedAt));
    const large = toDeadLetterMessage(record, 'MESSAGE_TOO_LARGE', 'gw');
    expect(large.value).toEqual(Buffer.alloc(0));
    expect((large.headers as Record<string, string>)['edgebridge-payload-bytes']).toBe(String(record.payload.length));
    expect((large.headers as Record<string, string>)['edgebridge-payload-sha256']).toMatch(/^[0-9a-f]{64}$/);
  });
});
