// Compile errors (every code, with its exact place and code frame), the limits, keywords as plain
// names, firing order, actions and routing, and the example rules of the language's contract.
import t, { type Test } from 'tap';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { compileRules, errorsOf, load, posOf, type Sources } from './helpers/rules.js';
import { formatErrors } from '../src/rules/loader.js';
import type { RuleErrorCode } from '../src/rules/dsl/errors.js';

const ROOT = new URL('..', import.meta.url).pathname;

interface Expected {
  code: RuleErrorCode;
  /** where: the text the error points at (its first occurrence), or a line and column */
  at: string | { line: number; col: number };
  message?: RegExp;
}

/** The rules do not compile, and the errors are exactly these, in order, each at its place in test.rules. */
function expectErrors(
  t: Test,
  text: string,
  expected: Expected[],
  opts: Parameters<typeof compileRules>[1] & { first?: boolean } = {},
): void {
  const result = compileRules(text, opts);
  t.equal(result.ruleset, null, 'nothing runs when there is an error');
  const codes = result.errors.map((e) => e.code);
  // first: only the first errors are checked (a lexical error may leave the parser a second one)
  t.same(
    opts.first ? codes.slice(0, expected.length) : codes,
    expected.map((e) => e.code),
    `codes of ${JSON.stringify(text.length > 120 ? text.slice(0, 120) + '...' : text)}`,
  );
  expected.forEach((x, i) => {
    const e = result.errors[i];
    if (!e) return;
    const at = typeof x.at === 'string' ? posOf(text, x.at) : x.at;
    t.same({ file: e.file, line: e.line, col: e.col }, { file: 'test.rules', ...at }, `${x.code} at ${at.line}:${at.col}`);
    if (x.message) t.match(e.message, x.message);
  });
}

const rule = (when: string, then = 'drop()'): string => `rule r\nwhen ${when}\nthen ${then}\nend\n`;

t.test('E_RULE_SYNTAX', async (t) => {
  const cases: Array<[string, string | { line: number; col: number }, RegExp]> = [
    [rule('payload.x > '), 'then', /unexpected keyword "then" where a value was expected/],
    ['rule r when true then drop()', { line: 1, col: 29 }, /rule "r" has no "end"/],
    ['rule r when true drop() end', 'drop', /expected "then" after the condition, found "drop"/],
    ['rule r true then drop() end', 'true', /expected "when" after the name and options of rule "r", found "true"/],
    ['when true then drop() end', 'when', /expected "rule", found "when"/],
    ['rule r when payload.x @ 1 then drop() end', '@', /unexpected character "@"/],
    ['rule r priority 1.5 when true then drop() end', '1.5', /expected a whole number after "priority"/],
    ['rule r throttle 10 when true then drop() end', '10', /expected a duration after "throttle"/],
    ['rule r when true then drop end', 'end', /expected "\(" after the action "drop"/],
    ['rule r when true then 5 end', '5', /expected an action/],
    ['rule r when (1 + 2 then drop() end', 'then', /expected "\)" to close the parenthesis/],
    ['rule r when [1, 2 then drop() end', 'then', /expected "," or "\]" in the list/],
    ['rule r when { a 1 } == 1 then drop() end', '1 }', /expected ":" after the key "a"/],
    ['rule r when { 1: 2 } == 1 then drop() end', '1:', /expected a key/],
    ['rule r when payload. == 1 then drop() end', '==', /expected a field name after "\."/],
    ['rule r when end == 1 then drop() end', 'end', /unexpected keyword "end"/],
    ['rule r when payload.x.f(1) then drop() end', '(1)', /expected "then" after the condition, found "\("/],
  ];
  for (const [text, at, message] of cases) expectErrors(t, text, [{ code: 'E_RULE_SYNTAX', at, message }], { first: text.includes('@') });
});

t.test('E_RULE_SYNTAX: parsing resumes at the next rule, so later errors are reported too', async (t) => {
  const text = `rule one when payload.x > then drop() end
rule two when avgg(payload.x, 5m) > 1 then drop() end
rule three when true then uplnk() end
`;
  expectErrors(t, text, [
    { code: 'E_RULE_SYNTAX', at: 'then' },
    { code: 'E_RULE_UNKNOWN_FUNCTION', at: 'avgg' },
    { code: 'E_RULE_UNKNOWN_ACTION', at: 'uplnk' },
  ]);
});

