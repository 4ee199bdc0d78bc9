// The rule language's lexical structure, operators, values, functions and roots, as docs/rules.md
// specifies them: each case is an expression and the value an operator would see a rule compute.
import t, { type Test } from 'tap';
import { errorsOf, fires, load, posOf, valueOf } from './helpers/rules.js';

type Case = [expr: string, expected: unknown];

function table(t: Test, cases: Case[], input: Parameters<typeof valueOf>[1] = {}): void {
  for (const [expr, expected] of cases) t.same(valueOf(expr, input), expected, `${expr} → ${JSON.stringify(expected)}`);
}

// One syntax error, where and what.
function syntaxError(t: Test, text: string, at: { line: number; col: number }, message: RegExp): void {
  const errors = errorsOf(text);
  t.ok(errors.length >= 1, `${JSON.stringify(text)} does not compile`);
  const e = errors[0]!;
  t.match(
    e,
    { file: 'test.rules', line: at.line, col: at.col, code: 'E_RULE_SYNTAX' },
    `${JSON.stringify(text)}: E_RULE_SYNTAX at ${at.line}:${at.col}`,
  );
  t.match(e.message, message);
}

t.test('lexing: numbers', async (t) => {
  table(t, [
    ['12', 12],
    ['0', 0],
    ['007', 7],
    ['1.5', 1.5],
    ['1e-3', 0.001],
    ['1e3', 1000],
    ['1E3', 1000],
    ['2.5e+2', 250],
    ['-4', -4],
  ]);
  // `.5` is not a number: a dot where a value is expected
  const text = 'rule r when payload.x == .5 then drop() end';
  syntaxError(t, text, posOf(text, '.5'), /unexpected "\." where a value was expected/);
});

t.test('lexing: durations are their length in milliseconds', async (t) => {
  table(t, [
    ['500ms', 500],
    ['1s', 1000],
    ['30s', 30_000],
    ['5m', 300_000],
    ['1.5h', 5_400_000],
    ['2h', 7_200_000],
    ['1d', 86_400_000],
    ['0.5s', 500],
    ['5m + 30s', 330_000],
    ['1.5h == 5400000', true],
  ]);
});

t.test('lexing: other letters right after a number are an error', async (t) => {
  for (const bad of ['5min', '10sec', '3x', '1hour', '2e']) {
    const text = `rule r\nwhen payload.x > ${bad}\nthen drop()\nend\n`;
    const errors = errorsOf(text);
    t.ok(errors.length >= 1, `${bad} does not compile`);
    const at = posOf(text, bad);
    // the error points into the literal (at the letters that make it wrong)
    t.match(errors[0], { file: 'test.rules', line: 2, code: 'E_RULE_SYNTAX' }, `${bad}: a syntax error on line 2`);
    t.ok(errors[0]!.col > at.col && errors[0]!.col <= at.col + bad.length, `${bad}: the column ${errors[0]!.col} is inside the literal`);
    t.match(errors[0]!.message, new RegExp(`"${bad}" is not a number or a duration`));
  }
  // A space makes two tokens: 10 then the name m, which is no root.
  const spaced = errorsOf('rule r when payload.x > 10 m then drop() end');
  t.match(spaced[0], { code: 'E_RULE_SYNTAX' }, '"10 m" is not a duration');
});

t.test('lexing: strings and every escape', async (t) => {
  table(t, [
    ['"plain"', 'plain'],
    ['""', ''],
    ['"say \\"hi\\""', 'say "hi"'],
    ['"back\\\\slash"', 'back\\slash'],
    ['"a\\nb"', 'a\nb'],
    ['"a\\rb"', 'a\rb'],
    ['"a\\tb"', 'a\tb'],
    ['"\\u{41}"', 'A'],
    ['"\\u{e9}"', 'é'],
    ['"\\u{1F600}"', '😀'],
    ['"\\u{000041}"', 'A'],
    ['"x\\u{1F600}y\\u{2603}"', 'x😀y☃'],
    ['"# not a comment"', '# not a comment'],
    ['"é😀 raw UTF-8"', 'é😀 raw UTF-8'],
    ['len("\\u{41}\\n")', 2],
  ]);
});

