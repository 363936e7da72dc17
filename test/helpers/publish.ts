import mqtt from 'mqtt';

/** A reading as the tests publish it: the default dedup identity (bootId, seq) plus a value. */
export function reading(deviceId: string, bootId: string, seq: number, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ deviceId, bootId, seq, ...extra });
}

/**
 * Publishes `payloads` for `deviceId` with QoS 1, one after another, each waiting for its PUBACK;
 * resolves once all are acknowledged.
 */
export async function publishAcked(url: string, deviceId: string, payloads: readonly string[], clientId = `pub-${deviceId}`): Promise<void> {
  const client = await mqtt.connectAsync(url, { clientId, reconnectPeriod: 0 });
  try {
    for (const p of payloads) await client.publishAsync(`devices/${deviceId}/telemetry`, p, { qos: 1 });
  } finally {
    await client.endAsync();
  }
}

export function seqs(from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}
