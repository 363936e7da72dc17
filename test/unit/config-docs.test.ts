import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ENV_OVERRIDES, parseConfig } from '../../src/config/load.js';

const doc = readFileSync(new URL('../../docs/configuration.md', import.meta.url), 'utf8');

/** The rows of the markdown table under `heading`: the backticked names in each row's first cell, and the row. */
function tableRows(heading: string): { names: string[]; cells: string[] }[] {
  const section = doc.slice(doc.indexOf(heading));
  const lines = section.split('\n').slice(1);
  const start = lines.findIndex((l) => l.startsWith('|'));
  const rows: { names: string[]; cells: string[] }[] = [];
  for (const line of lines.slice(start + 2)) {
    if (!line.startsWith('|')) break;
    const cells = line.split(' | ').map((c) => c.replace(/^\| ?| ?\|$/g, ''));
    rows.push({ names: [...cells[0]!.matchAll(/`([^`]+)`/g)].map((m) => m[1]!), cells });
  }
  return rows;
}

/** Every leaf key of a config (arrays as `key[]`), as docs/configuration.md names them. */
function leafKeys(value: unknown, prefix = ''): string[] {
  if (Array.isArray(value)) {
    // a list of values is one key; a list of mappings has keys of its own (`routes[].kafka`)
    const first: unknown = value[0];
    return first !== null && typeof first === 'object' ? leafKeys(first, `${prefix}[]`) : [prefix];
  }
  if (value !== null && typeof value === 'object' && !Buffer.isBuffer(value)) {
    return Object.entries(value).flatMap(([k, v]) => leafKeys(v, prefix ? `${prefix}.${k}` : k));
  }
  return [prefix];
}

describe('docs/configuration.md and the schema', () => {
  it('documents every environment override once, with the key it sets, and nothing else', () => {
    const rows = tableRows('## Environment overrides').filter((r) => r.names[0] !== 'EDGEBRIDGE_CONFIG');
    expect(rows.map((r) => r.names[0]).sort()).toEqual(Object.keys(ENV_OVERRIDES).sort());
    for (const { names, cells } of rows) expect(cells[1], names[0]).toBe(`\`${ENV_OVERRIDES[names[0]!]!.path.join('.')}\``);
  });

  it('documents every key of a config with every section present (defaults filled in), and no key the schema lacks', () => {
    // Every optional section present, so that its keys and their defaults appear.
    const config = parseConfig({
      gateway: { id: 'gw' },
      mqtt: {
        host: '0.0.0.0',
        tls: { host: '0.0.0.0', certFile: 'c', keyFile: 'k', caFile: 'ca', requireCertificate: true, useIdentityAsUsername: true },
        websocket: { host: '0.0.0.0' },
        auth: { passwordFile: 'p', aclFile: 'a' },
      },
      kafka: {
        brokers: ['k:9092'],
        clientId: 'c',
        ssl: { caFile: 'ca', certFile: 'c', keyFile: 'k', servername: 's' },
        sasl: { mechanism: 'scram-sha-512', username: 'u', passwordFile: 'f' },
      },
      commands: {},
      storage: { dir: 'd' },
      routes: [{ mqtt: 'devices/{deviceId}/t', kafka: 't', dedup: { fields: ['bootId', 'seq'], mode: 'window' } }],
    });
    const documented = new Set(tableRows('## Keys').flatMap((r) => r.names));
    const isDocumented = (key: string): boolean => {
      if (documented.has(key)) return true;
      // or as a whole: the nearest documented section holding it, when none of its keys has a row
      for (let k = key; k.includes('.'); ) {
        k = k.slice(0, k.lastIndexOf('.'));
        if (documented.has(k)) return ![...documented].some((d) => d.startsWith(`${k}.`));
      }
      return false;
    };
    const missing = leafKeys(config).filter((k) => !isDocumented(k));
    expect(missing).toEqual([]);
    const leaves = new Set(
      leafKeys(config).flatMap((k) => k.split('.').flatMap((_, i, parts) => [parts.slice(0, i + 1).join('.'), parts.slice(0, i + 1).join('.').replace(/\[\]$/, '')])),
    );
    // kafka.sasl.password is the alternative to the passwordFile set above (exactly one of them)
    const unknown = [...documented].filter((k) => !leaves.has(k) && k !== 'kafka.sasl.password');
    expect(unknown).toEqual([]);
  });
});
