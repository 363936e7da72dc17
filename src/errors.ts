/**
 * Typed errors with stable codes (EB_ERR_<STAGE>_<PROBLEM>), in the manner of fastify's registry.
 * Every code is documented in docs/errors.md; test/unit/errors.test.ts keeps the two in sync.
 * Codes are never reused once retired.
 */
export const ERROR_CODES = {
  EB_ERR_CONFIG_READ: { retryable: false, summary: 'the config file could not be read or parsed as YAML' },
  EB_ERR_CONFIG_INVALID: { retryable: false, summary: 'the config does not match the schema (the message names the key path)' },
  EB_ERR_CONFIG_FILE: { retryable: false, summary: 'a file the config names (a certificate, key, CA bundle or password file) could not be read or is not what the key expects' },
  EB_ERR_LOG_OPEN: { retryable: false, summary: 'the commit log database could not be opened or created' },
  EB_ERR_LOG_NOT_FOUND: { retryable: false, summary: 'a reader of the commit log (`edgebridge backlog`) found no log in storage.dir' },
  EB_ERR_LOG_LOCKED: { retryable: false, summary: 'another edgebridge process uses this storage.dir' },
  EB_ERR_LOG_CORRUPT: { retryable: false, summary: 'the commit log database is corrupt; it was moved aside' },
  EB_ERR_LOG_WRITE: { retryable: true, summary: 'a write to the commit log failed (disk full, I/O error); nothing was acknowledged' },
  EB_ERR_LOG_READ: { retryable: true, summary: 'the forwarder could not read or update the commit log (I/O error, busy); forwarding pauses and retries, Kafka is not reset' },
  EB_ERR_LOG_CLOSED: { retryable: false, summary: 'the commit log is closed (the gateway is shutting down)' },
  EB_ERR_LOG_TAIL_LOST: { retryable: false, summary: 'the commit log lost records after they were forwarded (a restored backup); new records are forwarded under a new epoch, nothing is skipped' },
  EB_ERR_CHECKPOINT_NEWER: { retryable: true, summary: "the gateway's checkpoint in Kafka was written by a newer edgebridge version; this one does not forward (it would not read it right) and leaves it alone" },
  EB_ERR_CHECKPOINT_GROUP_EMPTY: { retryable: false, summary: "the gateway's checkpoint group had no offset in Kafka (expired or deleted); forwarding resumes from the local position" },
  EB_ERR_LOG_DIVERGED: { retryable: false, summary: 'the commit log shares no epoch with its checkpoint in Kafka; forwarding resumes from the local position and records may reach Kafka twice' },
  EB_ERR_LOG_FULL: { retryable: true, summary: 'storage.maxBytes is reached; acknowledgements are held (backpressure) or the oldest unforwarded records dropped' },
  EB_ERR_INGRESS_PAYLOAD_TOO_LARGE: { retryable: false, summary: 'a publish exceeded mqtt.maxPayloadBytes and was refused' },
  EB_ERR_INGRESS_LISTEN: { retryable: false, summary: 'the MQTT listener could not bind its address' },
  EB_ERR_INGRESS_OVERLOADED: { retryable: true, summary: 'storage.maxQueuedRecords or maxQueuedBytes publishes were waiting to be stored; new ones are refused unacknowledged' },
  EB_ERR_INGRESS_TLS_HANDSHAKE: { retryable: false, summary: 'a TLS handshake on the MQTT listener failed (no or untrusted client certificate, not TLS)' },
  EB_ERR_INGRESS_LOGIN: { retryable: false, summary: 'an MQTT login was refused (wrong password, anonymous, no certificate identity)' },
  EB_ERR_INGRESS_TAKEOVER: { retryable: false, summary: 'an MQTT connection was refused: its client id belongs to another identity' },
  EB_ERR_INGRESS_DENIED: { retryable: false, summary: 'a publish or subscription was denied by the access policy (own topics, ACL file)' },
  EB_ERR_INGRESS_PAYLOAD_INVALID: { retryable: false, summary: 'an MQTT 5 publish said its payload is UTF-8 (Payload Format Indicator) and it is not; refused with reason code 0x99' },
  EB_ERR_INGRESS_MALFORMED: { retryable: false, summary: 'a connection sent a malformed MQTT packet header and was closed' },
  EB_ERR_INGRESS_LIMIT: { retryable: true, summary: 'mqtt.limits.maxConnections was reached; a new connection was closed' },
  EB_ERR_SESSION_WRITE: { retryable: true, summary: 'MQTT session state (a subscription, a queued or retained message, a will) could not be written to the database (disk full, I/O error); the operation failed and its client was told so or disconnected' },
  EB_ERR_ADMIN_LISTEN: { retryable: false, summary: 'the admin HTTP endpoint could not bind its address' },
  EB_ERR_ADMIN_UNREACHABLE: { retryable: true, summary: '`edgebridge status` could not reach the admin endpoint, or it did not answer as an edgebridge gateway' },
  EB_ERR_FORWARD_FENCED: { retryable: false, summary: 'another gateway with the same gateway.id took over the Kafka transactions; this one stopped forwarding' },
  EB_ERR_FORWARD_KAFKA: { retryable: true, summary: 'Kafka rejected or did not answer a forward batch; it is retried' },
  EB_ERR_FORWARD_UNAUTHORIZED: { retryable: true, summary: 'Kafka refuses this gateway for lack of ACLs; the log line lists the ACLs to grant; retried' },
  EB_ERR_FORWARD_AUTHENTICATION: { retryable: true, summary: 'Kafka refused the SASL login of this gateway (user, password or mechanism); buffering and retrying' },
  EB_ERR_FORWARD_TLS: { retryable: true, summary: "the TLS connection to Kafka failed: the broker's certificate cannot be verified (kafka.ssl.caFile, host name) or the handshake was refused; buffering and retrying" },
  EB_ERR_FORWARD_REJECTED: { retryable: false, summary: 'Kafka refuses a record for good (too large, invalid); it goes to the dead-letter topic, or is dropped and counted' },
  EB_ERR_AUTH_FILE: { retryable: false, summary: 'the MQTT password file or ACL file could not be read or written, or has a malformed or unsupported line (the message names file:line)' },
  EB_ERR_AUTH_PASSWD_INVALID: { retryable: false, summary: '`edgebridge passwd` was given an unusable user name or password, the two passwords differ, or the user to remove is not in the file' },
} as const satisfies Record<string, { retryable: boolean; summary: string }>;

export type ErrorCode = keyof typeof ERROR_CODES;

export class EdgebridgeError extends Error {
  readonly code: ErrorCode;
  readonly retryable: boolean;

  constructor(code: ErrorCode, message: string, options: { cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'EdgebridgeError';
    this.code = code;
    this.retryable = ERROR_CODES[code].retryable;
  }
}

/** A short, single-line description of any thrown value, for log lines and CLI output. */
export function describeError(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
