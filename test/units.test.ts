// Pure parts, table-driven: frame guard, PUBACK ordering, envelope, content sniffing, topics, backoff.
import t from 'tap';
import { FrameGuard } from '../src/adapters/mqtt/frame-guard.js';
import { OrderedAcks } from '../src/adapters/ordered-acks.js';
import { deriveDeviceId } from '../src/auth/service.js';
import { encodeEnvelope } from '../src/uplink/envelope.js';
import { sniffContentType } from '../src/core/content-type.js';
import { checkDeviceTopic, deviceIdOfTopic, filterTouchesReserved, topicMatches } from '../src/core/topic.js';
import { backoffDelay } from '../src/uplink/cloud.js';
import { newMessageId } from '../src/core/ids.js';

t.test('frame guard: packets up to the limit pass, one byte over is refused from the header', async (t) => {
  const publish = (len: number): Buffer => {
    const head = [0x30];
    let n = len;
    do {
      let b = n % 128;
      n = Math.floor(n / 128);
      if (n > 0) b |= 0x80;
      head.push(b);
    } while (n > 0);
    return Buffer.concat([Buffer.from(head), Buffer.alloc(len)]);
  };
  t.same(new FrameGuard(1000).scan(publish(1000)), { ok: true }, 'at the limit');
  t.match(
    new FrameGuard(1000).scan(publish(1001).subarray(0, 3)),
    { ok: false, reason: 'too_large' },
    'over the limit, known from the first 3 bytes',
  );
  const g = new FrameGuard(200);
  const stream = Buffer.concat([publish(10), publish(200), publish(0), Buffer.from([0xc0, 0x00])]); // then PINGREQ
  for (let i = 0; i < stream.length; i += 7) t.same(g.scan(stream.subarray(i, i + 7)), { ok: true }, `chunk at ${i}`);
  t.same(
    g.scan(publish(201).subarray(0, 3)),
    { ok: false, reason: 'too_large', detail: 'PUBLISH of 201 bytes exceeds the limit of 200' },
    'boundaries tracked across chunks',
  );
  t.match(
    new FrameGuard(1e9).scan(Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff])),
    { ok: false, reason: 'malformed' },
    'a fifth length byte is malformed',
  );
  t.same(new FrameGuard(1e9).scan(Buffer.from([0x30, 0xff, 0xff, 0xff, 0x7f])), { ok: true }, 'four length bytes are fine');
});

t.test('ordered acks release in reservation order whatever the completion order', async (t) => {
  const acks = new OrderedAcks();
  const out: string[] = [];
  const a = acks.reserve(() => out.push('a'));
  const b = acks.reserve(() => out.push('b'));
  const c = acks.reserve((err) => out.push(`c:${err?.message}`));
  c(new Error('refused'));
  b(null);
  t.same(out, [], 'nothing before the first completes');
  a(null);
  t.same(out, ['a', 'b', 'c:refused']);
  const d = acks.reserve(() => out.push('d'));
  d(null);
  t.same(out.at(-1), 'd', 'the queue works after it emptied');
});

t.test('envelope: fields, and payload by content type', async (t) => {
  const base = { id: newMessageId(), ts: 1700000000000, deviceId: 'd-1', topic: 'devices/d-1/t' };
  const parse = (contentType: 'json' | 'text' | 'binary' | 'cbor', payload: Buffer): Record<string, unknown> =>
    JSON.parse(encodeEnvelope({ ...base, contentType, payload }, 'pi-hall-2').toString()) as Record<string, unknown>;
  t.same(parse('json', Buffer.from(' {"a":[1,2],"s":"é"} ')), {
    ...base,
    contentType: 'json',
    payload: { a: [1, 2], s: 'é' },
    edge: 'pi-hall-2',
  });
  t.same(parse('json', Buffer.from('\ufeff{"a":1}')).payload, { a: 1 }, 'a byte order mark before JSON does not break the envelope');
  t.same(parse('text', Buffer.from('say "hi"\n')).payload, 'say "hi"\n');
  t.same(parse('binary', Buffer.from([0, 255])).payload, 'AP8=');
  t.same(parse('cbor', Buffer.from([0xa1, 0x61])).payload, 'oWE=');
  const odd = JSON.parse(
    encodeEnvelope({ ...base, deviceId: 'a"b', topic: 'x\\y', contentType: 'text', payload: Buffer.from('') }, 'e"1').toString(),
  ) as Record<string, unknown>;
  t.match(odd, { deviceId: 'a"b', topic: 'x\\y', edge: 'e"1' }, 'strings are escaped');
});

t.test('content type sniffing (MQTT has none)', async (t) => {
  const table: Array<[string | Buffer, string]> = [
    ['{"t":1}', 'json'],
    ['[1,2]', 'json'],
    ['  {"t":1}\n', 'json'],
    ['42', 'text'],
    ['"str"', 'text'],
    ['{broken', 'text'],
    ['hello', 'text'],
    ['', 'text'],
    ['\ufeff{"bom":1}', 'json'],
    [Buffer.from([0xff, 0xfe, 0x00]), 'binary'],
    [Buffer.from([0xc3, 0x28]), 'binary'],
  ];
  for (const [input, want] of table) t.equal(sniffContentType(Buffer.from(input)).contentType, want, JSON.stringify(input.toString()));
});

