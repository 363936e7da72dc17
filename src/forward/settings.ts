/**
 * Everything the forwarder's thread needs, as one plain (structured-cloneable) object: gateway.ts
 * builds it from the config and the log, and the worker builds its parts from nothing else.
 */
export interface ForwardSettings {
  readonly gatewayId: string;
  readonly logLevel: string;
  readonly storage: {
    readonly dir: string;
    readonly synchronous: 'full' | 'normal';
    readonly walLimitBytes: number;
  };
  readonly kafka: {
    readonly brokers: readonly string[];
    readonly clientId: string;
    readonly connectionTimeoutMs: number;
    readonly requestTimeoutMs: number;
    readonly topicDefaults: { readonly partitions: number; readonly replicationFactor: number };
  };
  /** Every topic there is something to forward to: the routes' and the backlog's. */
  readonly topics: readonly string[];
  readonly checkpointTopic: string;
  /** Where records Kafka refuses for good go; undefined: they are dropped and counted. */
  readonly deadLetterTopic: string | undefined;
  readonly transactionTimeoutMs: number;
  readonly batchMaxRecords: number;
  readonly batchMaxBytes: number;
  readonly commitIntervalMs: number;
  readonly retry: { readonly initialMs: number; readonly maxMs: number };
}

/** The ACLs a gateway needs on a cluster with an authorizer, as kafka-acls.sh arguments. */
export function requiredAcls(settings: ForwardSettings): string {
  const principal = '--allow-principal User:<gateway principal>';
  const topics = [...new Set([...settings.topics, settings.checkpointTopic, ...(settings.deadLetterTopic ? [settings.deadLetterTopic] : [])])];
  return [
    `--add ${principal} --operation Write --operation Describe --transactional-id edgebridge-${settings.gatewayId}`,
    ...topics.map((t) => `--add ${principal} --operation Write --operation Describe --operation Create --topic ${t}`),
    `--add ${principal} --operation Read --topic ${settings.checkpointTopic}`,
    `--add ${principal} --operation Read --group edgebridge-checkpoint-${settings.gatewayId}- --resource-pattern-type prefixed`,
  ].join('; ');
}

/** The forwarder's options that come from the settings (the rest are the host's callbacks). */
export function forwarderLimits(s: ForwardSettings) {
  return {
    batchMaxRecords: s.batchMaxRecords,
    batchMaxBytes: s.batchMaxBytes,
    commitIntervalMs: s.commitIntervalMs,
    retry: s.retry,
    deadLetter: s.deadLetterTopic !== undefined,
    requiredAcls: requiredAcls(s),
  };
}
