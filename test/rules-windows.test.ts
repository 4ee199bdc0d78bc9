// Window functions, scopes, per-device state, bounds, the sweep and throttle: the clock is msg.ts.
import t from 'tap';
import { load, type Harness, type MessageInput } from './helpers/rules.js';

const MIN = 60_000;

/** Sends one message and returns the `text` argument of the first log action of `rule`, or undefined when it did not fire. */
function logged(h: Harness, input: MessageInput, rule = 'w'): unknown {
  const out = h.send(input);
  if (out.ev.errors.length) throw out.ev.errors[0]!.error;
  return out.actions.find((a) => a.rule === rule && a.name === 'log')?.args.text;
}

const SERIES = (w: string): string => `rule w
when msg.topic matches "s/+"
then log("info", { avg: avg(payload.v, ${w}), sum: sum(payload.v, ${w}), min: minOf(payload.v, ${w}), max: maxOf(payload.v, ${w}), n: count(${w}), rate: rate(payload.v, ${w}) })
end
`;

t.test('time windows: avg sum minOf maxOf count rate over msg.ts, current message included', async (t) => {
  const h = load(SERIES('5m'));
  const seen = [
    { ts: 0, v: 10 },
    { ts: 1 * MIN, v: 20 },
    { ts: 2 * MIN, v: 5 },
    { ts: 6 * MIN, v: 40 }, // the 0 and 1-minute values are 5 minutes old or more: gone
  ].map(({ ts, v }) => logged(h, { topic: 's/d1', ts, payload: { v } }));
  t.same(seen[0], { avg: 10, sum: 10, min: 10, max: 10, n: 1, rate: null }, 'one value: rate is null');
  t.same(seen[1], { avg: 15, sum: 30, min: 10, max: 20, n: 2, rate: (20 - 10) / 60 });
  t.same(seen[2], { avg: 35 / 3, sum: 35, min: 5, max: 20, n: 3, rate: (5 - 10) / 120 });
  t.same(seen[3], { avg: 22.5, sum: 45, min: 5, max: 40, n: 2, rate: (40 - 5) / 240 });
});

t.test('time windows: a value exactly W old has left the window', async (t) => {
  const h = load(SERIES('5m'));
  logged(h, { topic: 's/d1', ts: 1000, payload: { v: 1 } });
  t.match(logged(h, { topic: 's/d1', ts: 1000 + 5 * MIN - 1, payload: { v: 3 } }), { avg: 2, n: 2 }, '1 ms less than 5m: still in');
  t.match(logged(h, { topic: 's/d1', ts: 1000 + 5 * MIN, payload: { v: 5 } }), { avg: 4, n: 2, min: 3 }, 'exactly 5m: out');
});

t.test('time windows expire when read, not only when a value is recorded', async (t) => {
  // count(1m) in the condition, values recorded only while payload.v is there
  const h = load(`rule w
when msg.topic matches "s/+"
then log("info", { avg: avg(payload.v, 1m), n: count(1m) })
end
`);
  logged(h, { topic: 's/d1', ts: 0, payload: { v: 8 } });
  t.same(logged(h, { topic: 's/d1', ts: 2 * MIN, payload: {} }), { avg: null, n: 1 }, 'the old value is gone though nothing was recorded');
});

t.test('count windows: the last N values, whatever their age', async (t) => {
  const h = load(SERIES('3'));
  const seen = [10, 20, 30, 40].map((v, i) => logged(h, { topic: 's/d1', ts: i * 1000, payload: { v } }));
  t.same(seen[0], { avg: 10, sum: 10, min: 10, max: 10, n: 1, rate: null });
  t.same(seen[2], { avg: 20, sum: 60, min: 10, max: 30, n: 3, rate: 10 });
  t.same(seen[3], { avg: 30, sum: 90, min: 20, max: 40, n: 3, rate: 10 }, 'the oldest went first');
  // ten days later the three newest values are still the window
  t.same(logged(h, { topic: 's/d1', ts: 10 * 86_400_000, payload: { v: 50 } }), {
    avg: 40,
    sum: 120,
    min: 30,
    max: 50,
    n: 3,
    rate: (50 - 30) / ((10 * 86_400_000 - 2000) / 1000),
  });
});

