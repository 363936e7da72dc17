import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ERROR_CODES, EdgebridgeError } from '../../src/errors.js';

describe('error registry', () => {
  it('documents every code in docs/errors.md', () => {
    const doc = readFileSync(new URL('../../docs/errors.md', import.meta.url), 'utf8');
    for (const code of Object.keys(ERROR_CODES)) expect(doc, code).toContain(`\`${code}\``);
    const documented = [...doc.matchAll(/`(EB_ERR_[A-Z_]+)`/g)].map((m) => m[1]);
    for (const code of documented) expect(Object.keys(ERROR_CODES), `${code} is documented but not defined`).toContain(code);
  });

  it('carries code, retryable flag and cause', () => {
    const cause = new Error('disk I/O error');
    const err = new EdgebridgeError('EB_ERR_LOG_WRITE', 'append failed', { cause });
    expect(err.code).toBe('EB_ERR_LOG_WRITE');
    expect(err.retryable).toBe(true);
    expect(err.cause).toBe(cause);
  });
});
