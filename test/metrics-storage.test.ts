// The storage gauges (berth_storage_bytes, _blobs, _quota_bytes) read what the index holds, a SUM over every
// blob row (PostgreSQL or SQLite). prom-client collects the three at once per scrape: they must share one
// read, and the next scrape must read afresh (a cache here would show an operator yesterday's disk).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Metrics } from '../src/metrics.ts';
import { metricSamples } from './support/links.ts';

test('a scrape reads the index totals once for its three storage gauges, and every scrape reads them again', async () => {
  let reads = 0;
  let bytes = 1000;
  const metrics = new Metrics(
    {
      storage: async () => {
        reads++;
        await new Promise((r) => setImmediate(r));
        return { bytes, blobs: 3, quota: 5000 };
      },
    },
    false,
  );
  const first = await metrics.registry.metrics();
  assert.equal(reads, 1, 'reads of the storage source in one scrape');
  assert.equal(metricSamples(first, 'berth_storage_bytes')[0]?.value, 1000);
  assert.equal(metricSamples(first, 'berth_storage_blobs')[0]?.value, 3);
  assert.equal(metricSamples(first, 'berth_storage_quota_bytes')[0]?.value, 5000);
  bytes = 2000;
  const second = await metrics.registry.metrics();
  assert.equal(reads, 2, 'reads after a second scrape');
  assert.equal(metricSamples(second, 'berth_storage_bytes')[0]?.value, 2000);
});

test('a storage source that fails fails that scrape only: the next one reads again', async () => {
  let reads = 0;
  const metrics = new Metrics(
    {
      storage: async () => {
        reads++;
        if (reads === 1) throw new Error('index away');
        return { bytes: 7, blobs: 1, quota: undefined };
      },
    },
    false,
  );
  await assert.rejects(metrics.registry.metrics(), /index away/);
  const next = await metrics.registry.metrics();
  assert.equal(metricSamples(next, 'berth_storage_bytes')[0]?.value, 7);
  assert.equal(reads, 2);
});
