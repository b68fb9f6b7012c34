// The bandwidth budget's token buckets (src/upstream/bandwidth.ts) as units, on a clock the test advances
// by hand: how much is granted at once, how long a debt delays the next grant, foreground before background,
// first come first served within a priority, the wait accounting, and the budget's two buckets per chunk.
// test/bandwidth.test.ts checks the same budget through a whole berth against a real upstream.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { BandwidthBudget, type Clock, type Priority, TokenBucket } from '../src/upstream/bandwidth.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

/** A clock that moves only when told; wake-ups run in time order as it passes them. */
class ManualClock implements Clock {
  private t = 1000;
  private pending: Array<{ at: number; fn: () => void }> = [];

  now(): number {
    return this.t;
  }

  after(ms: number, fn: () => void): void {
    this.pending.push({ at: this.t + ms, fn });
  }

  get wakeUps(): number {
    return this.pending.length;
  }

  /** Moves `ms` forward, running each wake-up due on the way (and letting granted promises settle). */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      this.pending.sort((a, b) => a.at - b.at);
      const next = this.pending[0];
      if (!next || next.at > end) break;
      this.pending.shift();
      this.t = next.at;
      next.fn();
      await settle();
    }
    this.t = end;
    await settle();
  }
}

/** Lets resolved promises run their continuations. */
const settle = () => new Promise<void>((resolve) => setImmediate(resolve));

/** Starts a take and records when it was granted. */
function track(bucket: { take(bytes: number, p: Priority): Promise<void> }, bytes: number, p: Priority, order: string[], name: string) {
  const state = { granted: false };
  void bucket.take(bytes, p).then(() => {
    state.granted = true;
    order.push(name);
  });
  return state;
}

describe('token bucket', () => {
  test('grants up to the burst at once and sets no timer for it', async () => {
    const clock = new ManualClock();
    const bucket = new TokenBucket(1 * MiB, 64 * KiB, clock);
    const order: string[] = [];
    const a = track(bucket, 32 * KiB, 'foreground', order, 'a');
    const b = track(bucket, 32 * KiB, 'background', order, 'b');
    await settle();
    assert.ok(a.granted && b.granted, 'both fit in the burst');
    assert.equal(clock.wakeUps, 0, 'nothing waits, so nothing is scheduled');
  });

  test('a grant may overdraw the bucket; the debt delays the next grant by debt / rate', async () => {
    const clock = new ManualClock();
    const bucket = new TokenBucket(1 * MiB, 64 * KiB, clock);
    const order: string[] = [];
    const big = track(bucket, 1 * MiB + 64 * KiB, 'foreground', order, 'big');
    await settle();
    assert.ok(big.granted, 'granted at once: the bucket had tokens');
    const next = track(bucket, 1, 'foreground', order, 'next');
    await clock.advance(990);
    assert.equal(next.granted, false, 'a debt of 1 MiB at 1 MiB/s is not repaid after 990 ms');
    await clock.advance(20);
    assert.ok(next.granted, 'granted once the debt is repaid (1 s, plus a millisecond)');
  });

  test('holds a stream of reads to the rate', async () => {
    const clock = new ManualClock();
    const rate = 2 * MiB;
    const bucket = new TokenBucket(rate, 64 * KiB, clock);
    const started = clock.now();
    let granted = 0;
    const total = 8 * MiB;
    const reader = (async () => {
      while (granted < total) {
        await bucket.take(64 * KiB, 'foreground');
        granted += 64 * KiB;
      }
    })();
    while (granted < total) await clock.advance(10);
    await reader;
    const seconds = (clock.now() - started) / 1000;
    // The burst is granted at once and the last grant overdraws: (total - 2 chunks) / rate at the least.
    assert.ok(seconds >= (total - 128 * KiB) / rate, `8 MiB at 2 MiB/s took ${seconds} s of clock`);
    assert.ok(seconds <= total / rate + 0.2, `8 MiB at 2 MiB/s took ${seconds} s of clock, more than the rate allows`);
  });

  test('foreground waiters are granted before background ones, whatever the order they came in', async () => {
    const clock = new ManualClock();
    const bucket = new TokenBucket(1 * MiB, 64 * KiB, clock);
    const order: string[] = [];
    track(bucket, 256 * KiB, 'foreground', order, 'drain');
    await settle();
    track(bucket, 64 * KiB, 'background', order, 'bg1');
    track(bucket, 64 * KiB, 'background', order, 'bg2');
    track(bucket, 64 * KiB, 'foreground', order, 'fg1');
    track(bucket, 64 * KiB, 'foreground', order, 'fg2');
    await settle();
    assert.deepEqual(order, ['drain'], 'the rest wait for the debt');
    await clock.advance(2000);
    assert.deepEqual(order, ['drain', 'fg1', 'fg2', 'bg1', 'bg2']);
  });

  test('refilled tokens go to the waiting background take before a new one; a foreground take goes first', async () => {
    const clock = new ManualClock();
    const bucket = new TokenBucket(1 * MiB, 64 * KiB, clock);
    const order: string[] = [];
    track(bucket, 128 * KiB, 'background', order, 'drain'); // 64 KiB of debt: repaid after 62.5 ms
    await settle();
    track(bucket, 64 * KiB, 'background', order, 'first'); // its wake-up is due at 63.5 ms
    // At 63 ms the bucket holds tokens again while `first` still waits for its wake-up.
    await clock.advance(63);
    assert.deepEqual(order, ['drain']);
    track(bucket, 64 * KiB, 'background', order, 'second');
    const fg = track(bucket, 1, 'foreground', order, 'fg');
    await settle();
    assert.ok(fg.granted, 'a foreground take with tokens there is granted at once, ahead of background waiters');
    assert.deepEqual(order, ['drain', 'fg'], 'the new background take did not jump the queue');
    await clock.advance(3000);
    assert.deepEqual(order, ['drain', 'fg', 'first', 'second'], 'first come, first served within a priority');
  });

  test('counts the time waited, by priority', async () => {
    const clock = new ManualClock();
    const bucket = new TokenBucket(1 * MiB, 64 * KiB, clock);
    const order: string[] = [];
    track(bucket, 1 * MiB, 'foreground', order, 'drain');
    await settle();
    const bg = track(bucket, 1, 'background', order, 'bg');
    await clock.advance(2000);
    assert.ok(bg.granted);
    assert.equal(bucket.waitedMs.foreground, 0, 'the first take did not wait');
    assert.ok(bucket.waitedMs.background > 900 && bucket.waitedMs.background < 1100, `waited ${bucket.waitedMs.background} ms`);
  });
});

