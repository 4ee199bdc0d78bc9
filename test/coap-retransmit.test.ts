// Retransmissions of a confirmable publish (RFC 7252 §4.5; protocols.md: "not processed twice, also
// while the original is still being processed"), proven with the commit held up for a known time.
// The proxy commits every publish to its SQLite cache before it answers; the test holds that
// database's write lock from another connection (BEGIN IMMEDIATE, as a backup tool or an operator's
// sqlite3 shell would), so the proxy's writer waits (busy_timeout) and the publish stays in hand for
// exactly as long as the test says. The same datagram (same message id, same source port) is sent
// again while it is in hand, and after its answer:
// - held 300 ms: the original and the copy sent 50 ms later are both answered only after the lock
//   is let go (so the copy arrived while the original was in hand), with the same 2.04 bytes;
// - held 1.5 s: past 500 ms the proxy sends an empty ACK (a separate response follows), to the
//   original and to the copy that waited; a copy sent at 800 ms, still in hand, gets the same empty
//   ACK; the 2.04 comes once, as a confirmable separate response, after the lock is let go; a copy
//   sent after it gets the empty ACK again and no second 2.04.
// Each message is then once in the cache (the cloud is down while they are published) and, once
// the cloud is back, once at the cloud.
import t from 'tap';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { cloudWithChecker } from './helpers/mosquitto.js';
import { startProxy } from './helpers/proxy.js';
import { eventually, sleep } from './helpers/ports.js';
import { CoapClient, coapPort, codeString, decodeCoap, encodeCoap, uriOptions, type Received } from './helpers/coap.js';

interface Envelope {
  topic: string;
  payload: unknown;
}

t.test('a retransmission in hand and after its answer is processed once and answered the same', async (t) => {
  const dir = t.testdir();
  const { cloud, up } = await cloudWithChecker(t, dir);
  await cloud.stop(); // offline: what is committed stays in the cache, where it can be counted
  const cachePath = join(dir, 'cache.db');
  const proxy = await startProxy(dir, { uplink: { url: cloud.url }, cache: { path: cachePath } });
  t.teardown(() => proxy.stop());
  const client = await CoapClient.open(coapPort(proxy));
  t.teardown(() => client.close());
  const db = new Database(cachePath, { fileMustExist: true });
  t.teardown(() => db.close());
  db.pragma('busy_timeout = 5000');
  const rows = db.prepare<[string], { n: number }>('SELECT count(*) AS n FROM messages WHERE topic = ?');
  const dup0 = await proxy.metric('edge_coap_exchanges_total', 'event="duplicate"');
  const separate0 = await proxy.metric('edge_coap_exchanges_total', 'event="separate_response"');

  /** A CON publish; the same bytes are sent for every copy. */
  const publish = (topic: string, payload: string): { data: Buffer; mid: number; token: Buffer } => {
    const mid = client.nextMid();
    const token = Buffer.from([0x5e, mid >> 8, mid & 0xff, 0x01]);
    client.expect(token);
    return {
      data: encodeCoap({ type: 'con', code: 'POST', mid, token, options: uriOptions(`ps/${topic}?d=rt-1`), payload: Buffer.from(payload) }),
      mid,
      token,
    };
  };
  /** Holds the cache's write lock for `ms`: the proxy's commit waits that long. */
  const holdCommit = (ms: number): number => {
    db.exec('BEGIN IMMEDIATE');
    const since = Date.now();
    setTimeout(() => db.exec('ROLLBACK'), ms);
    return since;
  };

  await t.test('held 300 ms: both answered after the commit, with the same piggybacked 2.04', async (t) => {
    const p = publish('devices/rt-1/short', '{"n":1}');
    const since = holdCommit(300);
    client.send(p.data);
    await sleep(50);
    client.send(p.data);
    const answers = await client.waitAnswers(p.mid, 2);
    await sleep(200);
    t.equal(client.answersTo(p.mid).length, 2, 'one answer per copy');
    const [a, b] = answers as [Received, Received];
    t.same(a.raw, b.raw, 'byte-identical answers');
    t.match(decodeCoap(a.raw), { type: 'ack', mid: p.mid }, 'piggybacked on the ACK');
    t.equal(codeString(a.msg!.code), '2.04');
    t.same(a.msg!.token, p.token, 'with the request token');
    t.ok(
      a.at - since >= 290 && b.at - since >= 290,
      `neither answered before the lock was let go (${a.at - since} and ${b.at - since} ms)`,
    );
  });

  await t.test('held 1.5 s: empty ACKs while in hand, one separate 2.04, the same empty ACK afterwards', async (t) => {
    const p = publish('devices/rt-1/long', '{"n":2}');
    const since = holdCommit(1_500);
    client.send(p.data);
    await sleep(100);
    client.send(p.data); // waits with the original
    await client.waitAnswers(p.mid, 2, 2_000);
    const early = client.answersTo(p.mid);
    t.ok(
      early.every((r) => r.at - since >= 450 && r.at - since < 1_400),
      'both answered when the separate response began, before the commit',
    );
    await sleep(800 - (Date.now() - since));
    client.send(p.data); // still in hand: answered with the same empty ACK at once
    await client.waitAnswers(p.mid, 3, 500);
    const separateOf = (): Received[] => client.received.filter((r) => r.msg?.type === 'con' && r.msg.token.equals(p.token));
    t.equal(separateOf().length, 0, 'no 2.04 before the commit');
    await eventually('the separate response', () => separateOf().length > 0, 5_000);
    const sep = separateOf()[0]!;
    t.ok(sep.at - since >= 1_490, `the 2.04 came after the commit (${sep.at - since} ms)`);
    t.equal(codeString(sep.msg!.code), '2.04', 'a confirmable 2.04 with the request token');
    client.send(p.data); // after the answer: the empty ACK from memory
    await client.waitAnswers(p.mid, 4, 2_000);
    await sleep(3_000); // long enough for a retransmitted or second separate response to show
    const acks = client.answersTo(p.mid);
    t.equal(acks.length, 4, 'one ACK-layer answer per copy');
    t.ok(
      acks.every((r) => r.raw.equals(acks[0]!.raw)),
      'all byte-identical',
    );
    t.same(acks[0]!.raw, Buffer.from([0x60, 0x00, p.mid >> 8, p.mid & 0xff]), 'the empty ACK of the original');
    t.equal(separateOf().length, 1, 'one separate response, not retransmitted: the client acknowledged it');
    t.equal(await proxy.metric('edge_coap_exchanges_total', 'event="separate_response"'), separate0 + 1, 'one separate response counted');
  });

  await t.test('each message once in the cache, then once at the cloud', async (t) => {
    t.equal(rows.get('devices/rt-1/short')!.n, 1, 'devices/rt-1/short: one row');
    t.equal(rows.get('devices/rt-1/long')!.n, 1, 'devices/rt-1/long: one row');
    t.equal(await proxy.metric('edge_coap_exchanges_total', 'event="duplicate"'), dup0 + 4, 'four duplicates counted');
    await cloud.start();
    const topics = (): string[] =>
      up
        .json<Envelope>()
        .map((e) => e.topic)
        .filter((x) => x.startsWith('devices/rt-1/'));
    await eventually('both at the cloud', () => topics().length >= 2, 20_000);
    await sleep(1_000);
    t.same(topics().sort(), ['devices/rt-1/long', 'devices/rt-1/short'], 'each once at the cloud');
  });
});
