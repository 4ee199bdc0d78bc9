// Local delivery across protocols, on its own: every sink gets each message once, one failing sink
// does not keep it from the others, and retained messages live in one store every adapter reads.
import t from 'tap';
import pino from 'pino';
import type { EdgeMessage } from '../src/core/message.js';
import { LocalDelivery } from '../src/pipeline/local.js';

function message(topic: string, payload: string, retain = false): EdgeMessage {
  return {
    id: `id-${topic}-${payload}`,
    ts: 1,
    deviceId: 'd1',
    protocol: 'mqtt',
    topic,
    payload: Buffer.from(payload),
    contentType: 'text',
    qos: 1,
    retain,
    props: {},
    hops: 0,
  };
}

t.test('every registered sink gets each message once, even when another sink throws', async (t) => {
  const counted: string[] = [];
  const local = new LocalDelivery({ delivered: (p) => counted.push(p) }, pino({ level: 'silent' }));
  const a: string[] = [];
  const b: string[] = [];
  local.register({ deliver: (m) => a.push(m.topic) });
  local.register({
    deliver: () => {
      throw new Error('this protocol is broken');
    },
  });
  local.register({ deliver: (m) => b.push(m.topic) });
  local.deliver(message('devices/d1/x', '1'));
  local.deliver(message('devices/d1/y', '2'));
  t.same(a, ['devices/d1/x', 'devices/d1/y']);
  t.same(b, ['devices/d1/x', 'devices/d1/y'], 'the sink after the broken one still gets them');
  t.same(counted, ['mqtt', 'mqtt'], 'counted once per message, by the protocol it came from');
});

t.test('retained messages: one per topic, an empty payload clears it, wildcards find them, bytes are counted', async (t) => {
  const local = new LocalDelivery({ delivered: () => {} }, pino({ level: 'silent' }));
  local.deliver(message('devices/d1/state', 'on', true));
  local.deliver(message('devices/d2/state', 'off', true));
  local.deliver(message('devices/d1/telemetry', 'not kept'));
  t.equal(local.retained.size, 2, 'only retained messages are kept');
  t.equal(local.retained.get('devices/d1/state')?.payload.toString(), 'on');
  local.deliver(message('devices/d1/state', 'off again', true));
  t.equal(local.retained.get('devices/d1/state')?.payload.toString(), 'off again', 'the last one wins');
  t.equal(local.retained.bytes, 'off again'.length + 'devices/d1/state'.length + 'off'.length + 'devices/d2/state'.length);
  t.same([...local.retained.matching('devices/+/state')].map((m) => m.topic).sort(), ['devices/d1/state', 'devices/d2/state']);
  t.same(
    [...local.retained.matching('devices/d2/state')].map((m) => m.topic),
    ['devices/d2/state'],
    'an exact topic',
  );
  t.same([...local.retained.matching('#')].length, 2);
  local.deliver(message('devices/d1/state', '', true));
  t.equal(local.retained.get('devices/d1/state'), undefined, 'an empty retained payload clears the topic [MQTT-3.3.1-10]');
  t.equal(local.retained.size, 1);
  t.equal(local.retained.bytes, 'off'.length + 'devices/d2/state'.length, 'and its bytes are given back');
});