t.test('lexing: a bad escape is an error at the backslash', async (t) => {
  for (const esc of ['\\q', '\\x41', '\\u0041', '\\u{}', '\\u{110000}', '\\u{D800}', '\\u{12G}', "\\'", '\\0']) {
    const text = `rule r\nwhen payload.s == "ab${esc}cd"\nthen drop()\nend\n`;
    const at = posOf(text, esc);
    syntaxError(t, text, at, /escape/);
  }
});

t.test('lexing: an unterminated string is an error at its opening quote', async (t) => {
  const text = 'rule r\nwhen payload.s == "open\nthen drop()\nend\n';
  syntaxError(t, text, { line: 2, col: 19 }, /string is not closed/);
  const atEnd = 'rule r when payload.s == "open';
  syntaxError(t, atEnd, { line: 1, col: 26 }, /string is not closed/);
});

t.test('lexing: comments and white space', async (t) => {
  const h = load(
    [
      '# a comment line',
      '   # an indented comment',
      'rule commented # after the name',
      '\twhen payload.x == 1 # after the condition: "rule x when"',
      '',
      '\t\tthen log("info", "#1 is kept") # the string keeps its #',
      'end # done',
      '# the end',
    ].join('\r\n'),
  );
  const out = h.send({ topic: 'a/b', payload: { x: 1 } });
  t.same(out.fired, ['commented']);
  t.same(out.actions[0]!.args, { level: 'info', text: '#1 is kept' });
  t.same(h.send({ topic: 'a/b', payload: { x: 2 } }).fired, [], 'the condition is what is left of the line before #');
  // tokens need no white space where punctuation separates them
  t.same(load('rule r when(payload.x==1)then drop()end').send({ topic: 'a/b', payload: { x: 1 } }).fired, ['r']);
});

t.test('arithmetic', async (t) => {
  table(t, [
    ['7 / 2', 3.5],
    ['1 + 2 * 3', 7],
    ['(1 + 2) * 3', 9],
    ['10 - 4 - 3', 3],
    ['2 * 3 % 4', 2],
    ['7 % 3', 1],
    ['-7 % 3', -1],
    ['7.5 % 2', 1.5],
    ['0.1 + 0.2', 0.1 + 0.2],
    ['-5', -5],
    ['- -3', 3],
    ['-(2 - 5)', 3],
    ['2 - -1', 3],
    // division and remainder by zero
    ['1 / 0', null],
    ['0 / 0', null],
    ['-1 / 0', null],
    ['5 % 0', null],
    ['0 % 0', null],
    // + joins strings, or a string and a number
    ['"a" + "b"', 'ab'],
    ['"n=" + 5', 'n=5'],
    ['5 + "x"', '5x'],
    ['"v" + 1.5', 'v1.5'],
    ['"" + 0', '0'],
    ['"devices/" + "d1" + "/cmd"', 'devices/d1/cmd'],
    ['1 + 2 + "x"', '3x'],
    ['"x" + 1 + 2', 'x12'],
    // anything else is null
    ['"a" + true', null],
    ['"a" + null', null],
    ['null + "a"', null],
    ['"a" + [1]', null],
    ['"a" + {}', null],
    ['1 + true', null],
    ['null + 1', null],
    ['[1] + [2]', null],
    ['"5" - 2', null],
    ['"3" * 2', null],
    ['"6" / 2', null],
    ['"6" % 4', null],
    ['true * 2', null],
    ['-"a"', null],
    ['-null', null],
    ['-true', null],
    ['payload.missing + 1', null],
  ]);
});

t.test('== and != : equal type and value, deeply', async (t) => {
  table(
    t,
    [
      ['1 == 1', true],
      ['1 == 1.0', true],
      ['0.5 == 5e-1', true],
      ['"5" == 5', false],
      ['5 == "5"', false],
      ['null == null', true],
      ['null == false', false],
      ['0 == false', false],
      ['"" == null', false],
      ['"" == false', false],
      ['"a" == "a"', true],
      ['"a" == "A"', false],
      ['true == true', true],
      ['[1, 2] == [1, 2]', true],
      ['[1, 2] == [2, 1]', false],
      ['[1, 2] == [1, 2, 3]', false],
      ['[] == []', true],
      ['[] == {}', false],
      ['{} == {}', true],
      ['{ a: 1, b: [1, { c: 2 }] } == { b: [1, { c: 2 }], a: 1 }', true],
      ['{ a: 1 } == { a: 1, b: null }', false],
      ['{ a: 1 } == { a: "1" }', false],
      ['[[1], [2]] == [[1], [2]]', true],
      ['[null] == [null]', true],
      ['payload.o == { x: 1, y: [true, "s"] }', true],
      ['payload.list == [1, 2, 3]', true],
      ['payload.missing == null', true],
      ['1 != 2', true],
      ['1 != 1', false],
      ['"5" != 5', true],
      ['null != null', false],
      ['null != 0', true],
      ['[1] != [1]', false],
      ['{ a: [1] } != { a: [2] }', true],
    ],
    { payload: { o: { y: [true, 's'], x: 1 }, list: [1, 2, 3] } },
  );
});