t.test('E_RULE_UNKNOWN_FUNCTION, with a did-you-mean suggestion', async (t) => {
  const cases: Array<[string, string, RegExp]> = [
    [rule('avgg(payload.t, 5m) > 1'), 'avgg', /^unknown function "avgg"; did you mean "avg"\?$/],
    [rule('uper(payload.s) == "A"'), 'uper', /^unknown function "uper"; did you mean "upper"\?$/],
    [rule('topiclevel(msg.topic, 1) == "a"'), 'topiclevel', /did you mean "topicLevel"\?/],
    [rule('cont(5m) > 1'), 'cont', /did you mean "count"\?/],
    [rule('frobnicate(1) == 1'), 'frobnicate', /^unknown function "frobnicate"$/],
    [rule('uplink() == 1'), 'uplink', /it is an action: actions go after "then"/],
    [rule('true', 'log("info", lenght(payload.s))'), 'lenght', /^unknown function "lenght"/],
  ];
  for (const [text, at, message] of cases) expectErrors(t, text, [{ code: 'E_RULE_UNKNOWN_FUNCTION', at, message }]);
});

t.test('E_RULE_UNKNOWN_ACTION, with a did-you-mean suggestion', async (t) => {
  const cases: Array<[string, string, RegExp]> = [
    [rule('true', 'uplnk()'), 'uplnk', /^unknown action "uplnk"; did you mean "uplink"\?$/],
    [rule('true', 'publsh("a", 1)'), 'publsh', /did you mean "publish"\?/],
    [rule('true', 'drp()'), 'drp', /did you mean "drop"\?/],
    [rule('true', 'Emit("e", 1)'), 'Emit', /did you mean "emit"\?/],
    [rule('true', 'abs(1)'), 'abs', /it is a function/],
    [rule('true', 'explode()'), 'explode', /^unknown action "explode"$/],
  ];
  for (const [text, at, message] of cases) expectErrors(t, text, [{ code: 'E_RULE_UNKNOWN_ACTION', at, message }]);
});

t.test('E_RULE_ARITY', async (t) => {
  const cases: Array<[string, string, RegExp]> = [
    [rule('abs() == 1'), 'abs', /abs\(\) takes 1 argument, not 0/],
    [rule('round(1, 2, 3) == 1'), 'round', /round\(\) takes 1 or 2 arguments, not 3/],
    [rule('min(1) == 1'), 'min', /min\(\) takes 2 arguments, not 1/],
    [rule('now(1) == 1'), 'now', /now\(\) takes 0 arguments, not 1/],
    [rule('topicLevel(msg.topic) == "a"'), 'topicLevel', /takes 2 arguments/],
    [rule('avg(payload.v) > 1'), 'avg', /avg\(\) takes 2 arguments \(a value and a window such as 5m or 10\), not 1/],
    [rule('count() > 1'), 'count', /count\(\) takes 1 argument \(a window such as 5m or 10\), not 0/],
    [rule('count(5m, 1) > 1'), 'count', /not 2/],
    [rule('delta(payload.v, 5m) > 1'), 'delta', /delta\(\) takes 1 argument, not 2/],
    [rule('true', 'drop(1)'), 'drop', /drop\(\) takes at most 0 arguments, not 1/],
    [rule('true', 'publish("t")'), 'publish', /publish\(\) needs its payload argument/],
    [rule('true', 'emit("e")'), 'emit', /emit\(\) needs its data argument/],
    [rule('true', 'log("info")'), 'log', /log\(\) needs its text argument/],
    [rule('true', 'infer()'), 'infer', /infer\(\) needs its model argument/],
    [rule('true', 'uplink("a", 1, "high", 4)'), 'uplink', /uplink\(\) takes at most 3 arguments, not 4/],
  ];
  for (const [text, at, message] of cases) expectErrors(t, text, [{ code: 'E_RULE_ARITY', at, message }]);
});

t.test('E_RULE_ARG', async (t) => {
  const cases: Array<[string, string, RegExp]> = [
    [rule('true', 'uplink(prority = "high")'), 'prority', /uplink\(\) has no argument "prority"; did you mean "priority"\?/],
    [rule('true', 'uplink(priority = "urgent")'), '"urgent"', /priority must be one of "critical", "high", "normal", "low"/],
    // a member access is placed at its field name
    [rule('true', 'uplink(priority = payload.p)'), 'p)', /priority must be a literal/],
    [rule('true', 'uplink(topic = 5)'), '5', /topic must be a string/],
    [rule('true', 'uplink(priority = "high", priority = "low")'), 'priority = "low"', /"priority" is given twice/],
    [rule('avg(payload.v, "5m") > 1'), '"5m"', /the window of avg\(\) must be a literal duration/],
    [rule('avg(payload.v, 0) > 1'), '0)', /the window of avg\(\)/],
    [rule('sum(payload.v, 2.5) > 1'), '2.5', /the window of sum\(\)/],
    [rule('count(payload.n) > 1'), 'n)', /the window of count\(\)/],
    [rule('avg(payload.v, -5m) > 1'), '-5m', /the window of avg\(\)/],
    [rule('avg(avg(payload.v, 5m), 5m) > 1'), 'avg(payload', /window functions cannot be nested: avg\(\) inside another window function/],
    [rule('maxOf(payload.v + last(payload.w), 10) > 1'), 'last', /window functions cannot be nested: last\(\)/],
    [rule('{ __proto__: 1 } == null'), '__proto__', /"__proto__" cannot be a key of an object/],
    [rule('{ a: 1, "constructor": 2 } == null'), '"constructor"', /"constructor" cannot be a key/],
    [rule('true', 'publish("t", { prototype: 1 })'), 'prototype', /"prototype" cannot be a key/],
    [rule('true', 'uplink(priority = "high", "t")'), '"t"', /uplink\(\): a positional argument cannot follow a named one/],
    [rule('true', 'publish("a", 1, qos = 2)'), '2)', /qos must be 0 or 1/],
    [rule('true', 'publish("a", 1, retain = "yes")'), '"yes"', /retain must be true or false/],
    [rule('true', 'log("verbose", "x")'), '"verbose"', /level must be one of "debug", "info", "warn", "error"/],
    [rule('true', 'infer(5)'), '5', /the model name must be a string/],
    [rule('true', 'infer(payload.model)'), 'model)', /infer\(\): model must be a literal/],
    [rule('true', 'emit(5, 1)'), '5', /the event name must be a string/],
    [rule('round(2.5, digits = 1) == 3'), 'digits', /round\(\) takes no named arguments/],
  ];
  for (const [text, at, message] of cases) expectErrors(t, text, [{ code: 'E_RULE_ARG', at, message }]);
});

