import { z } from 'zod';
import { configSchema } from './schema.js';
import { REDACTED, SECRET_KEYS } from './secrets.js';
import type { SourcePosition } from './yaml-source.js';

/**
 * zod consults a parse's own error map only for issues whose schema gave no message: those get
 * this marker, and are described from the schema at their path rather than in zod's words.
 */
export const NO_SCHEMA_MESSAGE = '(described from the schema)';

export interface IssueContext {
  /** The config as validated: the file's values with the environment overrides applied. */
  value: unknown;
  /** Key path ("kafka.brokers") → the environment variable that set it. */
  envUsed: ReadonlyMap<string, string>;
  /** Where a key path is written in the file (undefined: not in a file, or not in this one). */
  positionOf?: ((path: readonly PropertyKey[]) => SourcePosition | undefined) | undefined;
}

/**
 * One line per problem: where it is, the key path, what was expected and what was found. In the
 * order of the file's lines (those set by the environment or absent from the file first).
 */
export function describeIssues(issues: readonly z.core.$ZodIssue[], context: IssueContext): string[] {
  const problems = issues.flatMap(unwrapUnion).flatMap((issue): Located[] => {
    if (issue.code === 'unrecognized_keys') {
      return issue.keys.map((key) => {
        const path = [...issue.path, key];
        const mapping = schemaAt(issue.path);
        const known = (mapping?.anyOf ?? [mapping]).flatMap((option) => Object.keys(option?.properties ?? {}));
        const similar = closest(key, known);
        const hint = similar === undefined ? '' : ` (did you mean ${formatPath([...issue.path, similar])}?)`;
        return located(path, context, `unknown key ${formatPath(path)}${hint}`);
      });
    }
    const keyPath = formatPath(issue.path);
    const found = valueAt(context.value, issue.path);
    let text: string;
    if (issue.message === NO_SCHEMA_MESSAGE) {
      const schema = schemaAt(issue.path);
      const expected = schema === undefined ? 'a valid value' : describe(schema);
      text =
        found === undefined
          ? `missing key ${keyPath || '(root)'}: expected ${expected}`
          : `${keyPath || '(root)'}: expected ${expected}, found ${formatValue(found, keyPath)}`;
    } else if (issue.message.startsWith('must be ') && found !== undefined) {
      text = `${keyPath}: ${issue.message.replace(/^must be /, 'expected ')}, found ${formatValue(found, keyPath)}`;
    } else {
      text = `${keyPath}: ${issue.message}`;
    }
    return [located(issue.path, context, text)];
  });
  return problems.sort((a, b) => a.line - b.line || a.col - b.col).map((p) => p.text);
}

export function formatPath(path: readonly PropertyKey[]): string {
  return path.reduce<string>((acc, key) => {
    if (typeof key === 'number') return `${acc}[${key}]`;
    return acc === '' ? String(key) : `${acc}.${String(key)}`;
  }, '');
}

interface Located {
  line: number;
  col: number;
  text: string;
}

/** The problem prefixed with where it is: its line in the file, or the variable that set it. */
function located(path: readonly PropertyKey[], context: IssueContext, text: string): Located {
  const keyPath = formatPath(path);
  for (const [envPath, name] of context.envUsed) {
    if (keyPath === envPath || keyPath.startsWith(`${envPath}.`) || keyPath.startsWith(`${envPath}[`)) {
      return { line: 0, col: 0, text: `set by ${name}: ${text}` };
    }
  }
  const at = context.positionOf?.(path);
  return at === undefined ? { line: 0, col: 0, text } : { ...at, text: `line ${at.line}, column ${at.col}: ${text}` };
}

/**
 * A union (`kafka.ssl: true | {...}`, `dedup: false | {...}`) whose value matched one option's
 * type but failed inside it: that option's own issues say more than "not any of the options".
 */
function unwrapUnion(issue: z.core.$ZodIssue): z.core.$ZodIssue[] {
  if (issue.code !== 'invalid_union' || issue.message !== NO_SCHEMA_MESSAGE) return [issue];
  const entered = issue.errors.filter((option) => option.some((inner) => inner.path.length > 0));
  if (entered.length !== 1) return [issue];
  return entered[0]!.flatMap((inner) => unwrapUnion({ ...inner, path: [...issue.path, ...inner.path] }));
}