t.test('rate: null with fewer than two values or no time between them', async (t) => {
  const h = load('rule w when msg.topic matches "s/+" then log("info", rate(payload.v, 10)) end');
  t.equal(logged(h, { topic: 's/d1', ts: 5000, payload: { v: 1 } }), null);
  t.equal(logged(h, { topic: 's/d1', ts: 5000, payload: { v: 9 } }), null, 'same ts: no time between them');
  t.equal(logged(h, { topic: 's/d1', ts: 7000, payload: { v: 5 } }), 2, '(newest - oldest) / seconds = (5 - 1) / 2');
});

t.test('delta, last, changed: the previous recorded value', async (t) => {
  const h = load(
    'rule w when msg.topic matches "s/+" then log("info", { delta: delta(payload.v), last: last(payload.v), changed: changed(payload.v) }) end',
  );
  const seen = [{ v: 5 }, { v: 5 }, { v: 8 }, {}, { v: 6 }].map((payload) => logged(h, { topic: 's/d1', payload }));
  t.same(seen[0], { delta: null, last: null, changed: false }, 'the first: null, null, false');
  t.same(seen[1], { delta: 0, last: 5, changed: false });
  t.same(seen[2], { delta: 3, last: 5, changed: true });
  t.same(seen[3], { delta: null, last: 8, changed: false }, 'no value now: no delta, nothing changed, the previous value is still 8');
  t.same(seen[4], { delta: -2, last: 8, changed: true }, 'the null was not recorded: the previous value is 8');

  const s = load(
    'rule w when msg.topic matches "s/+" then log("info", { changed: changed(payload.v), last: last(payload.v), delta: delta(payload.v) }) end',
  );
  const values = ['a', 'a', 'b', { x: [1] }, { x: [1] }, { x: [2] }];
  const changes = values.map((v) => logged(s, { topic: 's/d1', payload: { v } }) as { changed: boolean; last: unknown; delta: unknown });
  t.same(
    changes.map((c) => c.changed),
    [false, false, true, true, false, true],
    'changed compares as == does (deeply)',
  );
  t.same(changes[3], { changed: true, last: 'b', delta: null }, 'last of any value; delta needs numbers');
});

t.test('values that are null are not recorded', async (t) => {
  const h = load(`rule w
when msg.topic matches "s/+"
then log("info", { avg: avg(payload.v, 5m), sum: sum(payload.v, 5m), min: minOf(payload.v, 5m), max: maxOf(payload.v, 5m), avg2: avg(payload.v, 2), rate: rate(payload.v, 5m), n: count(5m) })
end
`);
  t.same(
    logged(h, { topic: 's/d1', ts: 0, payload: {} }),
    { avg: null, sum: 0, min: null, max: null, avg2: null, rate: null, n: 1 },
    'nothing recorded yet',
  );
  t.match(logged(h, { topic: 's/d1', ts: 1000, payload: { v: 10 } }), { avg: 10, min: 10, max: 10, avg2: 10, rate: null, n: 2 });
  t.match(
    logged(h, { topic: 's/d1', ts: 2000, payload: { v: null } }),
    { avg: 10, sum: 10, avg2: 10, n: 3 },
    'an explicit null is not a value',
  );
  t.same(
    logged(h, { topic: 's/d1', ts: 3000, payload: { v: 20 } }),
    { avg: 15, sum: 30, min: 10, max: 20, avg2: 15, rate: 5, n: 4 },
    'count(W) counts the messages; the nulls took no place in avg(x, 2)',
  );
});

t.test('every message in scope is recorded before the condition, whether or not the rule fires', async (t) => {
  const h = load(`rule w
when msg.topic matches "s/+" and payload.report == true
then log("info", { n: count(1h), sum: sum(payload.v, 1h), avg: avg(payload.v, 10), last: last(payload.v) })
end
`);
  for (const v of [1, 2, 3]) t.same(h.send({ topic: 's/d1', payload: { v, report: false } }).fired, [], 'not fired');
  t.same(logged(h, { topic: 's/d1', payload: { v: 4, report: true } }), { n: 4, sum: 10, avg: 2.5, last: 3 });

  // a window in the condition sees the current message too
  const c = load('rule warm when msg.topic matches "s/+" and avg(payload.temp, 5m) > 35 then drop() end');
  t.same(c.send({ topic: 's/d1', payload: { temp: 30 } }).fired, []);
  t.same(c.send({ topic: 's/d1', payload: { temp: 36 } }).fired, [], 'average 33');
  t.same(c.send({ topic: 's/d1', payload: { temp: 40 } }).fired, ['warm'], 'average 35.33 with the current message');
  t.same(c.send({ topic: 's/d1', payload: { temp: 20 } }).fired, [], 'average 31.5');
});