t.test('E_RULE_UNKNOWN_ROOT', async (t) => {
  const cases: Array<[string, string, RegExp]> = [
    [rule('paylod.temp > 1'), 'paylod', /^unknown name "paylod": a rule reads msg, payload, device and edge; did you mean "payload"\?$/],
    [rule('temp > 1'), 'temp', /^unknown name "temp": a rule reads msg, payload, device and edge$/],
    [rule('mssg.topic == "a"'), 'mssg', /did you mean "msg"\?/],
    [rule('true', 'log("info", devices.id)'), 'devices', /did you mean "device"\?/],
  ];
  for (const [text, at, message] of cases) expectErrors(t, text, [{ code: 'E_RULE_UNKNOWN_ROOT', at, message }]);
});

t.test('E_RULE_DUPLICATE: two rules with one name, in one file or across files', async (t) => {
  expectErrors(t, 'rule a when true then drop() end\nrule b when true then drop() end\n  rule a when false then drop() end\n', [
    { code: 'E_RULE_DUPLICATE', at: { line: 3, col: 3 }, message: /^a rule named "a" already exists at test\.rules:1:1$/ },
  ]);
  const result = compileRules({ 'x.rules': '\nrule shared when true then drop() end', 'y.rules': 'rule shared when true then drop() end' });
  t.same(result.errors, [
    { file: 'y.rules', line: 1, col: 1, code: 'E_RULE_DUPLICATE', message: 'a rule named "shared" already exists at x.rules:2:1' },
  ]);
  // a name given as a string is the same name
  t.same(
    errorsOf('rule "a b" when true then drop() end\nrule "a b" when true then drop() end').map((e) => e.code),
    ['E_RULE_DUPLICATE'],
  );
});

t.test('formatErrors: file:line:col: code: message, the line, and a caret under the column', async (t) => {
  const text = 'rule warm\nwhen avgg(payload.t, 5m) > 1\nthen drop()\nend\n';
  const result = compileRules({ 'site.rules': text });
  t.equal(
    formatErrors(result),
    [
      'site.rules:2:6: E_RULE_UNKNOWN_FUNCTION: unknown function "avgg"; did you mean "avg"?',
      '  when avgg(payload.t, 5m) > 1',
      '       ^',
    ].join('\n'),
  );
  // a tab counts one column and prints as one space, so the caret stays under its column; CRLF is not shown
  const tabbed = compileRules({ 't.rules': 'rule r\r\n\twhen\tfoo > 1\r\nthen drop()\r\nend\r\n' });
  t.equal(
    formatErrors(tabbed),
    [
      't.rules:2:7: E_RULE_UNKNOWN_ROOT: unknown name "foo": a rule reads msg, payload, device and edge',
      '   when foo > 1',
      '        ^',
    ].join('\n'),
  );
  // the path shown can be mapped, as the CLI does
  t.match(
    formatErrors(result, (f) => `/etc/rules/${f}`),
    /^\/etc\/rules\/site\.rules:2:6: E_RULE_UNKNOWN_FUNCTION/,
  );
});

