// Failpoints (src/failpoints.ts) are built from the config, not read from the environment at module load:
// the `failpoints` field, which BERTH_FAILPOINTS fills (the crash tests set it on a child berth).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { loadConfig } from '../src/config/load.ts';
import { Failpoints } from '../src/failpoints.ts';

describe('failpoints', () => {
  test('only an armed point crashes', () => {
    const crashed: string[] = [];
    const f = new Failpoints(['fill.before-rename'], (name) => crashed.push(name));
    f.hit('fill.headers');
    f.hit('fill.before-rename');
    assert.deepEqual(crashed, ['fill.before-rename']);
  });

  test('none are armed by default, whatever the environment says', () => {
    const crashed: string[] = [];
    const f = new Failpoints(undefined, (name) => crashed.push(name));
    f.hit('fill.headers');
    assert.deepEqual(crashed, []);
    assert.deepEqual(loadConfig({ config: undefined }, {}).failpoints, []);
  });

  test('BERTH_FAILPOINTS fills the config field, comma separated', () => {
    const c = loadConfig({ config: undefined }, { BERTH_FAILPOINTS: 'fill.headers, fill.mid-body,' });
    assert.deepEqual(c.failpoints, ['fill.headers', 'fill.mid-body']);
  });
});
