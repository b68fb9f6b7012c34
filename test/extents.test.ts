// Which bytes of a blob are on disk (src/registry/fill/extents.ts): the interval list the sequential fill,
// the Range fetches, the readers and the checkpoints share. Merging, lookups and gaps, and the JSON a
// checkpoint keeps (test/oci-grammar.test.ts has one more case).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Extents } from '../src/registry/fill/extents.ts';

describe('extents', () => {
  test('adding merges overlapping and adjacent intervals, keeps the others apart, ignores empty ones', () => {
    const e = new Extents();
    e.add(10, 20);
    e.add(30, 40);
    e.add(20, 25); // adjacent to [10, 20)
    e.add(5, 5); // empty
    e.add(0, 2);
    assert.deepEqual(e.toJSON(), [
      [0, 2],
      [10, 25],
      [30, 40],
    ]);
    e.add(1, 35); // bridges all three
    assert.deepEqual(e.toJSON(), [[0, 40]]);
    assert.equal(e.bytes, 40);
  });

  test('availableFrom is the end of the run that holds the byte, or the byte itself when missing', () => {
    const e = new Extents([
      [0, 4],
      [8, 12],
    ]);
    assert.equal(e.availableFrom(0), 4);
    assert.equal(e.availableFrom(3), 4);
    assert.equal(e.availableFrom(4), 4, 'byte 4 is missing: [0, 4) is half-open');
    assert.equal(e.availableFrom(9), 12);
    assert.equal(e.availableFrom(20), 20);
  });

  test('gaps and missingIn name the missing half-open intervals', () => {
    const e = new Extents([
      [2, 4],
      [6, 8],
    ]);
    assert.deepEqual(e.gaps(10), [
      [0, 2],
      [4, 6],
      [8, 10],
    ]);
    assert.deepEqual(e.gaps(7), [
      [0, 2],
      [4, 6],
    ]);
    assert.deepEqual(e.missingIn(3, 7), [[4, 6]]);
    assert.deepEqual(e.missingIn(2, 4), []);
    assert.deepEqual(e.missingIn(8, 12), [[8, 12]]);
    assert.equal(e.covers(10), false);
    e.add(0, 10);
    assert.equal(e.covers(10), true);
    assert.deepEqual(e.gaps(10), []);
  });

  test('a checkpoint round trip keeps the list; clear forgets it', () => {
    const e = new Extents([
      [0, 3],
      [5, 9],
    ]);
    const copy = new Extents(JSON.parse(JSON.stringify(e)) as Array<[number, number]>);
    assert.deepEqual(copy.toJSON(), e.toJSON());
    e.clear();
    assert.equal(e.bytes, 0);
    assert.deepEqual(e.gaps(4), [[0, 4]]);
    assert.deepEqual(
      copy.toJSON(),
      [
        [0, 3],
        [5, 9],
      ],
      'toJSON is a copy: clearing one list leaves the other',
    );
  });
});
