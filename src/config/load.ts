import { readFileSync } from 'node:fs';
import { EdgebridgeError } from '../errors.js';
import { describeIssues, NO_SCHEMA_MESSAGE } from './issues.js';
import { configSchema, type Config } from './schema.js';
import { YamlSource, type SourcePosition } from './yaml-source.js';

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

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object') {
    Object.values(value).forEach(deepFreeze);
    Object.freeze(value);
  }
  return value;
}

/** The environment overrides that apply: variable name → key path, for those set and not empty. */
export function envOverridesUsed(env: NodeJS.ProcessEnv): Map<string, string[]> {
  return new Map(
    Object.entries(ENV_OVERRIDES)
      .filter(([name]) => env[name] !== undefined && env[name] !== '')
      .map(([name, { path }]) => [name, path]),
  );
}

/**
 * Validates an already-parsed config object (plus env overrides), returning a frozen Config.
 * `positionOf` points problems at their line in the file the object was read from.
 */
export function parseConfig(
  raw: unknown,
  source = '(inline)',
  env: NodeJS.ProcessEnv = {},
  positionOf?: (path: readonly PropertyKey[]) => SourcePosition | undefined,
): Config {
  const doc: Record<string, unknown> =
    raw !== null && typeof raw === 'object' && !Array.isArray(raw) ? structuredClone(raw as Record<string, unknown>) : {};
  if (raw !== null && raw !== undefined && (typeof raw !== 'object' || Array.isArray(raw))) {
    throw new EdgebridgeError('EB_ERR_CONFIG_INVALID', `invalid config ${source}: the top level must be a mapping of sections`);
  }
  const envUsed = new Map<string, string>();
  for (const [name, path] of envOverridesUsed(env)) {
    const { parse, replaces = [] } = ENV_OVERRIDES[name]!;
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
    parentOf(path)[path[path.length - 1]!] = parse(env[name]!);
    envUsed.set(path.join('.'), name);
  }
  const result = configSchema.safeParse(doc, { error: () => NO_SCHEMA_MESSAGE });
  if (!result.success) {
    const problems = describeIssues(result.error.issues, { value: doc, envUsed, positionOf });
    throw new EdgebridgeError('EB_ERR_CONFIG_INVALID', `invalid config ${source}:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
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
  const source = new YamlSource(text);
  const syntaxErrors = source.syntaxErrors();
  if (syntaxErrors.length > 0) {
    throw new EdgebridgeError('EB_ERR_CONFIG_READ', `config ${file} is not valid YAML:\n${syntaxErrors.map((e) => `  - ${e}`).join('\n')}`);
  }
  let raw: unknown;
  try {
    raw = source.toJS();
  } catch (err) {
    // e.g. an alias to an anchor that is not defined, or an alias bomb
    throw new EdgebridgeError('EB_ERR_CONFIG_READ', `config ${file} is not valid YAML: ${(err as Error).message}`, { cause: err });
  }
  return parseConfig(raw, file, env, (path) => source.positionOf(path));
}