t.test('< <= > >= compare two numbers, or two strings by code point; anything else is false', async (t) => {
  table(t, [
    ['1 < 2', true],
    ['2 < 1', false],
    ['2 <= 2', true],
    ['3 > 2', true],
    ['2 >= 3', false],
    ['-1 < 0', true],
    ['1.5 >= 1.5', true],
    ['"a" < "b"', true],
    ['"abc" < "abd"', true],
    ['"ab" < "abc"', true],
    ['"b" <= "b"', true],
    ['"B" < "a"', true],
    ['"10" < "9"', true],
    ['"é" > "z"', true],
    // by code point, not by UTF-16 unit: U+E000 (one unit) comes before U+1F600 (a surrogate pair)
    ['"\\u{E000}" < "\\u{1F600}"', true],
    ['"\\u{FFFF}" < "\\u{10000}"', true],
    ['"\\u{1F600}" > "\\u{FF5E}"', true],
    ['"\\u{1F600}" <= "\\u{FF5E}"', false],
    // mixed kinds: false, both ways
    ['1 < "2"', false],
    ['1 >= "2"', false],
    ['"1" < 2', false],
    ['"1" >= 2', false],
    ['null < 1', false],
    ['null >= 1', false],
    ['null <= null', false],
    ['null >= null', false],
    ['true > false', false],
    ['true >= true', false],
    ['[1] < [2]', false],
    ['[1] >= [1]', false],
    ['{} <= {}', false],
    ['payload.missing > 0', false],
    ['payload.missing < 0', false],
  ]);
});

t.test('matches: a string topic and an MQTT topic filter', async (t) => {
  table(
    t,
    [
      ['"devices/a/telemetry" matches "devices/+/telemetry"', true],
      ['"devices/a/b/telemetry" matches "devices/+/telemetry"', false],
      ['"devices/a/telemetry" matches "devices/a/telemetry"', true],
      ['"devices/a/telemetry" matches "devices/b/telemetry"', false],
      ['"devices/a/debug/x/y" matches "devices/+/debug/#"', true],
      ['"devices/a/debug" matches "devices/+/debug/#"', true],
      ['"devices/a" matches "devices/+/debug/#"', false],
      ['"a/b" matches "#"', true],
      ['"a/b" matches "+/+"', true],
      ['"a/b/c" matches "+/+"', false],
      ['"$SYS/x" matches "#"', false],
      ['"$SYS/x" matches "+/x"', false],
      ['"$SYS/x" matches "$SYS/#"', true],
      ['5 matches "#"', false],
      ['"a" matches 5', false],
      ['null matches "#"', false],
      ['["a"] matches "#"', false],
      ['msg.topic matches "sensors/+/temp"', true],
      ['msg.topic matches "sensors/#"', true],
      ['msg.topic matches "sensors/+"', false],
    ],
    { topic: 'sensors/s1/temp' },
  );
});