t.test('rules after a drop() still record the message in their windows', async (t) => {
  const h = load(`rule gate priority 10
when msg.topic matches "s/+" and payload.drop == true
then drop()
end

rule later
when msg.topic matches "s/+" and sum(payload.v, 1h) > 5
then log("info", { n: count(1h), sum: sum(payload.v, 1h) })
end
`);
  const a = h.send({ topic: 's/d1', payload: { v: 3, drop: true } });
  t.same(a.fired, ['gate']);
  t.equal(a.dropped, true);
  const b = h.send({ topic: 's/d1', payload: { v: 3, drop: true } });
  t.same(b.fired, ['gate'], 'the condition of "later" (now true: sum 6) is not evaluated after the drop');
  const c = h.send({ topic: 's/d1', payload: { v: 0 } });
  t.same(c.fired, ['later']);
  t.same(c.actions[0]!.args.text, { n: 3, sum: 6 }, 'both dropped messages were recorded');
});

t.test('windows are kept per device', async (t) => {
  const h = load(
    'rule w when msg.topic matches "s/+" then log("info", { avg: avg(payload.v, 5m), n: count(5m), last: last(payload.v) }) end',
  );
  t.same(logged(h, { topic: 's/d1', payload: { v: 10 } }), { avg: 10, n: 1, last: null });
  t.same(logged(h, { topic: 's/d2', payload: { v: 50 } }), { avg: 50, n: 1, last: null }, 'd2 starts empty');
  t.same(logged(h, { topic: 's/d1', payload: { v: 20 } }), { avg: 15, n: 2, last: 10 });
  t.same(logged(h, { topic: 's/d2', payload: { v: 70 } }), { avg: 60, n: 2, last: 50 });
  // by msg.deviceId, not by topic
  t.same(logged(h, { topic: 's/other', deviceId: 'd1', payload: { v: 30 } }), { avg: 20, n: 3, last: 20 });
});

t.test('scope: a rule with no topic condition has every message in scope', async (t) => {
  const h = load('rule w when true then log("info", count(1h)) end');
  t.same(
    ['a/1', 'b/2/x', 'c', '$SYS/load'].map((topic) => logged(h, { topic, deviceId: 'd' })),
    [1, 2, 3, 4],
  );
  // a topic condition that is not a top-level conjunct does not make a scope
  const o = load('rule w when msg.topic matches "a/#" or payload.x == 1 then log("info", count(1h)) end');
  t.equal(logged(o, { topic: 'b/1', deviceId: 'd', payload: { x: 0 } }), undefined, 'not fired...');
  t.equal(logged(o, { topic: 'a/1', deviceId: 'd' }), 2, '...but counted: the rule has no scope');
  const n = load('rule w when not (msg.topic matches "a/#") then log("info", count(1h)) end');
  t.equal(logged(n, { topic: 'a/1', deviceId: 'd' }), undefined);
  t.equal(logged(n, { topic: 'b/1', deviceId: 'd' }), 2);
});

t.test('scope: an or of matches, and several conjuncts', async (t) => {
  const or = load(
    'rule w when (msg.topic matches "a/+" or msg.topic matches "b/+") and payload.go == true then log("info", count(1h)) end',
  );
  t.equal(logged(or, { topic: 'a/x', deviceId: 'd', payload: { go: false } }), undefined);
  t.equal(logged(or, { topic: 'c/x', deviceId: 'd', payload: { go: true } }), undefined, 'c/x is out of scope');
  t.equal(logged(or, { topic: 'a/x/y', deviceId: 'd', payload: { go: true } }), undefined, 'a/x/y is out of scope');
  t.equal(logged(or, { topic: 'b/x', deviceId: 'd', payload: { go: true } }), 2, 'a/x and b/x counted, c/x and a/x/y not');

  const and = load('rule w when msg.topic matches "d/+/t" and msg.topic matches "d/x/+" and true then log("info", count(1h)) end');
  t.equal(logged(and, { topic: 'd/x/t', deviceId: 'd' }), 1);
  t.equal(logged(and, { topic: 'd/y/t', deviceId: 'd' }), undefined, 'matches the first conjunct only');
  t.equal(logged(and, { topic: 'd/x/u', deviceId: 'd' }), undefined, 'matches the second conjunct only');
  t.equal(logged(and, { topic: 'd/x/t', deviceId: 'd' }), 2, 'only messages matching both were counted');

  // a conjunct mixing a topic test with anything else is a condition, not scope
  const mixed = load('rule w when msg.topic matches "a/+" and (msg.topic matches "a/1" or payload.x == 1) then log("info", count(1h)) end');
  t.equal(logged(mixed, { topic: 'a/2', deviceId: 'd' }), undefined);
  t.equal(logged(mixed, { topic: 'b/1', deviceId: 'd' }), undefined);
  t.equal(logged(mixed, { topic: 'a/1', deviceId: 'd' }), 2, 'a/2 was in scope, b/1 was not');
});

