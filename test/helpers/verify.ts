import { expect } from 'vitest';
import type { FleetResult, Reading } from '../../firmware-sim/fleet.js';
import type { ConsumedRecord } from './kafka.js';

export interface DeliveryReport {
  readonly records: number;
  readonly acked: number;
  readonly ackedMissing: number;
  readonly duplicates: number;
  readonly outOfOrder: number;
  readonly neverPublished: number;
  /** MQTT 5 readings the gateway refused (PUBACK/PUBREC >= 0x80) that reached Kafka all the same. */
  readonly refusedDelivered: number;
}

/**
 * The delivery contract, checked against what the fleet published and had acknowledged: every
 * PUBACKed reading is in Kafka exactly once, each device's readings in seq order (in partition
 * order), byte for byte, and nothing appears that was never published, nor a reading an MQTT 5
 * device was told was refused.
 */
export function verifyExactlyOnce(records: readonly ConsumedRecord[], fleets: FleetResult | FleetResult[]): DeliveryReport {
  const devices = new Map<
    string,
    { bootId: string; published: number; payloads: Map<number, string>; acked: number[]; refused: ReadonlyMap<number, number> }[]
  >();
  let acked = 0;
  for (const fleet of Array.isArray(fleets) ? fleets : [fleets]) {
    for (const d of fleet.devices) {
      const boots = devices.get(d.deviceId) ?? [];
      boots.push({ bootId: d.bootId, published: d.published, payloads: d.payloads, acked: d.ackedSeqs, refused: d.refusedSeqs });
      devices.set(d.deviceId, boots);
      acked += d.ackedSeqs.length;
    }
  }
  const seen = new Set<string>();
  const lastSeq = new Map<string, number>();
  let duplicates = 0;
  let outOfOrder = 0;
  let neverPublished = 0;
  let refusedDelivered = 0;
  for (const r of records) {
    const reading = JSON.parse(r.value.toString('utf8')) as Reading;
    const boot = devices.get(r.key)?.find((b) => b.bootId === reading.bootId);
    if (!boot || boot.payloads.get(reading.seq) !== r.value.toString('utf8')) {
      neverPublished++;
      continue;
    }
    if (boot.refused.has(reading.seq)) refusedDelivered++;
    const id = `${r.key}/${reading.bootId}/${reading.seq}`;
    if (seen.has(id)) duplicates++;
    seen.add(id);
    const streamKey = `${r.key}/${reading.bootId}`;
    const prev = lastSeq.get(streamKey) ?? 0;
    if (reading.seq <= prev) outOfOrder++;
    lastSeq.set(streamKey, Math.max(prev, reading.seq));
  }
  let ackedMissing = 0;
  for (const [deviceId, boots] of devices) {
    for (const b of boots) for (const seq of b.acked) if (!seen.has(`${deviceId}/${b.bootId}/${seq}`)) ackedMissing++;
  }
  return { records: records.length, acked, ackedMissing, duplicates, outOfOrder, neverPublished, refusedDelivered };
}

export function expectExactlyOnce(report: DeliveryReport): void {
  expect(report, JSON.stringify(report)).toMatchObject({ ackedMissing: 0, duplicates: 0, outOfOrder: 0, neverPublished: 0, refusedDelivered: 0 });
  expect(report.acked).toBeGreaterThan(0);
}
