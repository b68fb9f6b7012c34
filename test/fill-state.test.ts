// The fill's state machine (src/registry/fill/fill-state.ts) as a unit: every allowed transition, the
// refused ones, the events in the order readers rely on, a late failure after the commit (ignored), and
// waiters woken or rejected. Whole fills run through berth in resumable-fill, fill-faults, lazy-range….
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { type FillPhase, FillState, IllegalTransition } from '../src/registry/fill/fill-state.ts';

/** A machine with every event it publishes recorded, in order. */
function recorded(): { s: FillState; events: string[] } {
  const s = new FillState();
  const events: string[] = [];
  s.on('sized', (n) => events.push(`sized ${n}`));
  s.on('flowing', () => events.push('flowing'));
  s.on('progress', () => events.push('progress'));
  s.on('committed', () => events.push('committed'));
  s.on('failed', (err) => events.push(`failed ${err.message}`));
  s.on('background', () => events.push('background'));
  return { s, events };
}

/** Drives a fresh machine to `phase` by the shortest allowed path. */
function at(phase: FillPhase): { s: FillState; events: string[] } {
  const r = recorded();
  if (phase === 'waiting') return r;
  if (phase === 'failed') {
    r.s.failed(new Error('before'));
  } else {
    r.s.sized(10);
    if (phase === 'flowing') r.s.flowing();
    if (phase === 'committed') r.s.committed();
  }
  r.events.length = 0;
  return r;
}

const move: Record<FillPhase, (s: FillState) => boolean> = {
  waiting: () => {
    throw new Error('nothing moves a fill back to waiting');
  },
  sized: (s) => s.sized(7),
  flowing: (s) => s.flowing(),
  committed: (s) => s.committed(),
  failed: (s) => s.failed(new Error('boom')),
};

const eventsOf: Record<Exclude<FillPhase, 'waiting'>, string[]> = {
  sized: ['sized 7'],
  flowing: ['flowing'],
  committed: ['progress', 'committed'],
  failed: ['failed boom', 'progress'],
};

describe('fill state machine', () => {
  test('starts waiting, with neither size nor error', () => {
    const s = new FillState();
    assert.equal(s.state, 'waiting');
    assert.equal(s.size, undefined);
    assert.equal(s.error, undefined);
    assert.equal(s.ended, false);
  });

  const allowed: Array<[FillPhase, Exclude<FillPhase, 'waiting'>]> = [
    ['waiting', 'sized'],
    ['waiting', 'failed'],
    ['sized', 'flowing'],
    ['sized', 'committed'],
    ['sized', 'failed'],
    ['flowing', 'committed'],
    ['flowing', 'failed'],
  ];
  for (const [from, to] of allowed) {
    test(`${from} → ${to}: moves and publishes ${eventsOf[to].join(', ')}`, () => {
      const { s, events } = at(from);
      assert.equal(move[to](s), true);
      assert.equal(s.state, to);
      assert.deepEqual(events, eventsOf[to]);
    });
  }

  const refused: Array<[FillPhase, Exclude<FillPhase, 'waiting'>]> = [
    ['waiting', 'flowing'],
    ['waiting', 'committed'],
  ];
  for (const [from, to] of refused) {
    test(`${from} → ${to} is a bug: it throws and changes nothing`, () => {
      const { s, events } = at(from);
      assert.throws(() => move[to](s), IllegalTransition);
      assert.equal(s.state, from);
      assert.deepEqual(events, []);
    });
  }

  for (const from of ['sized', 'flowing', 'committed', 'failed'] as const) {
    test(`a second size in ${from} is ignored: the size stays (the fill compares sizes itself)`, () => {
      const { s, events } = at(from);
      const before = s.size;
      assert.equal(s.sized(99), false);
      assert.equal(s.size, before);
      assert.equal(s.state, from);
      assert.deepEqual(events, []);
    });
  }

  test('flowing twice publishes once', () => {
    const { s, events } = at('flowing');
    assert.equal(s.flowing(), false);
    assert.deepEqual(events, []);
  });

  for (const from of ['committed', 'failed'] as const) {
    for (const to of ['flowing', 'committed', 'failed'] as const) {
      test(`once ${from}, ${to} is ignored: false, nothing published, the outcome kept`, () => {
        const { s, events } = at(from);
        const error = s.error;
        assert.equal(move[to](s), false);
        assert.equal(s.state, from);
        assert.equal(s.error, error, from === 'failed' ? 'the first error stays' : 'a committed fill has no error');
        assert.deepEqual(events, []);
        assert.equal(s.ended, true);
      });
    }
  }

  test('a whole fill publishes sized, flowing, progress…, then progress and committed last', () => {
    const { s, events } = recorded();
    s.sized(3);
    s.flowing();
    s.progress();
    s.progress();
    s.committed();
    s.failed(new Error('shutting down')); // a shutdown fails every fill: a committed one stays committed
    assert.deepEqual(events, ['sized 3', 'flowing', 'progress', 'progress', 'progress', 'committed']);
    assert.equal(s.state, 'committed');
    assert.equal(s.error, undefined);
  });

  test('a failure publishes failed before the progress that wakes readers, so they find the error', () => {
    const s = new FillState();
    s.sized(3);
    let seen: [FillPhase, Error | undefined] | undefined;
    s.once('progress', () => (seen = [s.state, s.error]));
    const err = new Error('upstream went away');
    s.failed(err);
    assert.deepEqual(seen, ['failed', err]);
  });
});

describe('fill state waiters', () => {
  test('readers waiting in changed() all wake on progress, on commit and on failure', async () => {
    for (const end of [(s: FillState) => s.progress(), (s: FillState) => s.committed(), (s: FillState) => s.failed(new Error('x'))]) {
      const s = new FillState();
      s.sized(1);
      const woken = Promise.all([s.changed(), s.changed(), s.changed()]);
      end(s);
      await woken;
      assert.equal(s.listenerCount('progress'), 0, 'no listener stays behind');
    }
  });

  test('whenSized resolves with the size, at once when known', async () => {
    const s = new FillState();
    const size = s.whenSized();
    s.sized(42);
    assert.equal(await size, 42);
    assert.equal(await s.whenSized(), 42);
    assert.equal(s.listenerCount('sized') + s.listenerCount('failed'), 0);
  });

  test('whenFlowing resolves on flowing, at once when flowing or committed', async () => {
    const s = new FillState();
    s.sized(1);
    const flowing = s.whenFlowing();
    s.flowing();
    await flowing;
    await s.whenFlowing();
    s.committed();
    await s.whenFlowing();
    const lazy = at('sized').s;
    lazy.committed(); // completed by Range fetches alone: never flowing
    await lazy.whenFlowing();
  });

  test('whenDone resolves on commit', async () => {
    const s = new FillState();
    s.sized(1);
    s.flowing();
    const done = s.whenDone();
    s.committed();
    await done;
    await s.whenDone();
    assert.equal(s.listenerCount('committed') + s.listenerCount('failed'), 0);
  });

  test('every waiter rejects with the error when the fill fails, and at once once it has', async () => {
    const s = new FillState();
    const err = new Error('no such blob upstream');
    const waits = [s.whenSized(), s.whenFlowing(), s.whenDone()];
    s.failed(err);
    for (const w of waits) await assert.rejects(w, (e) => e === err);
    for (const w of [s.whenSized(), s.whenFlowing(), s.whenDone()]) await assert.rejects(w, (e) => e === err);
    for (const e of ['sized', 'flowing', 'committed', 'failed'] as const) assert.equal(s.listenerCount(e), 0, `no ${e} listener stays behind`);
  });
});
