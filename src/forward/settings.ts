import type { Compression } from './compression.js';
import type { KafkaSecurity } from './kafka-client.js';
import type { KafkaIdentity } from './sink.js';

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
    readonly compression: Compression;
    readonly connectionTimeoutMs: number;
    readonly requestTimeoutMs: number;
    readonly topicDefaults: { readonly partitions: number; readonly replicationFactor: number };
    /**
     * kafka.ssl and kafka.sasl with their files read in the main thread at start
     * (readKafkaSecurity): the thread gets the PEM contents and the password, never logs them.
     */
    readonly security: KafkaSecurity;
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
  readonly maxCommitDelayMs: number;
  readonly commitMinRecords: number;
  readonly retry: { readonly initialMs: number; readonly maxMs: number };
  /** The command consumer (config `commands`); undefined: commands are off. */
  readonly commands: CommandConsumerSettings | undefined;
}

export interface CommandConsumerSettings {
  readonly topic: string;
  readonly groupId: string;
  readonly ttlMs: number;
  readonly maxPending: number;
  readonly mqttTopic: string;
  /** config commands.replies: a command whose reply topic breaks the limits is not deliverable. */
  readonly replyTopic?: string;
  readonly limits: { readonly maxTopicBytes: number; readonly maxTopicLevels: number; readonly maxPayloadBytes: number };
}

/** One ACL binding (set) a gateway needs, as kafka-acls.sh understands it. */
export interface AclGrant {
  readonly resource: 'transactional-id' | 'topic' | 'group';
  readonly name: string;
  /** The group is a prefix (`--resource-pattern-type prefixed`). */
  readonly prefixed: boolean;
  readonly operations: readonly ('Write' | 'Read' | 'Create')[];
}

/**
 * The least-privilege ACLs of a gateway on a cluster with an authorizer, each found necessary by
 * experiment (test/integration/kafka-security.test.ts grants exactly these): Write on its
 * transactional id (InitProducerId, AddPartitionsToTxn, EndTxn); Write on every topic it
 * forwards to, the checkpoint topic and the dead-letter topic, plus Create so that it can create
 * them when missing; Read on the checkpoint topic and on the group prefix of the consumer that
 * reads its checkpoint at connect. Describe is implied by Write and Read; no Cluster ACL
 * (IdempotentWrite) is needed by a transactional producer.
 */
export function gatewayAcls(settings: Pick<ForwardSettings, 'gatewayId' | 'topics' | 'checkpointTopic' | 'deadLetterTopic'>): AclGrant[] {
  const topics = [...new Set([...settings.topics, ...(settings.deadLetterTopic ? [settings.deadLetterTopic] : [])])].filter(
    (t) => t !== settings.checkpointTopic,
  );
  return [
    { resource: 'transactional-id', name: `edgebridge-${settings.gatewayId}`, prefixed: false, operations: ['Write'] },
    ...topics.map((t): AclGrant => ({ resource: 'topic', name: t, prefixed: false, operations: ['Write', 'Create'] })),
    { resource: 'topic', name: settings.checkpointTopic, prefixed: false, operations: ['Write', 'Create', 'Read'] },
    { resource: 'group', name: `edgebridge-checkpoint-${settings.gatewayId}-`, prefixed: true, operations: ['Read'] },
  ];
}

/** A grant as kafka-acls.sh arguments (after --bootstrap-server and --command-config). */
export function aclArguments(grant: AclGrant, principal = 'User:<gateway principal>'): string {
  const operations = grant.operations.map((o) => `--operation ${o}`).join(' ');
  return `--add --allow-principal ${principal} ${operations} --${grant.resource} ${grant.name}${grant.prefixed ? ' --resource-pattern-type prefixed' : ''}`;
}

/** The gateway's principal when it logs in with SASL; with a client certificate it is the certificate's subject. */
function principalOf(settings: ForwardSettings): string | undefined {
  return settings.kafka.security.sasl ? `User:${settings.kafka.security.sasl.username}` : undefined;
}

/** The ACLs a gateway needs on a cluster with an authorizer, as kafka-acls.sh arguments. */
export function requiredAcls(settings: ForwardSettings): string {
  const principal = principalOf(settings);
  return gatewayAcls(settings)
    .map((g) => aclArguments(g, principal))
    .join('; ');
}

const DENIED_RESOURCE: Readonly<Record<string, AclGrant['resource']>> = {
  TRANSACTIONAL_ID_AUTHORIZATION_FAILED: 'transactional-id',
  TOPIC_AUTHORIZATION_FAILED: 'topic',
  GROUP_AUTHORIZATION_FAILED: 'group',
};

/**
 * Of the required ACLs, those of the resource Kafka refused (`denied`: its error type), narrowed
 * to `topics` when Kafka named them: what the log line says to grant first.
 */
export function missingAcls(settings: ForwardSettings, denied: string, topics: readonly string[]): string | undefined {
  const resource = DENIED_RESOURCE[denied];
  if (resource === undefined) return undefined;
  let grants = gatewayAcls(settings).filter((g) => g.resource === resource);
  const named = grants.filter((g) => topics.includes(g.name));
  if (resource === 'topic' && named.length > 0) grants = named;
  const principal = principalOf(settings);
  return grants.map((g) => aclArguments(g, principal)).join('; ');
}

/** Who the gateway is to Kafka, for the messages of a refused login (no secrets). */
export function kafkaIdentity(settings: ForwardSettings): KafkaIdentity {
  const { ssl, sasl, caFile } = settings.kafka.security;
  return { tls: ssl !== false, caFile, username: sasl?.username, mechanism: sasl?.mechanism };
}

/** The forwarder's options that come from the settings (the rest are the host's callbacks). */
export function forwarderLimits(s: ForwardSettings) {
  return {
    batchMaxRecords: s.batchMaxRecords,
    batchMaxBytes: s.batchMaxBytes,
    commitIntervalMs: s.commitIntervalMs,
    maxCommitDelayMs: s.maxCommitDelayMs,
    commitMinRecords: s.commitMinRecords,
    // a request kafkajs cannot complete is retried several times over; a step is several requests
    stallMs: 2 * s.kafka.requestTimeoutMs,
    retry: s.retry,
    deadLetter: s.deadLetterTopic !== undefined,
    requiredAcls: requiredAcls(s),
    missingAcls: (denied: string, topics: readonly string[]) => missingAcls(s, denied, topics),
    kafkaIdentity: kafkaIdentity(s),
  };
}
