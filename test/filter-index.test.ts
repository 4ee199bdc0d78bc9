// The subscription index (src/core/filter-index.ts) against topicMatches, which it must agree with
// on every filter and topic: random filters and topics from fast-check over a small alphabet of
// levels (so that they meet), `$` topics, empty levels, wildcards where MQTT forbids them; and random
// add/remove sequences, after which removing what is left leaves no node behind. A fixed seed
// (FUZZ_SEED overrides it; it is printed). Then its two users: CoAP observations, found under their
// filter through registration, replacement with another filter and every way an observation ends;
// and /ws connections, under each filter they subscribe to until they unsubscribe or close.
import t from 'tap';
import fc from 'fast-check';
import type { Socket } from 'node:dgram';
import type { WebSocket } from 'ws';
import { FilterIndex } from '../src/core/filter-index.js';
import { topicMatches } from '../src/core/topic.js';
import { OBSERVE_LIMITS, Observations, type Observation, type Peer } from '../src/adapters/coap/observers.js';
import { Block2Store, etagOf } from '../src/adapters/coap/block2.js';
import { ErrorWindow, WsConnection } from '../src/adapters/ws/connection.js';

const SEED = process.env.FUZZ_SEED !== undefined && process.env.FUZZ_SEED !== '' ? Number(process.env.FUZZ_SEED) : 0x7091c;
if (!Number.isInteger(SEED)) throw new Error(`FUZZ_SEED is an integer, not ${process.env.FUZZ_SEED}`);

const topicLevel = fc.constantFrom('', 'a', 'b', 'ab', '$', '$a', 'a$', '+', '#', ' ');
const filterLevel = fc.oneof(topicLevel, fc.constantFrom('+', '#', '+', '#', 'a+', '#a'));
const join = (levels: string[]): string => levels.join('/');
const topic = fc.array(topicLevel, { minLength: 1, maxLength: 6 }).map(join);
const filter = fc.array(filterLevel, { minLength: 1, maxLength: 6 }).map(join);
const value = fc.integer({ min: 0, max: 7 });

/** Where the index keeps an addition: the levels up to its first `#`, which ends every match. */
function slotOf(f: string): string {
  const levels = f.split('/');
  const hash = levels.indexOf('#');
  return hash === -1 ? f : join(levels.slice(0, hash + 1));
}

/** What topicMatches says the index must answer. */
function expected(entries: Iterable<[string, number]>, topicName: string): number[] {
  const out = new Set<number>();
  for (const [f, v] of entries) if (topicMatches(f, topicName)) out.add(v);
  return [...out].sort((a, b) => a - b);
}

const sorted = (vs: readonly number[]): number[] => [...vs].sort((a, b) => a - b);

t.comment(`fuzz seed ${SEED} (set FUZZ_SEED to run another, or this one again)`);

t.test('the MQTT cases by hand: `+`, `#`, `$` topics, empty levels', async (t) => {
  const cases: Array<[string, string[], string[]]> = [
    ['#', ['a', '', '/', 'a/b/c'], ['$SYS/x', '$']],
    ['a/#', ['a', 'a/', 'a/b/c'], ['b', 'ab']],
    ['+', ['a', ''], ['a/b', '/', '$x']],
    ['+/+', ['/', 'a/b', '/b'], ['a', 'a/b/c', '$a/b']],
    ['$SYS/#', ['$SYS', '$SYS/broker/load'], ['SYS/x']],
    ['$SYS/+', ['$SYS/a'], ['$SYS', '$SYS/a/b']],
    ['/a', ['/a'], ['a', '//a']],
    ['a//b', ['a//b'], ['a/b']],
    ['a/#/b', ['a', 'a/x/y'], ['b']],
    ['', [''], ['a', '/']],
  ];
  for (const [f, yes, no] of cases) {
    const index = new FilterIndex<string>();
    index.add(f, 'v');
    for (const topicName of yes) {
      t.equal(topicMatches(f, topicName), true, `topicMatches agrees: ${f} matches "${topicName}"`);
      t.same(index.match(topicName), ['v'], `${f} matches "${topicName}"`);
    }
    for (const topicName of no) {
      t.equal(topicMatches(f, topicName), false, `topicMatches agrees: ${f} does not match "${topicName}"`);
      t.same(index.match(topicName), [], `${f} does not match "${topicName}"`);
    }
    t.equal(index.remove(f, 'v'), true);
    t.equal(index.nodeCount, 0, `nothing left after removing ${f}`);
  }
});

t.test('random filters and topics: the values whose filters match, each once', async (t) => {
  let checked = 0;
  fc.assert(
    fc.property(
      fc.array(fc.tuple(filter, value), { maxLength: 40 }),
      fc.array(topic, { minLength: 1, maxLength: 20 }),
      (entries, topics) => {
        const index = new FilterIndex<number>();
        for (const [f, v] of entries) index.add(f, v);
        for (const topicName of topics) {
          const got = index.match(topicName);
          if (new Set(got).size !== got.length) throw new Error(`"${topicName}" gave a value twice: ${JSON.stringify(got)}`);
          const want = expected(entries, topicName);
          if (JSON.stringify(sorted(got)) !== JSON.stringify(want))
            throw new Error(
              `"${topicName}" over ${JSON.stringify(entries)}: got ${JSON.stringify(sorted(got))}, want ${JSON.stringify(want)}`,
            );
          checked++;
        }
      },
    ),
    { seed: SEED, numRuns: 2_000 },
  );
  t.ok(checked > 10_000, `${checked} topics matched as topicMatches says`);
});

