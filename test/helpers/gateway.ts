import { inject } from 'vitest';
import { pino, type Logger } from 'pino';
import { parseConfig } from '../../src/config/load.js';
import type { ConfigInput } from '../../src/config/schema.js';
import { Gateway } from '../../src/gateway.js';

export function kafkaBrokers(): string[] {
  return inject('kafkaBrokers');
}

export function uniqueName(prefix: string): string {
  return `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 7)}`;
}

/** Test logs go to a file-less silent logger unless EDGEBRIDGE_TEST_LOG=level is set. */
export function testLogger(): Logger {
  return pino({ level: process.env.EDGEBRIDGE_TEST_LOG ?? 'silent' });
}

export interface TestGatewayOptions {
  readonly dir: string;
  readonly topic: string;
  readonly gatewayId?: string;
  readonly brokers?: string[];
  readonly overrides?: Partial<ConfigInput>;
}

export function testConfig(options: TestGatewayOptions): ConfigInput {
  return {
    gateway: { id: options.gatewayId ?? uniqueName('gw') },
    mqtt: { host: '127.0.0.1', port: 0 },
    kafka: { brokers: options.brokers ?? kafkaBrokers() },
    storage: { dir: options.dir },
    admin: { host: '127.0.0.1', port: 0 },
    routes: [{ mqtt: 'devices/{deviceId}/telemetry/#', kafka: options.topic }],
    ...options.overrides,
  };
}

/** The real gateway, in-process, on an ephemeral MQTT port. */
export async function startTestGateway(options: TestGatewayOptions): Promise<Gateway & { url: string }> {
  const gateway = await Gateway.start(parseConfig(testConfig(options)), { logger: testLogger(), statusIntervalMs: 0 });
  return Object.assign(gateway, { url: `mqtt://127.0.0.1:${gateway.mqttAddress.port}` });
}
