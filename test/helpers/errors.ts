import { expect } from 'vitest';
import { EdgebridgeError } from '../../src/errors.js';

/** The EdgebridgeError `fn` throws (the test fails if it throws nothing or something else). */
export function errorOf(fn: () => unknown): EdgebridgeError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(EdgebridgeError);
    return err as EdgebridgeError;
  }
  throw new Error('expected an error');
}
