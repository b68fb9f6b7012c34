// SingleFlight (src/registry/single-flight.ts), the one single-flight map of berth: concurrent callers of
// a key share one call, a failure is never remembered, and a memoised success expires on time.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { SingleFlight } from '../src/single-flight.ts';

/** A call that settles when told to, counting how often it was started. */
function gate<V>(): { work: () => Promise<V>; calls: () => number; resolve(v: V): void; reject(e: Error): void } {
  let calls = 0;
  let settle: { resolve(v: V): void; reject(e: Error): void } | undefined;
  return {
    work: () => {
      calls++;
      return new Promise<V>((resolve, reject) => {
        settle = { resolve, reject };
      });
    },
    calls: () => calls,
    resolve: (v) => settle!.resolve(v),
    reject: (e) => settle!.reject(e),
  };
}

describe('SingleFlight', () => {
  it('lets concurrent callers of one key share one call, and keeps keys apart', async () => {
    const flight = new SingleFlight<number>();
    const a = gate<number>();
    const b = gate<number>();
    const first = flight.run('a', a.work);
    const second = flight.run('a', a.work);
    const other = flight.run('b', b.work);
    assert.equal(a.calls(), 1, 'the second caller joined the call in flight');
    assert.equal(b.calls(), 1, 'another key has its own call');
    assert.equal(first, second, 'both callers hold the same promise');
    assert.equal(flight.has('a'), true);
    assert.equal(flight.has('c'), false);
    a.resolve(7);
    b.resolve(8);
    assert.deepEqual(await Promise.all([first, second, other]), [7, 7, 8]);
  });

  it('forgets a success at once without a memo: the next caller makes a new call', async () => {
    const flight = new SingleFlight<number>();
    const a = gate<number>();
    const p = flight.run('k', a.work);
    a.resolve(1);
    await p;
    assert.equal(flight.size, 0);
    assert.equal(flight.has('k'), false);
    const again = flight.run('k', a.work);
    assert.equal(a.calls(), 2);
    a.resolve(2);
    assert.equal(await again, 2);
  });

  it('never memoises a failure, even with a memo', async () => {
    const flight = new SingleFlight<number>(5_000);
    const a = gate<number>();
    const failing = flight.run('k', a.work);
    const joined = flight.run('k', a.work);
    a.reject(new Error('upstream down'));
    await assert.rejects(failing, /upstream down/);
    await assert.rejects(joined, /upstream down/, 'a joined caller hears the same failure');
    assert.equal(flight.size, 0, 'the failure left nothing behind');
    const retry = flight.run('k', a.work);
    assert.equal(a.calls(), 2, 'the next caller tried again');
    a.resolve(3);
    assert.equal(await retry, 3);
  });

  it('turns a synchronous throw into a rejection and remembers nothing', async () => {
    const flight = new SingleFlight<number>(1_000);
    await assert.rejects(
      flight.run('k', () => {
        throw new Error('bad key');
      }),
      /bad key/,
    );
    assert.equal(flight.size, 0);
  });

  it('answers from a memoised success until the memo expires, then calls again', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const flight = new SingleFlight<number>(5_000);
    const a = gate<number>();
    const p = flight.run('k', a.work);
    a.resolve(42);
    assert.equal(await p, 42);
    await Promise.resolve(); // the memo timer is set once the call's own settlement handler ran
    t.mock.timers.tick(4_999);
    assert.equal(await flight.run('k', a.work), 42);
    assert.equal(a.calls(), 1, 'within the memo: no new call');
    t.mock.timers.tick(1);
    assert.equal(flight.size, 0, 'the memo expired');
    const fresh = flight.run('k', a.work);
    assert.equal(a.calls(), 2, 'after the memo: a new call');
    a.resolve(43);
    assert.equal(await fresh, 43);
  });
});