describe('bandwidth budget', () => {
  test('without limits it is not limited and passes bodies through untouched', async () => {
    const budget = new BandwidthBudget(undefined, [['a.example', undefined]], new ManualClock());
    assert.equal(budget.limited, false);
    const chunks = [Buffer.from('ab'), Buffer.from('cd')];
    const out: Buffer[] = [];
    const body = (async function* () {
      yield* chunks;
    })();
    for await (const c of budget.throttle('a.example', body, () => 'foreground')) out.push(c);
    assert.deepEqual(out, chunks);
  });

  test('a chunk passes its upstream bucket and the global one; another upstream only the global one', async () => {
    const clock = new ManualClock();
    const budget = new BandwidthBudget(
      4 * MiB,
      [
        ['slow.example', 1 * MiB],
        ['fast.example', undefined],
      ],
      clock,
    );
    assert.equal(budget.limited, true);
    const order: string[] = [];
    const take = (up: string, name: string, bytes = 64 * KiB) => {
      const s = { granted: false };
      void budget.take(up, bytes, 'foreground').then(() => {
        s.granted = true;
        order.push(name);
      });
      return s;
    };
    const slow1 = take('slow.example', 'slow1', 128 * KiB);
    await settle();
    assert.ok(slow1.granted, 'granted at once, overdrawing the slow upstream bucket by 64 KiB');
    const slow2 = take('slow.example', 'slow2');
    const fast = take('fast.example', 'fast');
    await clock.advance(30);
    assert.ok(fast.granted, 'the global bucket has budget for the other upstream');
    assert.equal(slow2.granted, false, 'the slow upstream waits for its own bucket');
    await clock.advance(100);
    assert.ok(slow2.granted, 'its bucket repaid the debt after 62.5 ms');
    assert.deepEqual(order, ['slow1', 'fast', 'slow2']);
    assert.ok(budget.waitedMs().foreground > 0, 'the waits are summed over the buckets');
  });
});
