import { describe, expect, it } from 'vitest';
import { toLogEntry } from '../../src/ingress/entry.js';
import { compileRoute } from '../../src/ingress/routes.js';
import {
  DEFAULT_PROPERTY_LIMITS,
  isReservedHeaderName,
  mapPublishProperties,
  userPropertyPairs,
  type PublishProperties,
} from '../../src/ingress/v5-properties.js';

const AT = 1_700_000_000_000;

/** Properties as the patched mqtt-packet parses them: the pairs non-enumerable beside the object. */
function parsed(props: Omit<PublishProperties, 'userPropertyPairs'>, pairs?: [string, string][]): PublishProperties {
  const p = { ...props };
  if (pairs) Object.defineProperty(p, 'userPropertyPairs', { value: pairs, enumerable: false });
  return p;
}

describe('MQTT 5 publish properties to Kafka headers', () => {
  it('user properties keep their order and repeated names (a, b, a)', () => {
    const props = parsed({ userProperties: { a: ['1', '3'], b: '2' } }, [
      ['a', '1'],
      ['b', '2'],
      ['a', '3'],
    ]);
    expect(mapPublishProperties(props, AT).headers).toEqual([
      ['a', '1'],
      ['b', '2'],
      ['a', '3'],
    ]);
  });

  it('without the wire-order pairs, falls back to the object (repeats after their first)', () => {
    expect(userPropertyPairs({ userProperties: { a: ['1', '3'], b: '2' } })).toEqual([
      ['a', '1'],
      ['a', '3'],
      ['b', '2'],
    ]);
  });

  it('content type, payload format, response topic and correlation data become headers, in that order, before user properties', () => {
    const correlation = Buffer.from([0, 0xff, 0x10]);
    const { headers } = mapPublishProperties(
      parsed({ contentType: 'application/json', payloadFormatIndicator: true, responseTopic: 'replies/dev-1', correlationData: correlation }, [['x', 'y']]),
      AT,
    );
    expect(headers).toEqual([
      ['content-type', 'application/json'],
      ['mqtt-payload-format', 'utf-8'],
      ['mqtt-response-topic', 'replies/dev-1'],
      ['mqtt-correlation-data', correlation],
      ['x', 'y'],
    ]);
    expect(mapPublishProperties({ payloadFormatIndicator: false }, AT).headers).toEqual([['mqtt-payload-format', 'bytes']]);
    // absent properties give no header at all
    expect(mapPublishProperties({}, AT).headers).toEqual([]);
    expect(mapPublishProperties(undefined, AT)).toEqual({ headers: [], expiresAt: undefined, dropped: 0, escaped: 0 });
  });

  it('a user property with a reserved name is kept under mqtt-user-, never as the gateway header', () => {
    for (const name of ['mqtt-topic', 'gateway-id', 'Gateway-ID', 'content-type', 'correlation-id', 'delivered-at', 'command-offset', 'edgebridge-error', 'mqtt-user-x']) {
      expect(isReservedHeaderName(name)).toBe(true);
    }
    expect(isReservedHeaderName('site')).toBe(false);
    const mapped = mapPublishProperties(parsed({}, [['gateway-id', 'spoof'], ['site', 'north'], ['mqtt-topic', 't']]), AT);
    expect(mapped.headers).toEqual([
      ['mqtt-user-gateway-id', 'spoof'],
      ['site', 'north'],
      ['mqtt-user-mqtt-topic', 't'],
    ]);
    expect(mapped.escaped).toBe(2);
  });

  it('bounds what a publish adds: properties past the count or bytes are left out and counted in a header', () => {
    const many = Array.from({ length: 10 }, (_, i) => [`k${i}`, 'v'] as [string, string]);
    const byCount = mapPublishProperties(parsed({}, many), AT, { maxHeaders: 4, maxHeaderBytes: 1000 });
    expect(byCount.headers).toEqual([...many.slice(0, 4), ['mqtt-properties-dropped', '6']]);
    expect(byCount.dropped).toBe(6);
    // bytes: names and values; a large one is left out, smaller ones after it still fit
    const byBytes = mapPublishProperties(parsed({}, [['a', '1'], ['big', 'x'.repeat(100)], ['b', '2']]), AT, { maxHeaders: 10, maxHeaderBytes: 50 });
    expect(byBytes.headers).toEqual([['a', '1'], ['b', '2'], ['mqtt-properties-dropped', '1']]);
    expect(DEFAULT_PROPERTY_LIMITS.maxHeaderBytes).toBeGreaterThan(0);
  });

  it('message expiry interval: absolute expiry from the receive time; 0 or absent never expires', () => {
    expect(mapPublishProperties({ messageExpiryInterval: 2 }, AT).expiresAt).toBe(AT + 2000);
    expect(mapPublishProperties({ messageExpiryInterval: 0 }, AT).expiresAt).toBeUndefined();
    expect(mapPublishProperties({}, AT).expiresAt).toBeUndefined();
  });

  it('toLogEntry carries the headers and the expiry into the log entry; a 3.1.1 publish has neither', () => {
    const match = { route: compileRoute({ mqtt: 'devices/{deviceId}/telemetry', kafka: 'iot.telemetry' }), deviceId: 'dev-1' };
    const base = { topic: 'devices/dev-1/telemetry', payload: Buffer.from('x'), qos: 1 as const, dup: false, messageId: 1, clientId: 'dev-1', receivedAt: AT };
    const v5 = toLogEntry(match, { ...base, properties: parsed({ messageExpiryInterval: 5, contentType: 'text/plain' }, [['a', '1']]) });
    expect(v5.headers).toEqual([
      ['content-type', 'text/plain'],
      ['a', '1'],
    ]);
    expect(v5.expiresAt).toBe(AT + 5000);
    const v3 = toLogEntry(match, base);
    expect(v3.headers).toBeUndefined();
    expect(v3.expiresAt).toBeUndefined();
  });
});
