import { createRequire } from 'node:module';

/**
 * kafkajs 2.2.4 loses why a coordinator lookup failed: `Cluster.findGroupCoordinatorMetadata`
 * asks every broker through `brokerPool.withBroker`, which swallows each broker's error, and then
 * throws a bare KafkaJSGroupCoordinatorNotFound ("Failed to find group coordinator"). A missing
 * ACL on the transactional id (no Write, so no implied Describe) or on the checkpoint consumer's
 * group is refused by Kafka exactly there (FindCoordinator: TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
 * GROUP_AUTHORIZATION_FAILED), so without this the gateway would take missing ACLs for an
 * unreachable Kafka and never say what to grant.
 *
 * This wraps that one method: when it throws KafkaJSGroupCoordinatorNotFound, one connected broker
 * is asked once more, and an authorization error it answers with becomes the `cause` of the same
 * error object (class and message unchanged, so kafkajs's own handling is unchanged). Applied once
 * per process (each worker thread applies it to its own module instance); a kafkajs whose internals
 * differ is left alone.
 */
const AUTHORIZATION_TYPES = new Set(['TRANSACTIONAL_ID_AUTHORIZATION_FAILED', 'GROUP_AUTHORIZATION_FAILED']);

interface CoordinatorRequest {
  groupId: string;
  coordinatorType?: number;
}

interface ClusterInternals {
  brokerPool?: { findConnectedBroker?: () => Promise<{ findGroupCoordinator(request: CoordinatorRequest): Promise<unknown> }> };
  findGroupCoordinatorMetadata(request: CoordinatorRequest): Promise<unknown>;
}

let applied = false;

export function keepCoordinatorAuthorizationErrors(): void {
  if (applied) return;
  applied = true;
  let Cluster: { prototype: ClusterInternals } | undefined;
  try {
    Cluster = createRequire(import.meta.url)('kafkajs/src/cluster/index.js') as { prototype: ClusterInternals };
  } catch {
    return;
  }
  const original = Cluster?.prototype?.findGroupCoordinatorMetadata;
  if (typeof original !== 'function') return;
  Cluster.prototype.findGroupCoordinatorMetadata = async function findGroupCoordinatorMetadata(this: ClusterInternals, request: CoordinatorRequest) {
    try {
      return await original.call(this, request);
    } catch (err) {
      const e = err as { name?: unknown; cause?: unknown };
      if (e?.name !== 'KafkaJSGroupCoordinatorNotFound' || e.cause !== undefined || typeof this.brokerPool?.findConnectedBroker !== 'function') throw err;
      try {
        const broker = await this.brokerPool.findConnectedBroker();
        await broker.findGroupCoordinator({ groupId: request.groupId, coordinatorType: request.coordinatorType ?? 0 });
      } catch (why) {
        const type = (why as { type?: unknown } | null)?.type;
        if (typeof type === 'string' && AUTHORIZATION_TYPES.has(type)) e.cause = why;
      }
      throw err;
    }
  };
}