function valueAt(value: unknown, path: readonly PropertyKey[]): unknown {
  let node = value;
  for (const key of path) {
    if (node === null || typeof node !== 'object') return undefined;
    node = (node as Record<PropertyKey, unknown>)[key];
  }
  return node;
}

/** A found value as shown: scalars as written (secrets masked), collections by their kind only. */
function formatValue(value: unknown, keyPath: string): string {
  if (SECRET_KEYS.includes(keyPath)) return REDACTED;
  if (value === null) return 'an empty value';
  if (Array.isArray(value)) return value.length === 0 ? 'an empty list' : 'a list';
  if (typeof value === 'object') return 'a mapping';
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

/** The part of the config's JSON Schema (zod's own conversion) this project reads. */
interface JsonSchema {
  type?: string | string[];
  anyOf?: JsonSchema[];
  enum?: unknown[];
  const?: unknown;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  minLength?: number;
  pattern?: string;
  minItems?: number;
  items?: JsonSchema;
  properties?: Record<string, JsonSchema>;
}

let configJsonSchema: JsonSchema | undefined;

/** The schema of the value at `path` (the input side: what a file may say). */
function schemaAt(path: readonly PropertyKey[]): JsonSchema | undefined {
  configJsonSchema ??= z.toJSONSchema(configSchema, { io: 'input', unrepresentable: 'any' }) as JsonSchema;
  let node: JsonSchema | undefined = configJsonSchema;
  for (const key of path) {
    const options: JsonSchema[] = node.anyOf ?? [node];
    node = typeof key === 'number' ? options.find((o) => o.items)?.items : options.find((o) => o.properties?.[String(key)])?.properties?.[String(key)];
    if (node === undefined) return undefined;
  }
  return node;
}

/** What a schema accepts, in words: "an integer from 0 to 65535", "one of "full", "normal"". */
function describe(schema: JsonSchema): string {
  if (schema.anyOf) return schema.anyOf.map(describe).join(' or ');
  if (schema.const !== undefined) return JSON.stringify(schema.const);
  if (schema.enum) return `one of ${schema.enum.map((v) => JSON.stringify(v)).join(', ')}`;
  const types = Array.isArray(schema.type) ? schema.type : [schema.type];
  return types
    .map((type) => {
      switch (type) {
        case 'integer':
        case 'number':
          return describeNumber(type === 'integer' ? 'integer' : 'number', schema);
        case 'string':
          if (schema.pattern !== undefined) return `a string matching /${schema.pattern}/`;
          return (schema.minLength ?? 0) > 0 ? 'a non-empty string' : 'a string';
        case 'boolean':
          return 'true or false';
        case 'array':
          return (schema.minItems ?? 0) > 0 ? `a list of at least ${schema.minItems} item${schema.minItems === 1 ? '' : 's'}` : 'a list';
        case 'object':
          return 'a mapping';
        default:
          return 'a valid value';
      }
    })
    .join(' or ');
}

function describeNumber(kind: 'integer' | 'number', schema: JsonSchema): string {
  const max = schema.maximum === Number.MAX_SAFE_INTEGER ? undefined : schema.maximum;
  const article = kind === 'integer' ? 'an' : 'a';
  if (schema.exclusiveMinimum === 0 && max === undefined) return `a positive ${kind}`;
  if (schema.minimum !== undefined && max !== undefined) return `${article} ${kind} from ${schema.minimum} to ${max}`;
  if (schema.minimum !== undefined) return `${article} ${kind} ≥ ${schema.minimum}`;
  if (schema.exclusiveMinimum !== undefined) return `${article} ${kind} > ${schema.exclusiveMinimum}`;
  return max === undefined ? `${article} ${kind}` : `${article} ${kind} ≤ ${max}`;
}

/** The known key nearest to a misspelt one, if it is close (a typo, not another word). */
function closest(key: string, known: readonly string[]): string | undefined {
  const limit = Math.max(1, Math.floor(key.length / 3));
  let best: { key: string; distance: number } | undefined;
  for (const candidate of known) {
    const distance = editDistance(key.toLowerCase(), candidate.toLowerCase());
    if (distance <= limit && (best === undefined || distance < best.distance)) best = { key: candidate, distance };
  }
  return best?.key;
}

/** Optimal string alignment distance: insertions, deletions, substitutions and adjacent swaps. */
function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i]![j] = Math.min(d[i]![j]!, d[i - 2]![j - 2]! + 1);
    }
  }
  return d[a.length]![b.length]!;
}