t.test('identical window expressions in one rule share one window', async (t) => {
  const h = load(
    'rule w when count(1h) >= 1 and count(1h) < 3 then log("info", [count(1h), count(1h), avg(payload.v, 3), avg(payload.v, 3)]) end',
  );
  t.same(logged(h, { topic: 's/d1', payload: { v: 1 } }), [1, 1, 1, 1], 'recorded once per message, not once per use');
  t.same(logged(h, { topic: 's/d1', payload: { v: 3 } }), [2, 2, 2, 2]);
  t.equal(logged(h, { topic: 's/d1', payload: { v: 3 } }), undefined, 'count 3: the condition is false');
});

t.test('rules.maxWindowValues: the oldest values go first, and onTruncated is told the rule', async (t) => {
  const h = load(
    `rule capped
when msg.topic matches "s/+"
then log("info", { avg: avg(payload.v, 1h), n: count(1h), avg10: avg(payload.v, 10) })
end
`,
    { maxWindowValues: 3 },
  );
  const seen = [1, 2, 3].map((v) => logged(h, { topic: 's/d1', payload: { v } }, 'capped'));
  t.same(seen[2], { avg: 2, n: 3, avg10: 2 });
  t.same(h.truncated, [], 'nothing truncated while the windows hold 3 values');
  t.same(logged(h, { topic: 's/d1', payload: { v: 4 } }, 'capped'), { avg: 3, n: 3, avg10: 3 }, 'each window holds the 3 newest');
  t.ok(h.truncated.length >= 1, 'truncation counted');
  t.same([...new Set(h.truncated)], ['capped'], 'for the rule that holds the window');

  // a count window no larger than the bound slides without truncation
  const s = load('rule small when msg.topic matches "s/+" then log("info", avg(payload.v, 2)) end', { maxWindowValues: 3 });
  t.same(
    [1, 2, 3, 4, 5].map((v) => logged(s, { topic: 's/d1', payload: { v } }, 'small')),
    [1, 1.5, 2.5, 3.5, 4.5],
  );
  t.same(s.truncated, [], 'avg(x, 2) losing its oldest value is not truncation');

  // two rules holding the same window expression: each one's truncation is counted for it
  const two = load(
    `rule a when msg.topic matches "s/+" then log("info", avg(payload.v, 1h)) end
rule b when msg.topic matches "s/+" then log("info", avg(payload.v, 1h)) end
`,
    { maxWindowValues: 2 },
  );
  for (const v of [1, 2, 3]) two.send({ topic: 's/d1', payload: { v } });
  t.same([...new Set(two.truncated)].sort(), ['a', 'b'], 'edge_rule_window_truncated_total counts both rules');
});

t.test("the sweep releases a device's state after rules.stateTtlSeconds without a message in scope", async (t) => {
  const h = load('rule w when msg.topic matches "s/+" then log("info", { last: last(payload.v), n: count(10) }) end', {
    stateTtlSeconds: 60,
  });
  logged(h, { topic: 's/d1', ts: 0, payload: { v: 1 } });
  h.sweep(60_000);
  t.same(
    logged(h, { topic: 's/d1', ts: 60_000, payload: { v: 2 } }),
    { last: 1, n: 2 },
    'kept: 60 s without a message is not more than the TTL',
  );
  h.sweep(60_000 + 60_001);
  t.same(logged(h, { topic: 's/d1', ts: 60_000 + 60_001, payload: { v: 3 } }), { last: null, n: 1 }, 'released after more than 60 s');

  // per device
  const d = load('rule w when msg.topic matches "s/+" then log("info", last(payload.v)) end', { stateTtlSeconds: 60 });
  logged(d, { topic: 's/d1', ts: 0, payload: { v: 1 } });
  logged(d, { topic: 's/d2', ts: 50_000, payload: { v: 2 } });
  d.sweep(100_000);
  t.equal(logged(d, { topic: 's/d1', ts: 100_000, payload: { v: 9 } }), null, 'd1 silent for 100 s: released');
  t.equal(logged(d, { topic: 's/d2', ts: 100_000, payload: { v: 9 } }), 2, 'd2 silent for 50 s: kept');

  // messages out of the rule's scope do not keep its state
  const o = load('rule w when msg.topic matches "s/+" then log("info", last(payload.v)) end', { stateTtlSeconds: 60 });
  logged(o, { topic: 's/d1', ts: 0, payload: { v: 1 } });
  t.same(o.send({ topic: 'other/d1', ts: 90_000, payload: { v: 5 } }).fired, []);
  o.sweep(100_000);
  t.equal(logged(o, { topic: 's/d1', ts: 100_000, payload: { v: 9 } }), null);
});

