// One catalogue of error codes: the code, the types and docs/errors.md stay in step.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { ERROR_CODES, EdgeError } from '../src/core/errors.js';

t.test('every error code is documented, and every documented code exists', async (t) => {
  const doc = readFileSync(new URL('../docs/errors.md', import.meta.url), 'utf8');
  const documented = new Set([...doc.matchAll(/^\| `(E_[A-Z_]+)` \|/gm)].map((m) => m[1]));
  t.same([...documented].sort(), Object.keys(ERROR_CODES).sort());
});

t.test('an EdgeError carries its code and whether it is worth retrying', async (t) => {
  const e = new EdgeError('E_CACHE_WRITE', 'disk full', { retryable: true });
  t.equal(e.code, 'E_CACHE_WRITE');
  t.equal(e.retryable, true);
  t.ok(e instanceof Error);
});