t.test('all errors of a ruleset are reported together, across files, in file and position order', async (t) => {
  const result = compileRules({
    'b.rules': 'rule dup when true then drop() end\nrule bad when true then dorp() end\n',
    'a.rules':
      'rule dup when true then drop() end\nrule x when payload.v > then drop() end\nrule y when paylod.v > 1 then drop() end\nrule z when avg(payload.v, "1m") > 1 then drop() end\n',
  });
  t.equal(result.ruleset, null);
  t.same(
    result.errors.map((e) => `${e.file}:${e.line}:${e.col} ${e.code}`),
    [
      'a.rules:2:25 E_RULE_SYNTAX',
      'a.rules:3:13 E_RULE_UNKNOWN_ROOT',
      'a.rules:4:28 E_RULE_ARG',
      'b.rules:1:1 E_RULE_DUPLICATE',
      'b.rules:2:25 E_RULE_UNKNOWN_ACTION',
    ],
  );
  t.equal(
    formatErrors(result)
      .split('\n')
      .filter((l) => /^\S+\.rules:\d+:\d+: E_RULE_/.test(l)).length,
    5,
    'five framed errors',
  );
});

t.test('limit: expression depth 64', async (t) => {
  // `not` is a node: 63 of them over a literal make depth 64
  const nots = (n: number): string => `${'not '.repeat(n)}true`;
  t.same(errorsOf(rule(nots(63))), [], 'depth 64 compiles');
  expectErrors(t, rule(nots(64)), [
    { code: 'E_RULE_TOO_LARGE', at: 'true', message: /rule "r" nests expressions 65 deep; the limit is 64/ },
  ]);
  // `a + b` has depth 2: a chain of k additions has depth k + 1
  const sum = (k: number): string => `1${' + 1'.repeat(k)} == null`;
  t.same(errorsOf(rule(sum(62))), [], '62 additions under == : depth 64');
  t.same(
    errorsOf(rule(sum(63))).map((e) => e.code),
    ['E_RULE_TOO_LARGE'],
    '63 additions under == : depth 65',
  );
  // parentheses make no node: ((((x)))) has depth 1
  t.same(errorsOf(rule(`${'('.repeat(300)}${nots(63)}${')'.repeat(300)}`)), [], '300 parentheses around depth 64 add nothing');
  t.same(errorsOf(rule(`${'not ('.repeat(63)}true${')'.repeat(63)}`)), [], 'parentheses between the nots add nothing');
  // member access: payload is a leaf, each .a one more level
  t.same(errorsOf(rule(`payload${'.a'.repeat(63)}`)), []);
  t.same(
    errorsOf(rule(`payload${'.a'.repeat(64)}`)).map((e) => e.code),
    ['E_RULE_TOO_LARGE'],
  );
  // in an action, the action is the root: its arguments start at depth 2
  t.same(errorsOf(rule('true', `log("info", ${nots(62)})`)), [], 'action 1 + argument depth 63');
  t.same(
    errorsOf(rule('true', `log("info", ${nots(63)})`)).map((e) => e.code),
    ['E_RULE_TOO_LARGE'],
  );
  // the limit is per rule: two rules at depth 64 are fine
  t.same(errorsOf(`${rule(nots(63))}rule s when ${nots(63)} then drop() end\n`), []);
});

t.test('limit: 100,000 nodes per ruleset', async (t) => {
  // rule = binary(==) + list + n literals + null + drop(): n + 4 nodes
  const listRule = (name: string, n: number): string => `rule ${name}\nwhen [${Array(n).fill('1').join(',')}] == null\nthen drop()\nend\n`;
  t.same(errorsOf(listRule('r', 99_996)), [], '100,000 nodes compile');
  expectErrors(t, listRule('r', 99_997), [
    { code: 'E_RULE_TOO_LARGE', at: { line: 1, col: 1 }, message: /the ruleset passes 100000 syntax nodes at rule "r"/ },
  ]);
  // per ruleset: across rules and files
  t.same(compileRules({ 'a.rules': listRule('a', 50_000), 'b.rules': listRule('b', 49_992) }).errors, [], '50,004 + 49,996 nodes');
  const over = compileRules({ 'a.rules': listRule('a', 50_000), 'b.rules': listRule('b', 49_993) });
  t.same(
    over.errors.map((e) => `${e.file}:${e.line}:${e.col} ${e.code}`),
    ['b.rules:1:1 E_RULE_TOO_LARGE'],
    'reported once, at the rule that passes the limit',
  );
});

t.test('limit: rules.maxRules', async (t) => {
  const rules = (names: string[]): string => names.map((n) => `rule ${n} when true then drop() end\n`).join('');
  t.same(compileRules({ 'a.rules': rules(['a1', 'a2']), 'b.rules': rules(['b1']) }, { maxRules: 3 }).errors, [], '3 rules, maxRules 3');
  const over = compileRules({ 'a.rules': rules(['a1', 'a2']), 'b.rules': rules(['b1', 'b2']) }, { maxRules: 3 });
  t.equal(over.ruleset, null);
  t.same(
    over.errors,
    [{ file: 'b.rules', line: 2, col: 1, code: 'E_RULE_TOO_LARGE', message: 'the ruleset has 4 rules; rules.maxRules is 3' }],
    'at the first rule past the limit',
  );
  t.equal(compileRules(rules(Array.from({ length: 10_000 }, (_, i) => `r${i}`))).errors.length, 0, 'the default allows 10,000');
  t.same(
    compileRules(rules(Array.from({ length: 10_001 }, (_, i) => `r${i}`))).errors.map((e) => e.code),
    ['E_RULE_TOO_LARGE'],
    'and not 10,001',
  );
});