t.test('random add/remove sequences: answers follow, removing everything leaves nothing', async (t) => {
  type Op = { add: boolean; f: string; v: number };
  const op = fc.record({ add: fc.boolean(), f: filter, v: value });
  let sequences = 0;
  fc.assert(
    fc.property(fc.array(op, { maxLength: 60 }), fc.array(topic, { minLength: 1, maxLength: 8 }), (ops: Op[], topics) => {
      const index = new FilterIndex<number>();
      // The additions in place, as the filters given (for topicMatches) under their slot (for counting).
      const held: Array<[string, number]> = [];
      for (const { add, f, v } of ops) {
        if (add) {
          index.add(f, v);
          held.push([f, v]);
        } else {
          const at = held.findIndex(([g, w]) => w === v && slotOf(g) === slotOf(f));
          const removed = index.remove(f, v);
          if (removed !== (at !== -1)) throw new Error(`remove(${f}, ${v}) said ${removed} with ${JSON.stringify(held)}`);
          if (at !== -1) held.splice(at, 1);
        }
        if (index.size !== held.length) throw new Error(`size ${index.size}, ${held.length} held`);
        for (const topicName of topics) {
          const got = sorted(index.match(topicName));
          const want = expected(held, topicName);
          if (JSON.stringify(got) !== JSON.stringify(want))
            throw new Error(`"${topicName}" after ${JSON.stringify(ops)}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
        }
      }
      for (const [f, v] of [...held].reverse()) if (!index.remove(f, v)) throw new Error(`remove(${f}, ${v}) found nothing`);
      if (index.size !== 0 || index.nodeCount !== 0) throw new Error(`left ${index.size} entries in ${index.nodeCount} nodes`);
      for (const topicName of topics) if (index.match(topicName).length !== 0) throw new Error(`"${topicName}" still matched`);
      sequences++;
    }),
    { seed: SEED + 1, numRuns: 1_000 },
  );
  t.equal(sequences, 1_000, 'every sequence ended with an empty index');
});

t.test('a topic of 65,535 bytes of `/` (65,536 empty levels): no recursion, matched and pruned', async (t) => {
  const long = '/'.repeat(65_535);
  const index = new FilterIndex<string>();
  index.add(long, 'exact');
  index.add(`${'/'.repeat(40_000)}#`, 'hash');
  index.add(`${'+/'.repeat(65_535)}+`, 'plus');
  index.add('#', 'all');
  index.add(`${long}/x`, 'deeper');
  t.same(sorted2(index.match(long)), ['all', 'exact', 'hash', 'plus']);
  t.same(sorted2(index.match(`${long}/x`)), ['all', 'deeper', 'hash']);
  t.same(sorted2(index.match('/'.repeat(30_000))), ['all']);
  for (const [f, v] of [
    [long, 'exact'],
    [`${'/'.repeat(40_000)}#`, 'hash'],
    [`${'+/'.repeat(65_535)}+`, 'plus'],
    ['#', 'all'],
    [`${long}/x`, 'deeper'],
  ] as const)
    t.equal(index.remove(f, v), true, `removed ${v}`);
  t.equal(index.nodeCount, 0, 'every node went with its filters');
});

t.test('one value under several matching filters is given once; removing one filter leaves the others', async (t) => {
  const index = new FilterIndex<string>();
  for (const f of ['devices/#', 'devices/+/cmd', 'devices/d1/cmd', '#']) index.add(f, 'conn');
  index.add('devices/d2/cmd', 'other');
  t.same(index.match('devices/d1/cmd'), ['conn']);
  t.equal(index.remove('devices/#', 'conn'), true);
  t.equal(index.remove('devices/#', 'conn'), false, 'a second removal finds nothing');
  t.equal(index.remove('nothing/here', 'conn'), false);
  t.same(sorted2(index.match('devices/d2/cmd')), ['conn', 'other'], "through '+' and '#'");
  for (const f of ['devices/+/cmd', 'devices/d1/cmd', '#']) index.remove(f, 'conn');
  t.same(index.match('devices/d2/cmd'), ['other']);
  t.same(index.match('devices/d1/cmd'), []);
  t.equal(index.nodeCount, 3, 'only the nodes of devices/d2/cmd remain');
});

function sorted2(vs: readonly string[]): string[] {
  return [...vs].sort();
}

t.test('CoAP observations: found under their filter from registration to every ending', async (t) => {
  let lastMid = 0;
  const sent: number[] = [];
  const observations = new Observations(
    { ...OBSERVE_LIMITS, perDevice: 3 },
    { ackTimeoutMs: 2_000, randomFactor: 1.5, maxRetransmit: 4 },
    { send: () => sent.push(lastMid), mid: () => ++lastMid },
    new Block2Store({ stored: () => {}, evicted: () => {}, missing: () => {} }),
    { observe: () => {}, dropped: () => {}, endpoints: () => {} },
  );
  const peer = (port: number): Peer => ({ socket: null as unknown as Socket, address: '127.0.0.1', port });
  const token = (n: number): Buffer => Buffer.from([n]);
  const register = (port: number, n: number, filter: string, deviceId = 'd1'): Observation | null =>
    observations.register(
      {
        peer: peer(port),
        token: token(n),
        filter,
        exact: !filter.includes('+') && !filter.includes('#'),
        identity: { deviceId, by: 'token' },
        szx: 6,
      },
      0,
    );
  const at = (topicName: string): string[] =>
    observations
      .matching(topicName)
      .map((o) => `${o.peer.port}/${o.filter}`)
      .sort();
  const notice = { rep: { payload: Buffer.from('x'), contentFormat: 0, etag: etagOf('x') }, con: false };

  const a = register(1, 1, 'x/+/t')!;
  const b = register(2, 1, 'x/1/t')!;
  register(3, 1, 'y/#');
  t.same(at('x/1/t'), ['1/x/+/t', '2/x/1/t'], 'a filter and an exact topic');
  t.same(at('y/z'), ['3/y/#']);
  t.same(at('$x/1/t'), []);

  t.equal(register(1, 1, 'y/+'), a, 'the same endpoint and token: replaced');
  t.same(at('x/1/t'), ['2/x/1/t'], 'no longer under its old filter');
  t.same(at('y/z'), ['1/y/+', '3/y/#'], 'under its new one');
  t.equal(register(1, 1, 'y/+'), a, 'replaced with the same filter');
  t.same(at('y/z'), ['1/y/+', '3/y/#'], 'found once');

  observations.deregister(b);
  t.same(at('x/1/t'), [], 'Observe 1: gone');

  const c = observations.find('127.0.0.1', 3, token(1))!;
  observations.notify(c, notice, 0);
  t.ok(observations.reset('127.0.0.1', 3, lastMid), 'a reset to its notification');
  t.same(at('y/z'), ['1/y/+'], 'a reset: gone');

  observations.end(a, { code: '4.03' }, 0);
  t.same(at('y/z'), ['1/y/+'], 'ending: still found (deliver skips it) until its final response is acknowledged');
  t.ok(observations.acknowledged('127.0.0.1', 1, lastMid, 0));
  t.same(at('y/z'), [], 'acknowledged: gone');

  const d = register(4, 1, 'q/#')!;
  observations.notify(d, { ...notice, con: true }, 0);
  for (let now = 0; now < 600_000 && at('q/r').length > 0; now += 1_000) observations.tick(now);
  t.same(at('q/r'), [], 'never acknowledged: gone after the retransmissions');

  register(5, 1, 'r/#', 'full');
  register(5, 2, 'r/#', 'full');
  register(5, 3, 'r/#', 'full');
  const e = register(6, 1, 'e/#', 'd2')!;
  t.ok(e);
  t.equal(register(6, 1, 'e/#', 'full'), null, 'replaced by a device at its bound: refused');
  t.same(at('e/f'), [], 'and the old registration is gone with it');

  register(7, 1, 's/#');
  observations.stop({ code: '5.03' });
  t.same([...at('r/x'), ...at('s/x'), ...at('x/1/t'), ...at('y/z')], [], 'stop: nothing left');
  t.equal(observations.size, 0);
});

t.test('/ws connections: under each filter until unsubscribed or closed, once each', async (t) => {
  const index = new FilterIndex<WsConnection>();
  const conn = (deviceId: string): WsConnection =>
    new WsConnection(null as unknown as WebSocket, { deviceId, by: 'token' }, '127.0.0.1:1', new ErrorWindow(10, 1_000), index, null);
  const one = conn('one');
  const two = conn('two');
  one.subscribe('a/#', { id: 1 });
  one.subscribe('a/+', { id: 2 });
  one.subscribe('a/#', { id: 3 });
  two.subscribe('a/b', { id: 1 });
  t.same(one.subscriptions.get('a/#'), { id: 3 }, 'subscribing again replaces the subscription');
  t.equal(index.size, 3, 'and adds nothing to the index');
  t.same(
    index
      .match('a/b')
      .map((c) => c.identity.deviceId)
      .sort(),
    ['one', 'two'],
    'each connection once',
  );
  t.equal(one.unsubscribe('a/#'), true);
  t.equal(one.unsubscribe('a/#'), false, 'a second unsub holds nothing');
  t.same(index.match('a/b/c'), [], 'unsubscribed: not under a/# any more');
  t.same(
    index.match('a/x').map((c) => c.identity.deviceId),
    ['one'],
    'still under a/+',
  );
  one.unsubscribeAll();
  two.unsubscribeAll();
  t.equal(one.subscriptions.size, 0);
  t.equal(index.size, 0, 'closed: nothing of them left in the index');
  t.equal(index.nodeCount, 0);
});
