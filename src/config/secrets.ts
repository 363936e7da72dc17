import type { Config } from './schema.js';

/** Keys whose values are secrets: never printed, in errors or by check-config. */
export const SECRET_KEYS: readonly string[] = ['kafka.sasl.password'];

export const REDACTED = '[redacted]';

/**
 * The config as shown to people (`check-config --print`): secrets replaced by "[redacted]". The
 * file names of passwordFile, keyFile etc. stay: they are not secrets.
 */
export function redactSecrets(config: Config): unknown {
  const copy = structuredClone(config) as Config & { kafka: { sasl?: { password?: string } } };
  if (copy.kafka.sasl?.password !== undefined) copy.kafka.sasl.password = REDACTED;
  return copy;
}
