// Regression tests for the known ways out of expression languages: calls into the host, the
// prototype chain, quote injection, and inputs built to exhaust the stack or the CPU.
import t from 'tap';
import { compileRules, errorsOf, load, plain, valueOf } from './helpers/rules.js';

const rule = (when: string, then = 'drop()'): string => `rule r\nwhen ${when}\nthen ${then}\nend\n`;

t.test('no way to call into the host: compile errors', async (t) => {
  const cases: Array<[string, string[]]> = [
    [rule('constructor.constructor("return 1")() == 1'), ['E_RULE_SYNTAX']],
    [rule('constructor("return process")() == 1'), ['E_RULE_SYNTAX']],
    [rule('constructor("return 1") == 1'), ['E_RULE_UNKNOWN_FUNCTION']],
    [rule('constructor.constructor == null'), ['E_RULE_UNKNOWN_ROOT']],
    [rule('payload.constructor.constructor("return 1") == 1'), ['E_RULE_SYNTAX']],
    [rule('payload["constructor"]["constructor"]("return 1") == 1'), ['E_RULE_SYNTAX']],
    [rule('toString() == ""'), ['E_RULE_UNKNOWN_FUNCTION']],
    [rule('valueOf() == 1'), ['E_RULE_UNKNOWN_FUNCTION']],
    [rule('hasOwnProperty("x")'), ['E_RULE_UNKNOWN_FUNCTION']],
    [rule('__proto__() == 1'), ['E_RULE_UNKNOWN_FUNCTION']],
    [rule('__defineGetter__("a", 1) == 1'), ['E_RULE_UNKNOWN_FUNCTION']],
    [rule('eval("1") == 1'), ['E_RULE_UNKNOWN_FUNCTION']],
    [rule('Function("return 1") == 1'), ['E_RULE_UNKNOWN_FUNCTION']],
    [rule('require("fs") == 1'), ['E_RULE_UNKNOWN_FUNCTION']],
    [rule('import("fs") == 1'), ['E_RULE_UNKNOWN_FUNCTION']],
    [rule('process.exit(1) == 1'), ['E_RULE_SYNTAX']],
    [rule('process.env == null'), ['E_RULE_UNKNOWN_ROOT']],
    [rule('globalThis.process == null'), ['E_RULE_UNKNOWN_ROOT']],
    [rule('this == null'), ['E_RULE_UNKNOWN_ROOT']],
    [rule('__proto__ == null'), ['E_RULE_UNKNOWN_ROOT']],
    [rule('toString == null'), ['E_RULE_UNKNOWN_ROOT']],
    [rule('true', 'constructor()'), ['E_RULE_UNKNOWN_ACTION']],
    [rule('true', 'toString()'), ['E_RULE_UNKNOWN_ACTION']],
    [rule('true', 'hasOwnProperty("drop")'), ['E_RULE_UNKNOWN_ACTION']],
    [rule('true', '__proto__()'), ['E_RULE_UNKNOWN_ACTION']],
    [rule('true', 'uplink(constructor = 1)'), ['E_RULE_ARG']],
    [rule('true', 'uplink(__proto__ = 1)'), ['E_RULE_ARG']],
    [rule('true', 'uplink(toString = 1)'), ['E_RULE_ARG']],
  ];
  for (const [text, codes] of cases) {
    const result = compileRules(text);
    t.equal(result.ruleset, null, `${JSON.stringify(text)} does not compile`);
    t.same(
      result.errors.map((e) => e.code),
      codes,
      `${JSON.stringify(text)}: ${codes.join(', ')}`,
    );
  }
});

t.test('the prototype and the constructor read as null', async (t) => {
  const payload = { list: [1, 2], s: 'text', o: { k: 1 } };
  const cases = [
    'payload.constructor',
    'payload["constructor"]',
    'payload.__proto__',
    'payload["__proto__"]',
    'payload.prototype',
    'payload["prototype"]',
    'payload.__proto__.polluted',
    'payload.constructor.prototype',
    'payload.toString',
    'payload.hasOwnProperty',
    'payload.valueOf',
    'payload.__defineGetter__',
    'payload.list.constructor',
    'payload.list.length',
    'payload.list["length"]',
    'payload.list.map',
    'payload.s.constructor',
    'payload.s.length',
    'payload.o.constructor',
    'payload[payload.key]',
    'payload.o[payload.key]',
    'msg.constructor',
    'msg["constructor"]',
    'msg.__proto__',
    'msg.props.constructor',
    'msg.props.__proto__',
    'msg.props.toString',
    'device.constructor',
    'edge.constructor',
    'edge.__proto__',
    '{ a: 1 }.constructor',
    '{ a: 1 }["__proto__"]',
    '[1].constructor',
    '"s".constructor',
    '(1).constructor',
    'now().constructor',
  ];
  for (const expr of cases) {
    t.equal(valueOf(expr, { payload: { ...payload, key: '__proto__' }, device: { id: 'd' } }), null, `${expr} is null`);
  }
});