t.test('topics: matching, device topic checks, the reserved tree', async (t) => {
  const matches: Array<[string, string, boolean]> = [
    ['devices/+/telemetry', 'devices/p7/telemetry', true],
    ['devices/+/telemetry', 'devices/p7/x/telemetry', false],
    ['devices/#', 'devices', true],
    ['devices/#', 'devices/a/b', true],
    ['#', '$edge/x', false],
    ['+/x', '$edge/x', false],
    ['$edge/#', '$edge/x', true],
    ['a/b', 'a/b', true],
    ['a/b', 'a/b/c', false],
    ['a/+', 'a/', true],
  ];
  for (const [f, topic, want] of matches) t.equal(topicMatches(f, topic), want, `${f} ~ ${topic}`);
  t.equal(checkDeviceTopic('devices/a', 256), null);
  t.equal(checkDeviceTopic('$edge/rules', 256), 'reserved');
  // Mosquitto closes the connection of whoever forwards such a topic: one would block the uplink.
  for (const bad of ['fz/\u0001', 'a/\u007f', 'a/\u0085', 'a/\ufdd0', 'a/\uffff', 'a/\u{10ffff}'])
    t.equal(checkDeviceTopic(bad, 256), 'control', JSON.stringify(bad));
  t.equal(checkDeviceTopic('devices/é/€/😀', 256), null, 'other Unicode is a topic as any');
  t.equal(checkDeviceTopic('$edge', 256), 'reserved');
  t.equal(checkDeviceTopic('$SYS/broker/x', 256), 'reserved', 'every $ topic is reserved');
  t.equal(checkDeviceTopic('a/$b', 256), null, 'only a leading $');
  t.equal(checkDeviceTopic('x'.repeat(256), 256), null, 'at the topic limit');
  t.equal(checkDeviceTopic('x'.repeat(257), 256), 'too_long', 'one byte over');
  t.equal(checkDeviceTopic('a\u0000b', 256), 'nul');
  t.ok(filterTouchesReserved('$edge/#'));
  t.notOk(filterTouchesReserved('#'));
});

t.test('device ids', async (t) => {
  // Open mode: a valid id is kept; anything MQTT 3.1.1 allows becomes a valid id, the same every time.
  t.equal(deriveDeviceId('pump-7'), 'pump-7');
  t.equal(deriveDeviceId('x'.repeat(128)), 'x'.repeat(128));
  for (const raw of ['a b', 'x'.repeat(129), 'edge', 'weird/id+#', 'ünïcode', 'conformance test client 1']) {
    const id = deriveDeviceId(raw);
    t.match(id, /^[A-Za-z0-9_.:-]{1,128}$/, `"${raw.slice(0, 20)}" gives a valid device id (${id})`);
    t.equal(deriveDeviceId(raw), id, 'deterministically');
  }
  t.equal(deriveDeviceId('a b').slice(0, 4), 'a_b-', 'readable: the replaced characters become _');
  t.not(deriveDeviceId('a b'), deriveDeviceId('a+b'), 'two ids that differ only in replaced characters stay two devices');
  t.not(deriveDeviceId('edge'), 'edge', "the proxy's own id is never a device's");
});

t.test('the device a devices/<id>/... topic names', async (t) => {
  t.equal(deviceIdOfTopic('devices/pump-7/telemetry'), 'pump-7');
  t.equal(deviceIdOfTopic('devices/pump-7'), 'pump-7');
  t.equal(deviceIdOfTopic('devices/'), null, 'no id');
  t.equal(deviceIdOfTopic('devices/edge/x'), null, "the proxy's own id is nobody's");
  t.equal(deviceIdOfTopic('devices/a b/x'), null, 'not a valid device id');
  t.equal(deviceIdOfTopic('sensors/pump-7/x'), null, 'only the devices/ convention names a device');
});

t.test('ULIDs are monotonic within one millisecond', async (t) => {
  const ids = Array.from({ length: 1000 }, () => newMessageId(1700000000000));
  t.same([...ids].sort(), ids);
  t.equal(new Set(ids).size, 1000);
});

t.test('reconnect backoff grows from 1 s to 60 s with jitter', async (t) => {
  t.equal(
    backoffDelay(0, () => 0),
    1000,
    'never below 1 s',
  );
  t.equal(
    backoffDelay(0, () => 1),
    2000,
    'the first retry is already spread over 1 to 2 s',
  );
  t.equal(
    backoffDelay(1, () => 1),
    4000,
  );
  t.equal(
    backoffDelay(3, () => 1),
    16_000,
  );
  t.equal(
    backoffDelay(10, () => 1),
    60_000,
    'capped at 60 s',
  );
  t.equal(
    backoffDelay(100, () => 0),
    1000,
    'full jitter: anywhere from 1 s',
  );
  const spread = new Set(Array.from({ length: 50 }, () => backoffDelay(0)));
  t.ok(spread.size > 10, 'a fleet reconnecting at once does not do so in step');
});
