// Who wants a fill and for how long (src/registry/fill/fill-demand.ts), on node:test's mocked timers: the
// abandon grace after the last reader left, prewarm and lazy completion keeping it longer, a reader coming
// back, and the priority of the sequential fill. Whole fills: test/fill-faults.test.ts.
import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, mock, test } from 'node:test';
import { type DemandHooks, FillDemand } from '../src/registry/fill/fill-demand.ts';

const GRACE = 1_000;
const AFTER = 60_000;

function demand(o: { slotFree?: boolean; ended?: boolean } = {}) {
  const calls: string[] = [];
  const hooks: DemandHooks = {
    abandonAfterMs: AFTER,
    abandonGraceMs: GRACE,
    backgroundSlotFree: () => o.slotFree ?? true,
    ended: () => o.ended ?? false,
    startSequential: () => calls.push('start'),
    wentBackground: () => calls.push('background'),
    abandoned: (ms) => calls.push(`abandoned ${ms}`),
    unread: () => calls.push('unread'),
  };
  return { d: new FillDemand(hooks), calls };
}

describe('fill demand', () => {
  beforeEach(() => mock.timers.enable({ apis: ['setTimeout', 'setImmediate'] }));
  afterEach(() => mock.timers.reset());

  test('a fill its last reader left is abandoned after the grace', () => {
    const { d, calls } = demand();
    const release = d.reader();
    release();
    release(); // a second release is ignored
    assert.equal(d.readers, 0);
    mock.timers.tick(GRACE - 1);
    assert.deepEqual(calls, []);
    mock.timers.tick(1);
    assert.deepEqual(calls, [`abandoned ${GRACE}`]);
  });

  test('a reader coming back before the grace keeps the fill', () => {
    const { d, calls } = demand();
    d.reader()();
    mock.timers.tick(GRACE / 2);
    const again = d.reader();
    mock.timers.tick(GRACE * 2);
    assert.deepEqual(calls, []);
    again();
    mock.timers.tick(GRACE);
    assert.deepEqual(calls, [`abandoned ${GRACE}`]);
  });

  test('prewarm keeps it abandonAfterMs without readers', () => {
    const { d, calls } = demand();
    d.wantWhole('background');
    d.unused();
    mock.timers.tick(GRACE * 2);
    assert.deepEqual(calls, []);
    mock.timers.tick(AFTER);
    assert.deepEqual(calls, [`abandoned ${AFTER}`]);
  });

  test('a lazy completion whose reader left goes on as background work when a slot is free', () => {
    const { d, calls } = demand({ slotFree: true });
    const release = d.reader();
    d.completeLater(1_000, false);
    release();
    assert.equal(d.background, true);
    assert.deepEqual(calls, ['background', 'start'], 'it starts now: its client left');
    mock.timers.tick(AFTER);
    assert.deepEqual(calls, ['background', 'start', 'start', `abandoned ${AFTER}`], 'the delayed start finds it already started (the fill ignores a second start)');
    d.reader();
    assert.equal(d.background, false, 'a reader makes it foreground work again');
  });

  test('without a background slot a lazy completion is dropped after the grace', () => {
    const { d, calls } = demand({ slotFree: false });
    const release = d.reader();
    d.completeLater(5_000, false);
    release();
    assert.equal(d.background, false);
    mock.timers.tick(GRACE);
    assert.deepEqual(calls, [`abandoned ${GRACE}`]);
  });

  test('the delayed completion starts only while someone wants the fill', () => {
    const wanted = demand();
    wanted.d.reader();
    wanted.d.completeLater(1_000, false);
    mock.timers.tick(1_000);
    assert.deepEqual(wanted.calls, ['start']);
    const unwanted = demand();
    unwanted.d.completeLater(1_000, false);
    mock.timers.tick(1_000);
    assert.deepEqual(unwanted.calls, []);
    const running = demand();
    running.d.reader();
    running.d.completeLater(1_000, true); // the sequential fill already runs
    mock.timers.tick(1_000);
    assert.deepEqual(running.calls, []);
  });

  test('an ended fill nobody reads is closed, and no timer outlives it', () => {
    const { d, calls } = demand({ ended: true });
    d.reader()();
    assert.deepEqual(calls, ['unread']);
    const other = demand();
    other.d.reader();
    other.d.completeLater(1_000, false);
    other.d.ended();
    mock.timers.tick(AFTER);
    assert.deepEqual(other.calls, []);
  });

  test('the sequential fill is foreground only while a client that wants the whole blob reads or waits', async () => {
    const { d } = demand();
    assert.equal(d.priority(), 'background');
    d.wantWhole('foreground');
    assert.equal(d.priority(), 'background', 'nobody reads yet');
    let flowing!: () => void;
    const waited = d.waitFor(new Promise<void>((ok) => (flowing = ok)));
    assert.equal(d.priority(), 'foreground', 'a client waits for the first bytes');
    flowing();
    await waited;
    assert.equal(d.priority(), 'foreground', 'the waiter counts until the next turn of the event loop');
    mock.timers.tick(0); // runs the setImmediate
    assert.equal(d.priority(), 'background');
    const release = d.reader();
    assert.equal(d.priority(), 'foreground');
    release();
    assert.equal(d.priority(), 'background');
  });
});
