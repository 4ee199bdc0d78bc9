// Message ids the proxy picks for what it sends on its own: one counter per endpoint (RFC 7252
// §4.4), so that one busy peer cannot make the proxy use an id again with another peer soon.
import t from 'tap';
import { MessageIds } from '../src/adapters/coap/message-ids.js';

t.test('each endpoint counts on its own, from a random start', async (t) => {
  const ids = new MessageIds();
  const a0 = ids.next('10.0.0.1|5683', 0);
  for (let i = 0; i < 70_000; i++) ids.next('10.0.0.2|5683', 0);
  t.equal(ids.next('10.0.0.1|5683', 0), (a0 + 1) & 0xffff, "another endpoint's 70,000 messages do not move this one's counter");
  const starts = new Set(Array.from({ length: 20 }, (_, i) => new MessageIds().next(`e${i}`, 0)));
  t.ok(starts.size > 1, 'the start is random');
});

t.test('a counter unused for EXCHANGE_LIFETIME is forgotten; the endpoints remembered are bounded', async (t) => {
  const ids = new MessageIds(3, 1_000);
  ids.next('a', 0);
  ids.next('b', 500);
  ids.expire(1_000);
  t.equal(ids.size, 1, 'a: a lifetime without use');
  ids.next('c', 600);
  ids.next('d', 700);
  ids.next('b', 800);
  ids.next('e', 900);
  t.equal(ids.size, 3, 'never more than the bound');
  ids.expire(1_650);
  t.equal(ids.size, 3, 'c went for room (the least recently used), b stays for its recent use');
  ids.expire(1_801);
  t.equal(ids.size, 1, 'only e is left');
});
