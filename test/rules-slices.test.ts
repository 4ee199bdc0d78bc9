// A pushed set is read, checked and compiled a few milliseconds at a time (so that messages keep
// flowing meanwhile). Read that way it must come out exactly as read at once: the same rules, the
// same errors, the same decisions, and the event loop never held for long.
import t from 'tap';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { analyzeInSlices, analyzeRuleset, type RuleFile } from '../src/rules/loader.js';
import { RuleSet } from '../src/rules/engine.js';
import type { EdgeMessage } from '../src/core/message.js';
import { msgValue } from '../src/rules/msg.js';

const limits = { maxFileBytes: 4 * 2 ** 20, maxRules: 100_000 };
const engine = { maxWindowValues: 10_000, stateTtlSeconds: 3600, onTruncated() {} };
const ROOT = new URL('..', import.meta.url).pathname;

const shipped: RuleFile[] = readdirSync(join(ROOT, 'rules'))
  .filter((n) => n.endsWith('.rules'))
  .map((name) => ({ name, text: readFileSync(join(ROOT, 'rules', name), 'utf8') }));

function big(n: number, broken: number[] = []): RuleFile {
  let text = '# generated\n';
  for (let i = 0; i < n; i++) {
    text += broken.includes(i)
      ? `rule r${i}\nwhen payload.temp >\nthen uplink()\nend\n`
      : `rule r${i} priority ${i % 7}\nwhen msg.topic matches "devices/+/t${i % 13}" and payload.temp > ${i % 40} and avg(payload.temp, ${1 + (i % 5)}) > 10\nthen uplink(topic = "a/" + msg.deviceId, payload = { r: ${i}, n: count(1h) })\nend\n`;
  }
  return { name: 'big.rules', text };
}

t.test('read in slices, a set is the same as read at once: rules and errors', async (t) => {
  for (const [what, files] of [
    ['the shipped rules', shipped],
    ['3,000 generated rules', [big(3000)]],
    [
      'a large file with errors deep inside, and a second file',
      [
        big(3000, [5, 1500, 2999]),
        { name: 'a.rules', text: 'rule a\nwhen payload.x > 1\nthen lgo()\nend\nrule r7\nwhen true\nthen drop()\nend\n' },
      ],
    ],
  ] as const) {
    const once = analyzeRuleset([...files], limits);
    const sliced = await analyzeInSlices([...files], limits, 1);
    t.same(sliced, once, what);
  }
  const withErrors = await analyzeInSlices([big(3000, [5, 1500, 2999])], limits, 1);
  t.same(
    withErrors.errors.map((e) => `${e.line}:${e.col}:${e.code}`),
    [5, 1500, 2999].map((i) => `${4 + 4 * i}:1:E_RULE_SYNTAX`),
    'errors deep in a large file keep their lines, and reading resumes after each',
  );
  t.equal(withErrors.rules, 2997, 'every other rule was still read');
});

t.test('a set built in slices decides as one built at once', async (t) => {
  const files = [big(500)];
  const a = analyzeRuleset(files, limits);
  const atOnce = new RuleSet(a.checked, engine);
  const sliced = await RuleSet.build(analyzeRuleset(files, limits).checked, engine, 0.1);
  t.same(sliced.names(), atOnce.names(), 'the same rules in the same order');
  for (let i = 0; i < 200; i++) {
    const payload = { temp: i % 50 };
    const msg: EdgeMessage = {
      id: `m${i}`,
      ts: 1_000 + i,
      deviceId: `d${i % 3}`,
      protocol: 'mqtt',
      topic: `devices/d${i % 3}/t${i % 13}`,
      payload: Buffer.from(JSON.stringify(payload)),
      contentType: 'json',
      qos: 1,
      retain: false,
      props: {},
      hops: 0,
    };
    const env = { payload: () => payload, msgValue: () => msgValue(msg), device: null, edge: { id: 'e', uplinkConnected: true } };
    t.same(JSON.stringify(sliced.evaluate(msg, env)), JSON.stringify(atOnce.evaluate(msg, env)), `message ${i}`);
  }
});

t.test('reading and compiling 3,000 rules in slices never holds the event loop long', async (t) => {
  const files = [big(3000)];
  let longest = 0;
  let last = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    longest = Math.max(longest, now - last);
    last = now;
  }, 1);
  const a = await analyzeInSlices(files, limits);
  await RuleSet.build(a.checked, engine);
  clearInterval(timer);
  // Slices are 2 ms; a garbage collection can add some. A whole read at once takes far longer.
  t.ok(longest < 100, `the longest pause between two timer ticks was ${longest.toFixed(1)} ms`);
});
