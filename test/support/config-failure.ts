import assert from 'node:assert/strict';
import { ConfigError } from '../../src/config/load.ts';

/** The message of the ConfigError `fn` throws; fails the test if it throws anything else or nothing. */
export function configFailure(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.message;
  }
  assert.fail('expected a ConfigError');
}