t.test('own keys "__proto__", "constructor", "prototype" of a JSON payload read as null too', async (t) => {
  // JSON.parse makes "__proto__" an own key (an object literal in JS would set the prototype instead)
  const json =
    '{"__proto__": {"polluted": 1, "x": 2}, "constructor": {"prototype": {"y": 3}}, "prototype": 4, "inner": {"__proto__": 5, "constructor": 6}}';
  const parsed = JSON.parse(json) as Record<string, unknown>;
  t.ok(Object.hasOwn(parsed, '__proto__'), 'the payload really has an own __proto__ key');
  const input = { json };
  for (const expr of [
    'payload.__proto__',
    'payload["__proto__"]',
    'payload.__proto__.x',
    'payload.__proto__.polluted',
    'payload.constructor',
    'payload["constructor"]',
    'payload.constructor.prototype',
    'payload.constructor.prototype.y',
    'payload.prototype',
    'payload["prototype"]',
    'payload.inner.__proto__',
    'payload.inner["constructor"]',
  ]) {
    t.equal(valueOf(expr, input), null, `${expr} is null`);
  }
  // and nothing of it leaks into the objects the rules or the proxy make
  const h = load('rule copy when true then uplink(payload = { copy: payload, inner: payload.inner }) publish("x", payload) end');
  const out = h.send({ topic: 'a/b', json });
  t.equal(out.ev.errors.length, 0);
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'Object.prototype is untouched');
  t.equal((Object.prototype as unknown as Record<string, unknown>).x, undefined);
  const copy = out.plan.uplinks[0]!.payload as Record<string, unknown>;
  t.equal((copy as { polluted?: unknown }).polluted, undefined, 'the copy did not get a polluted prototype');
});

t.test('object literals refuse the keys __proto__, constructor and prototype (E_RULE_ARG), quoted or not', async (t) => {
  for (const key of ['__proto__', 'constructor', 'prototype', '"__proto__"', '"constructor"', '"prototype"']) {
    for (const text of [
      rule(`{ ${key}: 1 } == null`),
      rule('true', `publish("t", { a: { ${key}: payload } })`),
      rule('true', `uplink(payload = [{ ok: 1, ${key}: 2 }])`),
    ]) {
      const errors = errorsOf(text);
      t.same(
        errors.map((e) => e.code),
        ['E_RULE_ARG'],
        `${key} in ${JSON.stringify(text)}`,
      );
      t.match(errors[0]!.message, /cannot be a key of an object/);
    }
  }
  // other names of Object.prototype are plain data in an object literal
  t.equal(valueOf('{ toString: 1, hasOwnProperty: 2, valueOf: 3 }.toString'), 1);
  t.same(valueOf('{ toString: 1, hasOwnProperty: 2 }'), { toString: 1, hasOwnProperty: 2 });
  t.equal(valueOf('{ hasOwnProperty: 1 } contains "hasOwnProperty"'), true);
  t.equal(valueOf('{ a: 1 } contains "toString"'), false);
  t.equal(valueOf('string({ valueOf: 1 })'), '{"valueOf":1}');
  t.equal(valueOf('{ toString: 1 } == { toString: 1 }'), true);
});

t.test('quotes cannot be injected: an escaped quote stays in the string', async (t) => {
  t.equal(valueOf('"a\\" + payload.x + \\""', { payload: { x: 'INJECTED' } }), 'a" + payload.x + "');
  t.equal(valueOf('"\\\\" + "x"'), '\\x', 'an escaped backslash does not escape the closing quote');
  t.equal(valueOf('"\\u{22} + payload.x + \\u{22}"', { payload: { x: 'INJECTED' } }), '" + payload.x + "');
  t.equal(valueOf('"then drop() end rule evil when true then uplink() end"'), 'then drop() end rule evil when true then uplink() end');
  t.equal(valueOf('"# not a comment"'), '# not a comment');
  // a payload's text is data, never code
  t.equal(valueOf('payload.s + "!"', { payload: { s: '" + msg.id + "' } }), '" + msg.id + "!');
  // a string cannot run across a line to swallow the next rule
  const text = 'rule a when payload.s == "open\nthen drop() end\nrule b when true then drop() end\n';
  const errors = errorsOf(text);
  t.equal(errors[0]!.code, 'E_RULE_SYNTAX');
  t.same({ line: errors[0]!.line, col: errors[0]!.col }, { line: 1, col: 26 });
});

