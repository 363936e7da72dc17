/**
 * How a command travels through aedes: a QoS 1 PUBLISH whose broker id names the device and whose
 * broker counter is the command's place in the outbox. aedes keeps both with the packet in the
 * session queue (and so in the session tables), so the session store knows a command when its
 * device acknowledges it; and aedes's per-subscriber duplicate check (by broker id, increasing
 * counters) sees each device's commands in the order they were stored.
 */
const PREFIX = 'edgebridge-commands/';

export interface CommandPacket {
  readonly cmd: 'publish';
  readonly topic: string;
  readonly payload: Buffer;
  readonly qos: 1;
  readonly retain: false;
  readonly dup: false;
  readonly brokerId: string;
  readonly brokerCounter: number;
  /** When the command's TTL ends (ms): a queued copy is not sent after it. */
  readonly messageExpiry: number;
  /**
   * MQTT 5 properties: where the device replies (Response Topic), the correlation id as
   * Correlation Data, and the command's content type. aedes sends them to MQTT 5 subscribers
   * only (mqtt-packet writes no properties in a 3.1.1 PUBLISH), and keeps them with the packet in
   * the session queue (session-tables.ts stores `properties`, Buffers included).
   */
  readonly properties?: CommandProperties;
}

export interface CommandProperties {
  readonly responseTopic: string;
  readonly correlationData: Buffer;
  readonly contentType?: string;
}

/** The broker id of a device's commands. */
export function commandBrokerId(deviceId: string): string {
  return `${PREFIX}${deviceId}`;
}

export function commandPacket(deviceId: string, seq: number, topic: string, payload: Buffer, expiresAt: number, properties?: CommandProperties): CommandPacket {
  return {
    cmd: 'publish',
    topic,
    payload,
    qos: 1,
    retain: false,
    dup: false,
    brokerId: commandBrokerId(deviceId),
    brokerCounter: seq,
    messageExpiry: expiresAt,
    ...(properties === undefined ? {} : { properties }),
  };
}

/** The MQTT 5 properties of a command: the reply topic (config commands.replies), its correlation id and content type. */
export function commandProperties(replyTemplate: string, deviceId: string, correlationId: string, contentType: string | null): CommandProperties {
  return {
    responseTopic: commandTopic(replyTemplate, deviceId, correlationId),
    correlationData: Buffer.from(correlationId),
    ...(contentType === null ? {} : { contentType }),
  };
}

/** The device and outbox place of a command packet; undefined for any other message. */
export function commandOf(packet: { brokerId?: unknown; brokerCounter?: unknown }): { deviceId: string; seq: number } | undefined {
  const { brokerId, brokerCounter } = packet;
  if (typeof brokerId !== 'string' || !brokerId.startsWith(PREFIX) || typeof brokerCounter !== 'number') return undefined;
  return { deviceId: brokerId.slice(PREFIX.length), seq: brokerCounter };
}

/** The same from a session queue key (session-store.ts: `b<brokerId>:<brokerCounter>`). */
export function commandOfKey(key: string): { deviceId: string; seq: number } | undefined {
  if (!key.startsWith(`b${PREFIX}`)) return undefined;
  const colon = key.lastIndexOf(':');
  const seq = Number(key.slice(colon + 1));
  return colon > PREFIX.length && Number.isSafeInteger(seq) ? { deviceId: key.slice(PREFIX.length + 1, colon), seq } : undefined;
}

/** The MQTT topic of a command: the configured template with {deviceId} and {correlationId}. */
export function commandTopic(template: string, deviceId: string, correlationId: string): string {
  return template.replaceAll('{deviceId}', deviceId).replaceAll('{correlationId}', correlationId);
}
