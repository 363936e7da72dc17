import { z } from 'zod';
import { compileRoute } from '../ingress/routes.js';

/**
 * The one config schema: unknown keys are rejected, every default lives here (with its unit in the
 * key name), and the validated result is frozen. docs/configuration.md describes each key.
 */
const kafkaTopicName = z
  .string()
  .regex(/^[a-zA-Z0-9._-]{1,249}$/, 'must be a Kafka topic name: 1-249 of a-z A-Z 0-9 . _ -');

const route = z
  .strictObject({
    mqtt: z.string().min(1),
    kafka: kafkaTopicName,
  })
  .superRefine((value, ctx) => {
    try {
      compileRoute(value);
    } catch (err) {
      ctx.addIssue({ code: 'custom', path: ['mqtt'], message: (err as Error).message });
    }
  });

const port = z.number().int().min(0).max(65535);

export const configSchema = z.strictObject({
  gateway: z.strictObject({
    /** Stable identity of this gateway: the gateway-id header, and later the transactional id. */
    id: z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, 'must be 1-64 of A-Z a-z 0-9 . _ -'),
  }),
  mqtt: z
    .strictObject({
      host: z.string().min(1).default('0.0.0.0'),
      port: port.default(1883),
    })
    .prefault({}),
  kafka: z.strictObject({
    brokers: z.array(z.string().regex(/^[^\s:]+:\d{1,5}$/, 'must be host:port')).min(1),
    clientId: z.string().min(1).optional(),
    connectionTimeoutMs: z.number().int().positive().default(3000),
    requestTimeoutMs: z.number().int().positive().default(30000),
    /** Used when the gateway creates a missing target topic. */
    topicDefaults: z
      .strictObject({
        partitions: z.number().int().min(1).default(3),
        replicationFactor: z.number().int().min(1).default(1),
      })
      .prefault({}),
  }),
  forward: z
    .strictObject({
      /** Most log records sent to Kafka in one batch. */
      batchMaxRecords: z.number().int().min(1).max(100000).default(2000),
      /** How long the forwarder waits for more records before sending a batch that is not full. */
      lingerMs: z.number().int().min(0).max(10000).default(5),
      retry: z
        .strictObject({
          initialMs: z.number().int().positive().default(250),
          maxMs: z.number().int().positive().default(30000),
        })
        .prefault({}),
    })
    .prefault({}),
  storage: z.strictObject({
    /** Directory of the commit log (relative paths resolve against the working directory). */
    dir: z.string().min(1),
    /** SQLite synchronous mode: full makes every acknowledged message survive a power cut. */
    synchronous: z.enum(['full', 'normal']).default('full'),
    /** Most publishes written in one group-commit transaction (bounds how long one write blocks). */
    groupCommitMaxRecords: z.number().int().min(1).max(100000).default(5000),
  }),
  routes: z.array(route).min(1),
  log: z
    .strictObject({
      level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
    })
    .prefault({}),
});

export type ConfigInput = z.input<typeof configSchema>;
export type Config = z.output<typeof configSchema>;