t.test('limit: rules.maxFileBytes, in bytes', async (t) => {
  const padded = (bytes: number, tail = ''): string => {
    const head = 'rule r when true then drop() end\n';
    return head + '#'.repeat(bytes - Buffer.byteLength(head) - Buffer.byteLength(tail)) + tail;
  };
  t.equal(Buffer.byteLength(padded(200)), 200);
  t.same(compileRules(padded(200), { maxFileBytes: 200 }).errors, [], 'exactly the limit');
  const over = compileRules({ 'big.rules': padded(201), 'ok.rules': 'rule fine when true then drop() end' }, { maxFileBytes: 200 });
  t.same(over.errors, [
    { file: 'big.rules', line: 1, col: 1, code: 'E_RULE_TOO_LARGE', message: 'the file is 201 bytes; rules.maxFileBytes is 200' },
  ]);
  t.equal(over.ruleset, null, 'the whole set is refused');
  // bytes, not characters: é is two bytes
  const accented = padded(201, 'é');
  t.equal(accented.length, 200);
  t.same(
    errorsOf(accented, { maxFileBytes: 200 }).map((e) => e.code),
    ['E_RULE_TOO_LARGE'],
  );
  // the default: 1 MiB
  t.same(errorsOf(padded(1024 * 1024)), []);
  t.same(
    errorsOf(padded(1024 * 1024 + 1)).map((e) => e.code),
    ['E_RULE_TOO_LARGE'],
  );
});

t.test('keywords are plain names after ".", as object keys and as named-argument names', async (t) => {
  const h = load(`rule kw
when payload.end == 1 and payload.rule == 2 and payload.in == 3 and payload.not == 4 and payload["then"] == 5 and { in: 1 }.in == 1
then
  uplink(priority = "high")
  publish("out", { in: 1, end: 2, when: 3, rule: 4, true: 5, null: 6, matches: 7 })
end
`);
  const out = h.send({ topic: 'a/b', payload: { end: 1, rule: 2, in: 3, not: 4, then: 5 } });
  t.same(out.fired, ['kw']);
  t.same(
    out.actions.map((a) => [a.name, a.args]),
    [
      ['uplink', { priority: 'high' }],
      ['publish', { topic: 'out', payload: { in: 1, end: 2, when: 3, rule: 4, true: 5, null: 6, matches: 7 } }],
    ],
  );
  t.same(out.uplinks, [{ topic: 'a/b', priority: 'high', self: true, payload: undefined }]);
  // payload.true is the field "true", not the value true
  const f = load('rule f when payload.true == "yes" and payload.null == 0 then drop() end');
  t.same(f.send({ topic: 'a/b', payload: { true: 'yes', null: 0 } }).fired, ['f']);
  t.same(f.send({ topic: 'a/b', payload: {} }).fired, []);
});

t.test('firing order: priority, then file name in byte order, then position', async (t) => {
  const r = (name: string, priority?: number): string =>
    `rule ${name}${priority === undefined ? '' : ` priority ${priority}`} when true then log("info", "${name}") end\n`;
  const h = load({
    'b.rules': r('b1') + r('b2', 5) + r('b3'),
    'a.rules': r('a1') + r('a2', -1) + r('a3'),
    'B.rules': r('B1'),
    '9-x.rules': r('n9'),
    '10-x.rules': r('n10') + r('n10b', 5),
    '\u{FF5E}.rules': r('tilde'),
    '\u{1F600}.rules': r('smile'),
  });
  const out = h.send({ topic: 'x/y' });
  const order = ['n10b', 'b2', 'n10', 'n9', 'B1', 'a1', 'a3', 'b1', 'b3', 'tilde', 'smile', 'a2'];
  t.same(out.fired, order);
  t.same(
    out.actions.map((a) => a.args.text),
    order,
    'the actions are carried out in the same order',
  );
  t.same(h.ruleset.names(), order);
});

