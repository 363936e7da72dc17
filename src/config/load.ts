import { readFileSync } from 'node:fs';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import type { z } from 'zod';
import { EdgebridgeError } from '../errors.js';
import { configSchema, type Config } from './schema.js';

/**
 * Environment variables that override single config keys (for containers and systemd units).
 * `replaces`: keys the variable takes the place of, removed when it is set (the password given
 * in the environment wins over a passwordFile in the file).
 */
export const ENV_OVERRIDES: Readonly<Record<string, { path: string[]; parse: (v: string) => unknown; replaces?: string[][] }>> = {
  EDGEBRIDGE_GATEWAY_ID: { path: ['gateway', 'id'], parse: String },
  EDGEBRIDGE_MQTT_HOST: { path: ['mqtt', 'host'], parse: String },
  EDGEBRIDGE_MQTT_PORT: { path: ['mqtt', 'port'], parse: parseNumber },
  EDGEBRIDGE_KAFKA_BROKERS: { path: ['kafka', 'brokers'], parse: parseList },
  EDGEBRIDGE_KAFKA_SASL_MECHANISM: { path: ['kafka', 'sasl', 'mechanism'], parse: (v) => v.trim().toLowerCase() },
  EDGEBRIDGE_KAFKA_SASL_USERNAME: { path: ['kafka', 'sasl', 'username'], parse: String },
  EDGEBRIDGE_KAFKA_SASL_PASSWORD: { path: ['kafka', 'sasl', 'password'], parse: String, replaces: [['kafka', 'sasl', 'passwordFile']] },
  EDGEBRIDGE_STORAGE_DIR: { path: ['storage', 'dir'], parse: String },
  EDGEBRIDGE_STORAGE_SYNCHRONOUS: { path: ['storage', 'synchronous'], parse: String },
  EDGEBRIDGE_LOG_LEVEL: { path: ['log', 'level'], parse: String },
};

function parseNumber(v: string): unknown {
  return v.trim() !== '' && Number.isFinite(Number(v)) ? Number(v) : v;
}

function parseList(v: string): string[] {
  return v
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

function formatPath(path: readonly PropertyKey[]): string {
  return path.reduce<string>((acc, key) => {
    if (typeof key === 'number') return `${acc}[${key}]`;
    return acc === '' ? String(key) : `${acc}.${String(key)}`;
  }, '');
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object') {
    Object.values(value).forEach(deepFreeze);
    Object.freeze(value);
  }
  return value;
}

function formatIssues(issues: readonly z.core.$ZodIssue[], source: string, envUsed: Map<string, string>): string {
  const lines = issues.map((issue) => {
    const keyPath = formatPath(issue.path);
    const viaEnv = envUsed.get(keyPath);
    let message = issue.message;
    if (issue.code === 'unrecognized_keys') {
      const keys = issue.keys.map((k) => (keyPath ? `${keyPath}.${k}` : k));
      return `  - unknown key ${keys.join(', ')}`;
    }
    return `  - ${keyPath || '(root)'}: ${message}${viaEnv ? ` (set by ${viaEnv})` : ''}`;
  });
  return `invalid config ${source}:\n${lines.join('\n')}`;
}

/** Validates an already-parsed config object (plus env overrides), returning a frozen Config. */
export function parseConfig(
  raw: unknown,
  source = '(inline)',
  env: NodeJS.ProcessEnv = {},
): Config {
  const doc: Record<string, unknown> =
    raw !== null && typeof raw === 'object' && !Array.isArray(raw) ? structuredClone(raw as Record<string, unknown>) : {};
  if (raw !== null && raw !== undefined && (typeof raw !== 'object' || Array.isArray(raw))) {
    throw new EdgebridgeError('EB_ERR_CONFIG_INVALID', `invalid config ${source}: the top level must be a mapping of sections`);
  }
  const envUsed = new Map<string, string>();
  for (const [name, { path, parse, replaces = [] }] of Object.entries(ENV_OVERRIDES)) {
    const value = env[name];
    if (value === undefined || value === '') continue;
    const parentOf = (keys: string[]): Record<string, unknown> => {
      let node = doc;
      for (const key of keys.slice(0, -1)) {
        const next = node[key];
        if (next === null || typeof next !== 'object' || Array.isArray(next)) node[key] = {};
        node = node[key] as Record<string, unknown>;
      }
      return node;
    };
    for (const keys of replaces) delete parentOf(keys)[keys[keys.length - 1]!];
    parentOf(path)[path[path.length - 1]!] = parse(value);
    envUsed.set(path.join('.'), name);
  }
  const result = configSchema.safeParse(doc);
  if (!result.success) {
    throw new EdgebridgeError('EB_ERR_CONFIG_INVALID', formatIssues(result.error.issues, source, envUsed));
  }
  return deepFreeze(result.data);
}

/** Reads, parses and validates a YAML config file. */
export function loadConfig(file: string, env: NodeJS.ProcessEnv = process.env): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new EdgebridgeError('EB_ERR_CONFIG_READ', `cannot read config ${file}: ${(err as Error).message}`, { cause: err });
  }
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (err) {
    const where = err instanceof YAMLParseError && err.linePos ? ` at line ${err.linePos[0].line}` : '';
    throw new EdgebridgeError('EB_ERR_CONFIG_READ', `config ${file} is not valid YAML${where}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  return parseConfig(raw, file, env);
}

/**
 * The config as shown to people (`check-config`): secrets replaced by "[redacted]". The file
 * names of passwordFile, keyFile etc. stay: they are not secrets.
 */
export function redactSecrets(config: Config): unknown {
  const copy = structuredClone(config) as Config & { kafka: { sasl?: { password?: string } } };
  if (copy.kafka.sasl?.password !== undefined) copy.kafka.sasl.password = '[redacted]';
  return copy;
}