t.test('contains and in: substrings, elements, own keys', async (t) => {
  table(
    t,
    [
      ['"hello" contains "ell"', true],
      ['"hello" contains "xyz"', false],
      ['"hello" contains ""', true],
      ['"hello" contains "Hello"', false],
      ['"a1" contains 1', false],
      ['[1, 2, 3] contains 2', true],
      ['[1, 2, 3] contains 4', false],
      ['[1, 2] contains "2"', false],
      ['[[1, 2], { a: 1 }] contains [1, 2]', true],
      ['[{ a: 1, b: 2 }] contains { b: 2, a: 1 }', true],
      ['[[1, 2]] contains [2, 1]', false],
      ['[null] contains null', true],
      ['[] contains null', false],
      ['{ a: 1 } contains "a"', true],
      ['{ a: 1 } contains "b"', false],
      ['{ a: 1 } contains 1', false],
      ['{ "1": true } contains 1', false],
      ['payload.o contains "toString"', false],
      ['payload.o contains "k"', true],
      ['5 contains 5', false],
      ['null contains null', false],
      ['true contains true', false],
      ['"ell" in "hello"', true],
      ['"xyz" in "hello"', false],
      ['2 in [1, 2]', true],
      ['"2" in [1, 2]', false],
      ['{ x: [1] } in [{ x: [1] }]', true],
      ['"a" in { a: 1 }', true],
      ['"b" in { a: 1 }', false],
      ['1 in "123"', false],
      ['"x" in null', false],
      ['"k" in payload.o', true],
      ['payload.tag in ["red", "green"]', true],
      ['payload.missing in ["red", "green"]', false],
    ],
    { payload: { o: { k: 0 }, tag: 'green' } },
  );
});

t.test('precedence and grouping', async (t) => {
  table(t, [
    ['not 1 == 2', true],
    ['not true == false', true],
    ['1 + 1 == 2 and 2 * 2 == 4', true],
    ['true or false and false', true],
    ['(true or false) and false', false],
    ['not true or true', true],
    ['not (true or true)', false],
    ['true && false || true', true],
    ['!true', false],
    ['!!true', true],
    ['! false && true', true],
    ['1 + 2 < 4', true],
    ['-2 * -3', 6],
    ['2 * 3 + 4 * 5', 26],
    ['"a" + "b" == "ab"', true],
    ['[1, 2][1] + 1', 3],
    ['{ a: { b: 5 } }.a.b', 5],
  ]);
  const chained = 'rule r when 1 < 2 < 3 then drop() end';
  syntaxError(t, chained, posOf(chained, '< 3'), /expected "then" after the condition, found "<"/);
});

t.test('truthiness: only true counts', async (t) => {
  const cases: Array<[string, boolean]> = [
    ['true', true],
    ['false', false],
    ['null', false],
    ['1', false],
    ['0', false],
    ['"true"', false],
    ['"x"', false],
    ['""', false],
    ['[true]', false],
    ['[]', false],
    ['{}', false],
    ['payload.yes', true],
    ['payload.one', false],
    ['payload.str', false],
    ['payload.missing', false],
    ['not payload.missing', true],
    ['payload.yes and payload.one', false],
    ['payload.one or payload.yes', true],
    ['payload.yes and 1 == 1', true],
  ];
  for (const [cond, expected] of cases) {
    t.equal(
      fires(cond, { payload: { yes: true, one: 1, str: 'true' } }),
      expected,
      `when ${cond}: ${expected ? 'fires' : 'does not fire'}`,
    );
  }
  table(t, [
    ['not null', true],
    ['not 0', true],
    ['not 1', true],
    ['not "x"', true],
    ['not []', true],
    ['not false', true],
    ['not true', false],
    ['not not 1', false],
    ['not not true', true],
    ['1 and true', false],
    ['true and 1', false],
    ['true and true', true],
    ['1 or true', true],
    ['1 or "x"', false],
    ['null or null', false],
    ['"true" or false', false],
    ['1 and 2', false],
    ['1 || 2', false],
    ['!null', true],
  ]);
});

