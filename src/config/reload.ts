import { isDeepStrictEqual } from 'node:util';
import type { Config } from './schema.js';

/**
 * The keys a running gateway applies when its config is reloaded (SIGHUP); a change to any other
 * key needs a restart. The limits left out are fixed when aedes or a listener is created
 * (maxTopicLevels, maxInflightMessages, maxTopicAliases, maxSessionExpiry, maxPendingSessions, connectTimeoutMs).
 */
export const RELOADABLE_KEYS: readonly string[] = [
  'routes',
  'log.level',
  'mqtt.maxPayloadBytes',
  'mqtt.limits.maxConnections',
  'mqtt.limits.maxTopicBytes',
  'mqtt.limits.publishRatePerSecond',
  'mqtt.limits.maxQueuedMessages',
  'mqtt.limits.maxRetainedMessages',
  'mqtt.limits.maxSessionBytes',
  'mqtt.limits.maxSubscriptions',
  'admin.silentAfter',
];

export interface ReloadPlan {
  /** The config in force after the reload: the reloadable keys from the new file, the rest as before. */
  readonly config: Config;
  /** Changed keys that are applied now. */
  readonly applied: string[];
  /** Changed keys that are not applied: they need a restart. */
  readonly needRestart: string[];
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/**
 * The key paths whose values differ between two configs (`kafka.brokers`, `routes`). Mappings are
 * compared key by key; a list or a scalar is one value.
 */
export function changedKeys(before: unknown, after: unknown, prefix = ''): string[] {
  if (!isRecord(before) || !isRecord(after)) return isDeepStrictEqual(before, after) ? [] : [prefix];
  const keys = [...new Set([...Object.keys(before), ...Object.keys(after)])];
  return keys.flatMap((key) => changedKeys(before[key], after[key], prefix === '' ? key : `${prefix}.${key}`));
}

function valueAt(config: unknown, path: string): unknown {
  return path.split('.').reduce<unknown>((node, key) => (isRecord(node) ? node[key] : undefined), config);
}

function setAt(config: Record<string, unknown>, path: string, value: unknown): void {
  const keys = path.split('.');
  const parent = keys.slice(0, -1).reduce((node, key) => node[key] as Record<string, unknown>, config);
  parent[keys[keys.length - 1]!] = value;
}

/**
 * What a reload from `running` to `next` applies and what waits for a restart.
 * `mqtt.maxPayloadBytes` applies only up to `maxPayloadBytesAtStart`: the storage budget
 * (log/budget.ts) was sized at start for publishes that large.
 */
export function planReload(running: Config, next: Config, maxPayloadBytesAtStart: number): ReloadPlan {
  const changed = changedKeys(running, next);
  const live = (key: string): boolean =>
    RELOADABLE_KEYS.includes(key) && (key !== 'mqtt.maxPayloadBytes' || next.mqtt.maxPayloadBytes <= maxPayloadBytesAtStart);
  const applied = changed.filter(live);
  const config = structuredClone(running) as Config & Record<string, unknown>;
  for (const key of applied) setAt(config, key, structuredClone(valueAt(next, key)));
  return { config, applied, needRestart: changed.filter((key) => !live(key)) };
}