t.test('actions: collected from every fired rule and carried out in order', async (t) => {
  const h = load(`rule first priority 2
when msg.topic matches "m/+"
then log("info", "one"), publish("p/1", 1) publish("p/2", { n: 2 }, qos = 1, retain = true)
end
rule skipped priority 1
when msg.topic matches "m/+" and payload.never == true
then publish("p/never", 0)
end
rule second
when msg.topic matches "m/+"
then infer("bearing", to = "ml/x") emit("evt", { d: msg.deviceId }) publish("p/3", "text") log("warn", "two")
end
`);
  const out = h.send({ topic: 'm/d1' });
  t.same(out.fired, ['first', 'second']);
  t.same(
    out.actions.map((a) => `${a.rule}:${a.name}`),
    ['first:log', 'first:publish', 'first:publish', 'second:infer', 'second:emit', 'second:publish', 'second:log'],
  );
  t.same(
    out.plan.publishes.map((p) => [p.topic, p.payload, p.qos, p.retain]),
    [
      ['p/1', 1, 0, false],
      ['p/2', { n: 2 }, 1, true],
      ['p/3', 'text', 0, false],
    ],
  );
  t.same(
    out.plan.logs.map((l) => [l.rule, l.level, l.text]),
    [
      ['first', 'info', 'one'],
      ['second', 'warn', 'two'],
    ],
  );
  t.same(out.plan.infers, [{ rule: 'second', model: 'bearing', to: 'ml/x' }]);
  t.same(
    out.plan.emits.map((e) => [e.name, { ...(e.data as object) }]),
    [['evt', { d: 'd1' }]],
  );
  t.same(out.uplinks, [], 'emit() took over the routing: the message itself does not go up');
});

t.test('drop(): discards the uplinks collected so far and stops the rules after it', async (t) => {
  const h = load(`rule up priority 10
when msg.topic matches "d/+"
then uplink(priority = "high") uplink(topic = "copy/" + msg.deviceId, payload = payload) publish("local/1", 1)
end
rule dropper priority 5
when msg.topic matches "d/+" and payload.drop == true
then publish("local/2", 2) drop()
end
rule after
when msg.topic matches "d/+"
then uplink() log("info", "after")
end
`);
  const dropped = h.send({ topic: 'd/x', payload: { drop: true } });
  t.same(dropped.fired, ['up', 'dropper'], '"after" is not evaluated');
  t.equal(dropped.dropped, true);
  t.same(dropped.uplinks, [], 'the uplinks of "up" are discarded; no default routing');
  t.same(
    dropped.plan.publishes.map((p) => p.topic),
    ['local/1', 'local/2'],
    'other actions are still carried out',
  );
  const kept = h.send({ topic: 'd/x', payload: { drop: false } });
  t.same(kept.fired, ['up', 'after']);
  t.equal(kept.dropped, false);
  t.same(kept.uplinks, [
    { topic: 'd/x', priority: 'high', self: true, payload: undefined },
    { topic: 'copy/x', priority: 'normal', self: false, payload: { drop: false } },
  ]);
  // an uplink before drop() in the same rule is discarded too
  const same = load('rule r when true then uplink(priority = "critical") drop() end');
  const s = same.send({ topic: 'd/x' });
  t.same(s.uplinks, []);
  t.equal(s.dropped, true);
});

t.test('uplink() without topic and payload: the message itself, at most once, at the highest priority asked', async (t) => {
  const priorities = [{ topic: 'devices/+/alarm/#', priority: 'critical' as const }];
  const h = load(
    `rule low priority 3 when true then uplink(priority = "low") end
rule high priority 2 when payload.high == true then uplink(priority = "high") end
rule plain priority 1 when payload.plain == true then uplink() end
rule twice when payload.twice == true then uplink(priority = "low") uplink(priority = "low") end
`,
    { priorities },
  );
  const self = (topic: string, priority: string) => [{ topic, priority, self: true, payload: undefined }];
  t.same(h.send({ topic: 'devices/d1/t', payload: { high: true, plain: true } }).uplinks, self('devices/d1/t', 'high'));
  t.same(
    h.send({ topic: 'devices/d1/t', payload: { plain: true } }).uplinks,
    self('devices/d1/t', 'normal'),
    'uplink() asks for the default priority',
  );
  t.same(h.send({ topic: 'devices/d1/t', payload: { twice: true } }).uplinks, self('devices/d1/t', 'low'), 'once, however many ask');
  t.same(h.send({ topic: 'devices/d1/alarm/fire', payload: {} }).uplinks, self('devices/d1/alarm/fire', 'low'), 'only low was asked');
  t.same(
    h.send({ topic: 'devices/d1/alarm/fire', payload: { plain: true } }).uplinks,
    self('devices/d1/alarm/fire', 'critical'),
    'the default of routing.priorities',
  );
  const out = h.send({ topic: 'devices/d1/t', id: 'SAME-ID', payload: { high: true } });
  t.equal(out.plan.uplinks[0]!.self, true, 'the same message (same id)');
});

t.test('uplink() with a topic or a payload: a new message', async (t) => {
  const h = load(`rule copy
when msg.topic matches "d/+"
then
  uplink(topic = "alerts/" + msg.deviceId, payload = { v: payload.v }, priority = "critical")
  uplink(payload = "text body")
  uplink(topic = "same-payload/" + msg.deviceId)
end
`);
  const out = h.send({ topic: 'd/k', payload: { v: 7, other: 1 } });
  t.same(
    out.uplinks,
    [
      { topic: 'alerts/k', priority: 'critical', self: false, payload: { v: 7 } },
      { topic: 'd/k', priority: 'normal', self: false, payload: 'text body' },
      { topic: 'same-payload/k', priority: 'normal', self: false, payload: undefined },
    ],
    'no uplink of the message itself',
  );
  // a topic that evaluates to no string sends nothing, and never the message itself in its place
  const bad = load('rule bad when true then uplink(topic = "alerts/" + payload.missing) end');
  const b = bad.send({ topic: 'd/k', payload: {} });
  t.same(b.fired, ['bad']);
  t.same(
    b.uplinks.filter((u) => u.self),
    [],
    'the message itself does not go up',
  );
});