t.test('missing data is null, never an error', async (t) => {
  const payload = { s: 'text', n: 7, list: [10, 20, 30], o: { inner: { deep: 'x' }, 'with space': 1 }, nil: null, t: true };
  table(
    t,
    [
      ['payload.nope', null],
      ['payload.nope.deeper.still', null],
      ['payload.nil', null],
      ['payload.nil.x', null],
      ['payload.s.length', null],
      ['payload.s.x', null],
      ['payload.n.x', null],
      ['payload.t.x', null],
      ['payload.list.x', null],
      ['payload.list.length', null],
      ['payload.list[0]', 10],
      ['payload.list[2]', 30],
      ['payload.list[1 + 1]', 30],
      ['payload.list[3]', null],
      ['payload.list[-1]', null],
      ['payload.list[0.5]', null],
      ['payload.list[1e300]', null],
      ['payload.list["0"]', null],
      ['payload.list[null]', null],
      ['payload.list[true]', null],
      ['payload[0]', null],
      ['payload.s[0]', null],
      ['payload["s"]', 'text'],
      ['payload.o["with space"]', 1],
      ['payload.o.inner.deep', 'x'],
      ['payload["o"]["inner"]["deep"]', 'x'],
      ['payload.o[payload.s]', null],
      ['payload.o[1]', null],
      ['null.x', null],
      ['null[0]', null],
      ['"str".x', null],
      ['5.x', null],
      ['[1, 2].x', null],
      ['payload.nope == null', true],
      ['payload.nope + 1', null],
      ['len(payload.nope)', null],
    ],
    { payload },
  );
  // a rule that reads what is not there simply does not fire: no error
  const h = load('rule r when payload.a.b.c > 1 then drop() end');
  const out = h.send({ topic: 'x/y', payload: { a: 'flat' } });
  t.same(out.fired, []);
  t.same(out.ev.errors, [], 'no runtime error for missing data');
});

t.test('functions', async (t) => {
  table(
    t,
    [
      ['abs(-3)', 3],
      ['abs(2.5)', 2.5],
      ['abs(0)', 0],
      ['abs("x")', null],
      ['abs(null)', null],
      ['abs([1])', null],
      ['round(2.5)', 3],
      ['round(-2.5)', -3],
      ['round(0.5)', 1],
      ['round(-0.5)', -1],
      ['round(2.4)', 2],
      ['round(-2.6)', -3],
      ['round(7)', 7],
      ['round(1.005, 2)', 1.01],
      ['round(2.675, 2)', 2.68],
      ['round(-1.25, 1)', -1.3],
      ['round(1.25, 1)', 1.3],
      ['round(1234.5678, 2)', 1234.57],
      ['round(1234.5678, 0)', 1235],
      ['round(35.3333333, 2)', 35.33],
      ['round("2.5")', null],
      ['round(null)', null],
      ['round(2.5, "1")', null],
      ['round(2.5, null)', null],
      ['floor(2.7)', 2],
      ['floor(-2.1)', -3],
      ['floor("1")', null],
      ['ceil(2.1)', 3],
      ['ceil(-2.7)', -2],
      ['ceil(null)', null],
      ['min(3, 5)', 3],
      ['min(-1, -2)', -2],
      ['max(3, 5)', 5],
      ['max(2.5, 2.4)', 2.5],
      ['min(-1, "0")', null],
      ['max(null, 1)', null],
      ['max("a", "b")', null],
      ['len("abc")', 3],
      ['len("")', 0],
      ['len([1, 2, 3, 4])', 4],
      ['len([])', 0],
      ['len({ a: 1 })', null],
      ['len(5)', null],
      ['len(null)', null],
      ['len(true)', null],
      ['lower("AbC")', 'abc'],
      ['upper("AbC")', 'ABC'],
      ['lower(1)', null],
      ['upper(null)', null],
      ['upper(["a"])', null],
      ['trim("  a b \\t\\n")', 'a b'],
      ['trim("x")', 'x'],
      ['trim(5)', null],
      ['startsWith("devices/a", "devices/")', true],
      ['startsWith("a", "b")', false],
      ['startsWith(1, "1")', null],
      ['startsWith("1", 1)', null],
      ['endsWith("file.rules", ".rules")', true],
      ['endsWith("file.rules", ".txt")', false],
      ['endsWith("x", null)', null],
      ['number("42")', 42],
      ['number("-1.5e2")', -150],
      ['number(" 7 ")', 7],
      ['number(3)', 3],
      ['number(true)', 1],
      ['number(false)', 0],
      ['number("abc")', null],
      ['number("")', null],
      ['number("12abc")', null],
      ['number(null)', null],
      ['number([1])', null],
      ['number({})', null],
      ['string(42)', '42'],
      ['string(1.5)', '1.5'],
      ['string(-0.25)', '-0.25'],
      ['string(true)', 'true'],
      ['string("s")', 's'],
      ['string(null)', null],
      ['bool(true)', true],
      ['bool(false)', false],
      ['bool("true")', true],
      ['bool("false")', false],
      ['bool(1)', true],
      ['bool(0)', false],
      ['bool("yes")', null],
      ['bool(null)', null],
      ['bool([])', null],
      ['topicLevel("devices/d1/telemetry", 0)', 'devices'],
      ['topicLevel("devices/d1/telemetry", 1)', 'd1'],
      ['topicLevel("devices/d1/telemetry", 2)', 'telemetry'],
      ['topicLevel("devices/d1/telemetry", 3)', null],
      ['topicLevel("devices/d1/telemetry", -1)', 'telemetry'],
      ['topicLevel("devices/d1/telemetry", -2)', 'd1'],
      ['topicLevel("devices/d1/telemetry", -3)', 'devices'],
      ['topicLevel("devices/d1/telemetry", -4)', null],
      ['topicLevel("devices/d1/telemetry", 1.5)', null],
      ['topicLevel("devices/d1/telemetry", "1")', null],
      ['topicLevel(5, 0)', null],
      ['topicLevel(null, 0)', null],
      ['topicLevel(msg.topic, 1)', 'd9'],
      ['topicLevel(msg.topic, -1)', 'status'],
    ],
    { topic: 'devices/d9/status' },
  );
  // now() is the current message's ts, so that a replay is reproducible
  const h = load('rule clock when true then log("info", { now: now(), ts: msg.ts }) end');
  t.same(h.send({ topic: 'a/b', ts: 1_700_000_000_123 }).actions[0]!.args.text, { now: 1_700_000_000_123, ts: 1_700_000_000_123 });
  t.same(h.send({ topic: 'a/b', ts: 5 }).actions[0]!.args.text, { now: 5, ts: 5 }, 'now() follows msg.ts, not the wall clock');
});