t.test("the sweep keeps state for the rule's longest time window when that is longer", async (t) => {
  const h = load('rule w when msg.topic matches "s/+" then log("info", { avg: avg(payload.v, 2m), last: last(payload.v) }) end', {
    stateTtlSeconds: 60,
  });
  logged(h, { topic: 's/d1', ts: 0, payload: { v: 1 } });
  h.sweep(100_000);
  t.same(logged(h, { topic: 's/d1', ts: 100_000, payload: { v: 3 } }), { avg: 2, last: 1 }, '100 s < 2m: kept');
  h.sweep(100_000 + 120_001);
  t.same(logged(h, { topic: 's/d1', ts: 100_000 + 120_001, payload: { v: 5 } }), { avg: 5, last: null }, 'released after 2m');

  // each rule keeps its own state for its own TTL, even with the same window expression
  const two = load(
    `rule short when msg.topic matches "s/+" then log("info", last(payload.v)) end
rule long when msg.topic matches "s/+" and count(2h) >= 1 then log("info", last(payload.v)) end
`,
    { stateTtlSeconds: 3600 },
  );
  two.send({ topic: 's/d1', ts: 0, payload: { v: 1 } });
  two.sweep(90 * MIN);
  const out = two.send({ topic: 's/d1', ts: 90 * MIN, payload: { v: 2 } });
  t.same(
    out.actions.map((a) => [a.rule, a.args.text]),
    [
      ['short', null],
      ['long', 1],
    ],
    '"short" (TTL 1h) released, "long" (TTL 2h) kept',
  );
});

t.test('throttle: at most once per device per D, from its last firing, by msg.ts', async (t) => {
  const h = load('rule th throttle 10s when msg.topic matches "s/+" and payload.hot == true then log("info", count(1h)) end');
  const fire = (deviceId: string, ts: number, hot = true): boolean =>
    h.send({ topic: `s/${deviceId}`, ts, payload: { hot } }).fired.includes('th');
  t.equal(fire('d1', 1_000_000), true, 'first firing');
  t.equal(fire('d1', 1_005_000), false, '5 s later: throttled');
  t.equal(fire('d2', 1_005_000), true, 'another device is not throttled');
  t.equal(fire('d1', 1_009_999), false);
  t.equal(fire('d1', 1_010_000), true, '10 s after the last firing');
  t.equal(fire('d1', 1_015_000, false), false, 'condition false');
  t.equal(fire('d1', 1_019_000), false, 'measured from the last firing (10 000), not from the last message');
  t.equal(fire('d1', 1_020_000), true);
  // windows of a throttled rule still record every message in scope
  const out = h.send({ topic: 's/d1', ts: 1_021_000, payload: { hot: true } });
  t.same(out.fired, []);
  t.equal(h.send({ topic: 's/d1', ts: 1_030_000, payload: { hot: true } }).actions[0]!.args.text, 9, 'count(1h) saw all 9 messages of d1');

  // the clock is msg.ts, not the wall clock: a replay from long ago
  const r = load('rule th throttle 1m when true then drop() end');
  t.same(
    [0, 30_000, 59_999, 60_000, 60_001, 120_000].map((ts) => r.send({ topic: 'x/d', ts }).fired.length),
    [1, 0, 0, 1, 0, 1],
  );

  // the throttle state lives as long as the throttle, whatever stateTtlSeconds says
  const s = load('rule th throttle 2m when true then drop() end', { stateTtlSeconds: 60 });
  t.equal(s.send({ topic: 'x/d', ts: 0 }).fired.length, 1);
  s.sweep(100_000);
  t.equal(s.send({ topic: 'x/d', ts: 100_000 }).fired.length, 0, 'still throttled after a sweep');
  t.equal(s.send({ topic: 'x/d', ts: 120_000 }).fired.length, 1);
});