t.test('default routing: device messages only, when no fired rule called uplink, emit or drop', async (t) => {
  const priorities = [{ topic: 'devices/+/alarm/#', priority: 'critical' as const }];
  const h = load(
    `rule note when payload.note == true then log("info", "x") publish("p", 1) infer("m") end
rule ev when payload.ev == true then emit("e", 1) end
rule up when payload.up == true then uplink(topic = "other") end
rule never when payload.never == true and false then uplink() end
`,
    { priorities },
  );
  for (const protocol of ['mqtt', 'coap', 'ws'] as const) {
    t.same(
      h.send({ topic: 'devices/d/t', protocol }).uplinks,
      [{ topic: 'devices/d/t', priority: 'normal', self: true, payload: undefined }],
      `${protocol}: goes up`,
    );
  }
  t.same(
    h.send({ topic: 'devices/d/alarm/x' }).uplinks,
    [{ topic: 'devices/d/alarm/x', priority: 'critical', self: true, payload: undefined }],
    'with the routing.priorities priority',
  );
  t.same(
    h.send({ topic: 'devices/d/t', payload: { note: true } }).uplinks.map((u) => u.self),
    [true],
    'log, publish, infer do not take over the routing',
  );
  t.same(
    h.send({ topic: 'devices/d/t', payload: { never: true } }).uplinks.map((u) => u.self),
    [true],
    'a rule that did not fire does not count',
  );
  t.same(h.send({ topic: 'devices/d/t', payload: { ev: true } }).uplinks, [], 'emit');
  t.same(
    h.send({ topic: 'devices/d/t', payload: { up: true } }).uplinks.map((u) => [u.topic, u.self]),
    [['other', false]],
    'uplink(topic)',
  );
  t.same(h.send({ topic: 'devices/d/t', protocol: 'internal' }).uplinks, [], 'internal messages: no default routing');
  t.same(h.send({ topic: 'devices/d/t', protocol: 'cloud' }).uplinks, [], 'cloud messages: no default routing');
  const local = load('rule note when true then log("info", "x") end', { routingDefault: 'local' });
  t.same(local.send({ topic: 'devices/d/t' }).uplinks, [], 'routing.default local: stays local');
  const explicitLocal = load('rule up when true then uplink() end', { routingDefault: 'local' });
  t.same(
    explicitLocal.send({ topic: 'devices/d/t' }).uplinks.map((u) => u.self),
    [true],
    'an uplink() still goes up',
  );
  const internal = load('rule up when true then uplink() end');
  t.same(
    internal.send({ topic: 'devices/d/t', protocol: 'internal' }).uplinks.map((u) => u.self),
    [true],
    'internal messages go up through uplink()',
  );
});

t.test('messages from the cloud never go up', async (t) => {
  const h = load('rule up when true then uplink(priority = "critical") end');
  const out = h.send({ topic: 'cloud/cmd', protocol: 'cloud' });
  t.same(out.fired, ['up']);
  t.same(out.uplinks, []);
});

// The example of the rule language's contract, as printed there.
const SPEC_EXAMPLE = `# Hot pump: tell the cloud first, and switch the local fan on.
rule overheat priority 10
when msg.topic matches "devices/+/telemetry" and payload.temp > 40.0
then
  uplink(priority = "high")
  publish("devices/" + msg.deviceId + "/cmd/fan", { on: true })
end

rule quiet_debug
when msg.topic matches "devices/+/debug/#"
then drop()
end

rule vibration
when msg.topic matches "devices/+/vibration" and len(payload.samples) >= 64
then infer("bearing")
end

rule bearing_fault throttle 10m
when msg.topic matches "ml/bearing/+" and payload.label == "fault" and payload.score > 0.8
then emit("bearing_fault", { device: msg.deviceId, score: payload.score, at: now() })
end

rule warm_average
when msg.topic matches "devices/+/telemetry" and avg(payload.temp, 5m) > 35
then uplink(topic = "alerts/" + msg.deviceId + "/warm", payload = { avg: avg(payload.temp, 5m), n: count(5m) })
end
`;