t.test('roots: msg, payload, device, edge', async (t) => {
  const input = {
    topic: 'devices/d4/telemetry',
    id: 'MSG-ID-1',
    ts: 4242,
    deviceId: 'd4',
    protocol: 'coap' as const,
    qos: 1 as const,
    retain: true,
    props: { k: 'v' },
    hops: 2,
    parentId: 'PARENT-1',
    payload: { temp: 21.5 },
  };
  table(
    t,
    [
      ['msg.id', 'MSG-ID-1'],
      ['msg.ts', 4242],
      ['msg.topic', 'devices/d4/telemetry'],
      ['msg.deviceId', 'd4'],
      ['msg.protocol', 'coap'],
      ['msg.qos', 1],
      ['msg.retain', true],
      ['msg.props', { k: 'v' }],
      ['msg.props.k', 'v'],
      ['msg.props.nope', null],
      ['msg.hops', 2],
      ['msg.parentId', 'PARENT-1'],
      ['msg.nope', null],
      ['payload', { temp: 21.5 }],
      ['payload.temp', 21.5],
      ['device', null],
      ['device.id', null],
      ['device == null', true],
      ['edge.id', 'test-edge'],
      ['edge.uplinkConnected', true],
    ],
    input,
  );
  t.equal(valueOf('msg.parentId', { topic: 'a/b' }), null, 'parentId is null for a message with no parent');
  t.equal(valueOf('msg.protocol', { topic: 'a/b' }), 'mqtt');
  t.same(
    valueOf('[device.id, device.model]', { topic: 'a/b', device: { id: 'd1', model: 'pump-3' } }),
    ['d1', 'pump-3'],
    'a known device: id and attributes',
  );
  t.same(valueOf('edge.uplinkConnected', { topic: 'a/b', edge: { id: 'e', uplinkConnected: false } }), false);
  // the payload: JSON value, the string for text, null for binary and for JSON that does not parse
  t.same(valueOf('payload', { topic: 'a/b', payload: [1, 'two', null] }), [1, 'two', null]);
  t.same(valueOf('payload', { topic: 'a/b', payload: 3.25 }), 3.25);
  t.same(valueOf('payload', { topic: 'a/b', text: 'hello there' }), 'hello there');
  t.same(valueOf('payload == "hello"', { topic: 'a/b', text: 'hello' }), true);
  t.same(valueOf('payload', { topic: 'a/b', binary: Uint8Array.from([0, 1, 2]) }), null);
  t.same(valueOf('payload', { topic: 'a/b', json: '{"broken": ' }), null);
});
