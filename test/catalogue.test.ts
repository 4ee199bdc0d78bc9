// One catalogue of error codes: the code, the types and docs/errors.md stay in step.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { ERROR_CODES, EdgeError } from '../src/core/errors.js';

t.test('every error code is documented, and every documented code exists', async (t) => {
  const doc = readFileSync(new URL('../docs/errors.md', import.meta.url), 'utf8');
  const documented = new Set([...doc.matchAll(/^\| `(E_[A-Z_]+)` \|/gm)].map((m) => m[1]));
  t.same([...documented].sort(), Object.keys(ERROR_CODES).sort());
});

t.test('an EdgeError carries its code, whether it is worth retrying, and its HTTP status, from the catalogue', async (t) => {
  const e = new EdgeError('E_CACHE_WRITE', 'disk full');
  t.equal(e.code, 'E_CACHE_WRITE');
  t.equal(e.retryable, true, 'a disk that cannot write now may write later');
  t.equal(e.status, 503);
  t.ok(e instanceof Error);
  for (const code of ['E_ACL', 'E_AUTH', 'E_TOO_LARGE', 'E_MALFORMED', 'E_RULES_REQUEST'] as const)
    t.equal(new EdgeError(code, 'x').retryable, false, `${code} is refused for good`);
  for (const code of ['E_CACHE_FULL', 'E_STOPPING'] as const) t.equal(new EdgeError(code, 'x').status, 503, `${code} is answered 503`);
});