t.test("the example rules of the rule language's contract compile and do what their comments say", async (t) => {
  const h = load(SPEC_EXAMPLE);
  t.same(h.ruleset.names(), ['overheat', 'quiet_debug', 'vibration', 'bearing_fault', 'warm_average']);

  // hot pump: up first as high, and the fan switched on locally
  const hot = h.send({ topic: 'devices/p1/telemetry', ts: 0, payload: { temp: 41 } });
  t.same(hot.fired, ['overheat', 'warm_average']);
  t.same(
    hot.plan.publishes.map((p) => [p.topic, { ...(p.payload as object) }]),
    [['devices/p1/cmd/fan', { on: true }]],
  );
  t.same(hot.uplinks, [
    { topic: 'devices/p1/telemetry', priority: 'high', self: true, payload: undefined },
    { topic: 'alerts/p1/warm', priority: 'normal', self: false, payload: { avg: 41, n: 1 } },
  ]);
  const mild = h.send({ topic: 'devices/p2/telemetry', ts: 0, payload: { temp: 40.0 } });
  t.same(mild.fired, ['warm_average'], '40.0 is not > 40.0; the average of p2 is 40');
  const cool = h.send({ topic: 'devices/p3/telemetry', ts: 0, payload: { temp: 20 } });
  t.same(cool.fired, []);
  t.same(
    cool.uplinks,
    [{ topic: 'devices/p3/telemetry', priority: 'normal', self: true, payload: undefined }],
    'plain telemetry goes up by default routing',
  );

  // debug stays local
  const debug = h.send({ topic: 'devices/p1/debug/trace', payload: { x: 1 } });
  t.same(debug.fired, ['quiet_debug']);
  t.equal(debug.dropped, true);
  t.same(debug.uplinks, []);

  // vibration: 64 samples or more go to the model; the message still goes up by default routing
  const vib = h.send({ topic: 'devices/p1/vibration', payload: { samples: Array(64).fill(0.1) } });
  t.same(vib.plan.infers, [{ rule: 'vibration', model: 'bearing', to: null }]);
  t.same(
    vib.uplinks.map((u) => [u.topic, u.self]),
    [['devices/p1/vibration', true]],
  );
  t.same(h.send({ topic: 'devices/p1/vibration', payload: { samples: Array(63).fill(0.1) } }).plan.infers, []);

  // bearing fault: an event, at most once per device every 10 minutes
  const fault = (ts: number, score = 0.9, deviceId = 'p1') =>
    h.send({ topic: `ml/bearing/${deviceId}`, deviceId, ts, protocol: 'internal', payload: { label: 'fault', score } });
  const first = fault(1_000_000);
  t.same(
    first.plan.emits.map((e) => [e.name, { ...(e.data as object) }]),
    [['bearing_fault', { device: 'p1', score: 0.9, at: 1_000_000 }]],
  );
  t.same(first.uplinks, [], 'an internal message: no default routing (the event goes up as high by itself)');
  t.same(fault(1_000_000 + 9 * 60_000).plan.emits, [], 'throttled for 10 minutes');
  t.same(fault(1_000_000 + 9 * 60_000, 0.95, 'p2').plan.emits.length, 1, 'per device');
  t.same(fault(1_000_000 + 10 * 60_000).plan.emits.length, 1, 'again after 10 minutes');
  t.same(fault(5_000_000, 0.8).plan.emits, [], 'a score of 0.8 is not > 0.8');

  // warm average: the device's average over 5 minutes, current message included
  const w = load(SPEC_EXAMPLE);
  const temps = [30, 36, 40];
  const outs = temps.map((temp, i) => w.send({ topic: 'devices/w1/telemetry', ts: i * 60_000, payload: { temp } }));
  t.same(
    outs.map((o) => o.fired),
    [[], [], ['warm_average']],
  );
  t.same(
    outs[2]!.uplinks,
    [{ topic: 'alerts/w1/warm', priority: 'normal', self: false, payload: { avg: (30 + 36 + 40) / 3, n: 3 } }],
    'the alert; the reading itself does not go up since the rule called uplink()',
  );
});

t.test('the shipped rules/*.rules files compile', async (t) => {
  const dir = join(ROOT, 'rules');
  const files = readdirSync(dir)
    .filter((n) => n.endsWith('.rules'))
    .sort();
  t.ok(files.length >= 3, 'there are shipped rules');
  const texts: Sources = Object.fromEntries(files.map((n) => [n, readFileSync(join(dir, n), 'utf8')]));
  const result = compileRules(texts);
  t.same(result.errors, [], formatErrors(result));
  const declared = Object.values(texts)
    .join('\n')
    .split('\n')
    .filter((l) => /^rule\s/.test(l)).length;
  t.equal(result.rules, declared, 'every rule of the files');
  const h = load(texts);
  const alarm = h.send({ topic: 'devices/s1/alarm/smoke', payload: { on: true } });
  t.same(
    alarm.uplinks.map((u) => [u.topic, u.priority, u.self]),
    [['devices/s1/alarm/smoke', 'critical', true]],
    'an alarm goes up as critical',
  );
  t.same(h.send({ topic: 'devices/s1/debug/x', payload: {} }).uplinks, [], 'debug stays on site');
});