t.test('deep nesting is refused with an error, not a crash', async (t) => {
  const n = 10_000;
  const cases: Array<[string, string]> = [
    ['10,000 parentheses', `${'('.repeat(n)}1${')'.repeat(n)} == 1`],
    ['10,000 not', `${'not '.repeat(n)}true`],
    ['10,000 !', `${'!'.repeat(n)}true`],
    ['10,000 unary minus', `${'-'.repeat(n)}1 == 1`],
    ['10,000 nested lists', `${'['.repeat(n)}1${']'.repeat(n)} == 1`],
    ['10,000 nested objects', `${'{ a: '.repeat(n)}1${' }'.repeat(n)} == 1`],
    ['10,000 nested calls', `${'abs('.repeat(n)}1${')'.repeat(n)} == 1`],
    ['10,000 nested indexes', `${'payload['.repeat(n)}0${']'.repeat(n)} == 1`],
    ['10,000 field accesses', `payload${'.a'.repeat(n)} == 1`],
    ['100,000 field accesses', `payload${'.a'.repeat(10 * n)} == 1`],
    ['10,000 indexes in a row', `payload${'[0]'.repeat(n)} == 1`],
    ['10,000 additions', `1${' + 1'.repeat(n)} == 1`],
    ['100,000 additions', `1${'+1'.repeat(10 * n)} == 1`],
    ['10,000 and', `true${' and true'.repeat(n)}`],
    ['10,000 or', `false${' || false'.repeat(n)}`],
  ];
  for (const [what, expr] of cases) {
    for (const text of [rule(expr), rule('true', `log("info", ${expr})`)]) {
      let errors;
      try {
        errors = errorsOf(text);
      } catch (err) {
        t.fail(`${what}: compiling threw ${(err as Error).name}: ${(err as Error).message}`);
        continue;
      }
      t.ok(errors.length >= 1, `${what}: refused`);
      t.ok(
        errors.some((e) => e.code === 'E_RULE_TOO_LARGE'),
        `${what}: E_RULE_TOO_LARGE`,
      );
    }
  }
});

t.test('a deeply nested payload does not crash the evaluation', async (t) => {
  const depth = 200_000;
  const json = `${'['.repeat(depth)}1${']'.repeat(depth)}`;
  const h = load(`rule deep when payload == payload[0] or string(payload) != null then uplink(priority = "high") end
rule after when true then log("info", "after") end
`);
  let out;
  try {
    out = h.send({ topic: 'devices/d/t', json });
  } catch (err) {
    t.fail(`evaluation threw ${(err as Error).name}`);
    return;
  }
  t.ok(out.fired.includes('after'), 'the other rules still run');
  // whichever way it ends (a result, or a runtime fault counted for the rule), nothing escapes
  t.ok(out.fired.includes('deep') || out.ev.errors.some((e) => e.rule === 'deep'), 'the rule fired or its fault was reported');
  for (const e of out.ev.errors) t.equal(e.rule, 'deep', 'a fault is reported for its rule');
});

t.test('a huge file is refused before it is parsed', async (t) => {
  const big = `rule r when true then drop() end\n${'# filler\n'.repeat(200_000)}`;
  t.ok(Buffer.byteLength(big) > 1024 * 1024);
  const started = Date.now();
  const result = compileRules({ 'huge.rules': big });
  t.same(result.errors, [
    {
      file: 'huge.rules',
      line: 1,
      col: 1,
      code: 'E_RULE_TOO_LARGE',
      message: `the file is ${Buffer.byteLength(big)} bytes; rules.maxFileBytes is 1048576`,
    },
  ]);
  t.equal(result.ruleset, null);
  t.ok(Date.now() - started < 2000, 'quickly');
  // a huge rule name or string inside the limit is fine; beyond it, refused
  const longString = rule(`payload.s == "${'x'.repeat(1000)}"`);
  t.same(errorsOf(longString), []);
  const tooManyRules = Array.from({ length: 20 }, (_, i) => `rule r${i} when true then drop() end`).join('\n');
  t.same(
    errorsOf(tooManyRules, { maxRules: 19 }).map((e) => e.code),
    ['E_RULE_TOO_LARGE'],
  );
});

t.test('no loops: a large legal expression evaluates, and quickly', async (t) => {
  const items = 20_000; // each payload.v is 2 nodes: about 80,000 nodes in all
  const list = `[${Array(items).fill('payload.v').join(', ')}]`;
  const h = load(rule(`len(${list}) == ${items} and ${list} contains 7`, 'log("info", "big")'));
  const started = Date.now();
  const out = h.send({ topic: 'a/b', payload: { v: 7 } });
  t.same(out.fired, ['r']);
  t.same(h.send({ topic: 'a/b', payload: { v: 8 } }).fired, []);
  t.ok(Date.now() - started < 2000, `two evaluations of an 80,000-node condition in ${Date.now() - started} ms`);
  // the deepest legal expression evaluates too
  const deep = load(rule(`${'not '.repeat(62)}(1 == 1)`));
  t.same(deep.send({ topic: 'a/b' }).fired, ['r'], '62 nots over a comparison: depth 64');
  t.same(plain(valueOf(`${'-'.repeat(62)}1`)), 1, '62 unary minus: depth 63 under the action');
});
