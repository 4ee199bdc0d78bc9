// CoAP block-wise uploads (Block1, RFC 7959): the reassembly module on its own with explicit times,
// then the built proxy as a real process in token mode, driven by libcoap's coap-client-notls,
// node-coap's client and a raw UDP client on coap-packet, with a real Mosquitto as the cloud.
import t from 'tap';
import { createSocket, type Socket } from 'node:dgram';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { generate, parse, type ParsedPacket } from 'coap-packet';
import coap, { type IncomingMessage } from 'coap';
import { Uploads, UPLOAD_IDLE_MS, type UploadBlock } from '../src/adapters/coap/block1.js';
import { parseBlock } from '../src/adapters/coap/codec.js';
import { cloudFor } from './helpers/mosquitto.js';
import { coapPort } from './helpers/coap.js';
import { startProxy } from './helpers/proxy.js';
import { collect, connectClient, runTool } from './helpers/clients.js';
import { eventually, sleep } from './helpers/ports.js';
import { writeRegistry } from './helpers/registry.js';

const COAP_CLIENT = '/usr/bin/coap-client-notls';
const MAX_PAYLOAD = 256 * 1024; // limits.maxPayloadBytes by default

/** Text whose every 16 bytes say where they belong, so a block out of place shows. */
function pattern(bytes: number, tag: string): string {
  let s = '';
  for (let i = 0; s.length < bytes; i++) s += `${tag}${String(i).padStart(14 - tag.length, '0')};\n`;
  return s.slice(0, bytes);
}

function optionValue(p: ParsedPacket, name: string): number | null {
  const o = p.options.find((x) => x.name === name);
  if (!o) return null;
  let n = 0;
  for (const b of o.value) n = n * 256 + b;
  return n;
}

function block1Of(p: ParsedPacket): { num: number; more: boolean; szx: number } | null {
  const v = optionValue(p, 'Block1');
  return v === null ? null : { num: v >>> 4, more: (v & 8) !== 0, szx: v & 7 };
}

interface BlockRequest {
  path: string;
  query: string[];
  num: number;
  more: boolean;
  szx?: number;
  payload: Buffer | string;
  size1?: number;
  token?: Buffer;
  mid?: number;
  format?: number;
  /** a Block1 value as it is, for malformed ones */
  rawBlock1?: Buffer;
}

/** A CoAP client on a bare UDP socket that sends one block per request and reads the answers. */
class BlockClient {
  readonly received: Array<{ raw: Buffer; packet: ParsedPacket }> = [];
  private mid = Math.floor(Math.random() * 60_000);
  /** answer() calls waiting for a datagram: woken by each one, not by polling */
  private readonly waiters = new Set<() => void>();
  private constructor(
    readonly socket: Socket,
    readonly port: number,
  ) {
    socket.on('message', (raw) => {
      try {
        this.received.push({ raw, packet: parse(raw) });
      } catch {
        return; // not for these tests
      }
      for (const w of this.waiters) w();
    });
  }

  static async open(t: { teardown(fn: () => unknown): void }, port: number): Promise<BlockClient> {
    const socket = createSocket('udp4');
    await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', () => resolve()));
    const c = new BlockClient(socket, port);
    t.teardown(() => socket.close());
    return c;
  }

  block(r: BlockRequest): Buffer {
    const szx = r.szx ?? 6;
    const v = r.num * 16 + (r.more ? 8 : 0) + szx;
    const b1 = r.rawBlock1 ?? Buffer.from(v < 0x100 ? [v] : v < 0x10000 ? [v >> 8, v & 0xff] : [v >> 16, (v >> 8) & 0xff, v & 0xff]);
    const options = [
      ...r.path.split('/').map((p) => ({ name: 'Uri-Path' as const, value: Buffer.from(p) })),
      ...(r.format !== undefined ? [{ name: 'Content-Format' as const, value: Buffer.from([r.format]) }] : []),
      ...r.query.map((q) => ({ name: 'Uri-Query' as const, value: Buffer.from(q) })),
      { name: 'Block1' as const, value: b1 },
      ...(r.size1 !== undefined ? [{ name: 'Size1' as const, value: u32(r.size1) }] : []),
    ];
    return generate(
      {
        code: '0.02',
        messageId: r.mid ?? this.nextMid(),
        token: r.token ?? randomBytes(4),
        options,
        confirmable: true,
        payload: Buffer.from(r.payload),
      },
      65_000,
    );
  }

  nextMid(): number {
    return ++this.mid & 0xffff;
  }

  answersTo(mid: number): Array<{ raw: Buffer; packet: ParsedPacket }> {
    return this.received.filter((r) => r.packet.messageId === mid && r.packet.ack);
  }

  async answer(data: Buffer): Promise<ParsedPacket> {
    const mid = data.readUInt16BE(2);
    const before = this.answersTo(mid).length;
    this.socket.send(data, this.port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => {
      const done = (): void => {
        if (this.answersTo(mid).length <= before) return;
        clearTimeout(timer);
        this.waiters.delete(done);
        resolve();
      };
      const timer = setTimeout(() => {
        this.waiters.delete(done);
        reject(new Error(`no answer to message ${mid} within 5 s`));
      }, 5_000);
      this.waiters.add(done);
    });
    return this.answersTo(mid)[before]!.packet;
  }
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  let i = 0;
  while (i < 3 && b[i] === 0) i++;
  return b.subarray(i);
}

interface Envelope {
  topic: string;
  deviceId: string;
  contentType: string;
  payload: unknown;
}

t.test('the reassembly module: order, size changes, idle expiry, the byte cap, the bound per endpoint', async (t) => {
  const events = { evicted: 0, expired: 0 };
  const count = { evicted: () => events.evicted++, expired: () => events.expired++ };
  const block = (key: string, num: number, more: boolean, payload: Buffer, szx = 6, endpoint = 'e|1'): UploadBlock => ({
    endpoint,
    key,
    block: { num, more, szx, size: 1 << (szx + 4) },
    payload,
    size1: null,
    contentFormat: null,
  });

  await t.test('blocks in order, the block size shrinking on the way; out of order changes nothing', async (t) => {
    const u = new Uploads({ maxPayloadBytes: 10_000 }, count);
    const data = randomBytes(1024 + 512 + 512 + 100);
    t.match(u.block(block('a', 0, true, data.subarray(0, 1024)), 0), { kind: 'continue' });
    t.match(u.block(block('a', 3, true, data.subarray(1024, 1536), 5), 1), { kind: 'incomplete' }, 'byte 1536 is not next');
    t.match(u.block(block('a', 2, true, data.subarray(1024, 1536), 5), 2), { kind: 'continue' }, 'block 2 of 512 = byte 1024');
    t.match(u.block(block('a', 3, true, data.subarray(1536, 2048), 5), 3), { kind: 'continue' });
    const done = u.block(block('a', 4, false, data.subarray(2048), 5), 4);
    t.equal(done.kind, 'complete');
    t.same(done.kind === 'complete' && done.payload, data, 'the whole payload, in order');
    t.equal(u.size, 0, 'nothing held once complete');
    t.equal(u.bytes, 0);
    t.match(u.block(block('a', 1, true, Buffer.alloc(1024)), 5), { kind: 'incomplete' }, 'no upload to continue');
    t.match(u.block(block('a', 0, true, Buffer.alloc(1000)), 6), { kind: 'bad' }, 'a block with more to follow is the block size');
  });

  await t.test('forgotten after its idle time, not before', async (t) => {
    const u = new Uploads({ maxPayloadBytes: 10_000 }, count);
    const before = events.expired;
    u.block(block('idle', 0, true, Buffer.alloc(1024)), 1_000);
    u.block(block('busy', 0, true, Buffer.alloc(1024)), 1_000);
    u.block(block('busy', 1, true, Buffer.alloc(1024)), 1_000 + UPLOAD_IDLE_MS - 1);
    u.expire(1_000 + UPLOAD_IDLE_MS - 1);
    t.equal(u.size, 2, 'both still there just before the idle time');
    u.expire(1_000 + UPLOAD_IDLE_MS);
    t.equal(u.size, 1, 'the idle one forgotten');
    t.equal(events.expired, before + 1, 'counted');
    t.match(u.block(block('idle', 1, true, Buffer.alloc(1024)), 1_000 + UPLOAD_IDLE_MS), { kind: 'incomplete' });
    t.match(u.block(block('busy', 2, false, Buffer.alloc(10)), 1_000 + UPLOAD_IDLE_MS), { kind: 'complete' }, 'the busy one goes on');
  });

  await t.test('the byte cap holds over many uploads from many endpoints', async (t) => {
    const cap = 64 * 1024;
    const u = new Uploads({ maxPayloadBytes: 16 * 1024, maxBytes: cap }, count);
    const before = events.evicted;
    let highest = 0;
    // 40 uploads from 40 endpoints, block by block in turn: far more than the cap holds.
    for (let num = 0; num < 12; num++) {
      for (let i = 0; i < 40; i++) {
        u.block(block(`k${i}`, num, true, Buffer.alloc(1024, i), 6, `e|${i}`), num * 40 + i);
        highest = Math.max(highest, u.bytes);
      }
    }
    t.ok(highest <= cap, `never over the cap (${highest} <= ${cap})`);
    t.ok(events.evicted > before, 'uploads were dropped to stay under it');
    // The most recent stays: a new upload past the cap pushes out the one idle longest.
    u.block(block('late', 0, true, Buffer.alloc(1024), 6, 'e|late'), 10_000);
    t.ok(u.bytes <= cap, 'a new upload past the cap is taken, still under it');
    t.match(u.block(block('late', 1, false, Buffer.alloc(5), 6, 'e|late'), 10_001), { kind: 'complete' });
  });

  await t.test('past the cap the upload idle the longest goes, not the oldest', async (t) => {
    // Each 16-byte-block upload here holds 272 bytes with its bookkeeping: two fit under 600.
    const u = new Uploads({ maxPayloadBytes: 500, maxBytes: 600 }, count);
    const before = events.evicted;
    u.block(block('a', 0, true, Buffer.alloc(16), 0, 'e|a'), 0);
    u.block(block('b', 0, true, Buffer.alloc(16), 0, 'e|b'), 1);
    u.block(block('a', 1, true, Buffer.alloc(16), 0, 'e|a'), 2);
    t.equal(events.evicted, before);
    u.block(block('c', 0, true, Buffer.alloc(16), 0, 'e|c'), 3);
    t.equal(events.evicted, before + 1);
    t.match(u.block(block('b', 1, false, Buffer.alloc(1), 0, 'e|b'), 4), { kind: 'incomplete' }, 'b, idle since 1, went');
    t.match(u.block(block('a', 2, false, Buffer.alloc(1), 0, 'e|a'), 5), { kind: 'complete' }, 'a, started first, stayed');
  });

  await t.test("at most 4 uploads per endpoint: a fifth pushes out that endpoint's oldest", async (t) => {
    const u = new Uploads({ maxPayloadBytes: 10_000 }, count);
    const before = events.evicted;
    for (let i = 0; i < 5; i++) u.block(block(`p${i}`, 0, true, Buffer.alloc(16), 0), i);
    u.block(block('other', 0, true, Buffer.alloc(16), 0, 'e|2'), 9);
    t.equal(u.size, 5, 'four from the busy endpoint, one from the other');
    t.equal(events.evicted, before + 1);
    t.match(u.block(block('p0', 1, false, Buffer.alloc(1), 0), 10), { kind: 'incomplete' }, 'the oldest was dropped');
    t.match(u.block(block('p1', 1, false, Buffer.alloc(1), 0), 11), { kind: 'complete' });
  });

  await t.test('Size1 or the running total over the limit: too large, and the upload forgotten', async (t) => {
    const u = new Uploads({ maxPayloadBytes: 2048 }, count);
    t.match(u.block({ ...block('s', 0, true, Buffer.alloc(1024)), size1: 2049 }, 0), { kind: 'too_large', size: 2049 });
    t.equal(u.size, 0);
    t.match(u.block(block('r', 0, true, Buffer.alloc(1024)), 0), { kind: 'continue' });
    t.match(u.block(block('r', 1, true, Buffer.alloc(1024)), 0), { kind: 'continue' }, '2048 bytes: at the limit');
    t.match(u.block(block('r', 2, false, Buffer.alloc(1)), 0), { kind: 'too_large', size: null }, '2049 bytes: over it');
    t.equal(u.size, 0);
  });

  await t.test('malformed Block1 values (RFC 7959 §2.2)', async (t) => {
    t.type(parseBlock(Buffer.from([0x0f])), 'string', 'SZX 7 is reserved');
    t.type(parseBlock(Buffer.from([0, 0, 0, 0x0e])), 'string', 'more than 3 bytes (requestOf makes the option a bad one before this)');
    t.same(parseBlock(Buffer.alloc(0)), { num: 0, more: false, szx: 0, size: 16 }, 'empty is 0');
    t.same(parseBlock(Buffer.from([0xff, 0xff, 0xfe])), { num: 0xfffff, more: true, szx: 6, size: 1024 });
  });
});

t.test('token mode, with a cloud', async (t) => {
  const dir = t.testdir();
  const { url: cloudUrl, up } = await cloudFor(t, dir);
  const devicesFile = join(dir, 'devices.yaml');
  const tokens = writeRegistry(devicesFile, [{ id: 'b1' }, { id: 'b2' }, { id: 'b3' }]);
  const proxy = await startProxy(dir, { auth: { mode: 'token' }, devicesFile, uplink: { url: cloudUrl } });
  t.teardown(() => proxy.stop());
  await eventually('uplink connected', async () => (await proxy.metric('edge_uplink_connected')) === 1);
  const port = coapPort(proxy);
  const q = (id: string): string[] => [`d=${id}`, `k=${tokens[id]!}`];
  const url = (id: string, topic: string): string => `coap://127.0.0.1:${port}/ps/${topic}?d=${id}&k=${tokens[id]!}`;
  const atCloud = (topic: string, n = 1): Promise<Envelope[]> =>
    eventually(`${n} on ${topic} at the cloud`, () => {
      const got = up.json<Envelope>().filter((e) => e.topic === topic);
      return got.length >= n ? got : null;
    }) as Promise<Envelope[]>;
  const metric = (event: string): Promise<number> => proxy.metric('edge_coap_block_uploads_total', `event="${event}"`);

  // Started first and left: it must be gone once it has been idle for a minute, checked at the end.
  const abandoned = await BlockClient.open(t, port);
  const abandonedQuery = q('b1');
  const abandonedBody = pattern(2048, 'X');
  const expired0 = await metric('expired');
  t.match(
    await abandoned.answer(
      abandoned.block({ path: 'ps/devices/b1/left', query: abandonedQuery, num: 0, more: true, payload: abandonedBody.slice(0, 1024) }),
    ),
    { code: '2.31' },
  );
  // Taken before the last block is sent: the proxy's clock for it can only be later.
  const abandonedAt = Date.now();
  t.match(
    await abandoned.answer(
      abandoned.block({ path: 'ps/devices/b1/left', query: abandonedQuery, num: 1, more: true, payload: abandonedBody.slice(1024) }),
    ),
    { code: '2.31' },
  );

  await t.test('libcoap -b 256 uploads 3,000 bytes, a new token per block: whole at the cloud, 2.04', async (t) => {
    const body = pattern(3000, 'L');
    const file = join(dir, 'upload-3000.txt');
    writeFileSync(file, body);
    const completed0 = await metric('completed');
    const r = await runTool(COAP_CLIENT, ['-b', '256', '-m', 'post', '-t', '0', '-f', file, url('b1', 'devices/b1/file')]);
    t.equal(r.code, 0, r.stderr);
    t.notMatch(r.stdout + r.stderr, /[45]\.\d\d/, 'no error code printed');
    const [env] = await atCloud('devices/b1/file');
    t.match(env, { deviceId: 'b1', contentType: 'text' });
    t.equal(env!.payload, body, 'the 3,000 bytes, whole and in order');
    t.equal(await metric('completed'), completed0 + 1, 'counted as completed');
  });

  await t.test('libcoap without options goes block-wise by itself for 3,000 bytes: whole at the cloud', async (t) => {
    const body = pattern(3000, 'N');
    const file = join(dir, 'upload-plain.txt');
    writeFileSync(file, body);
    const completed0 = await metric('completed');
    const r = await runTool(COAP_CLIENT, ['-m', 'post', '-f', file, url('b1', 'devices/b1/plain')]);
    t.equal(r.code, 0, r.stderr);
    const [env] = await atCloud('devices/b1/plain');
    t.equal(env!.payload, body);
    t.equal(await metric('completed'), completed0 + 1, 'it went in blocks');
  });

  await t.test('a 300 KB upload is refused 4.13 with Size1, on the first block when Size1 is sent', async (t) => {
    const file = join(dir, 'upload-300k.txt');
    writeFileSync(file, pattern(300_000, 'B'));
    const tooLarge0 = await metric('too_large');
    const r = await runTool(COAP_CLIENT, ['-b', '1024', '-m', 'post', '-t', '0', '-f', file, url('b1', 'devices/b1/big')]);
    t.match(r.stdout + r.stderr, /4\.13/, 'libcoap reports 4.13');
    t.equal(await metric('too_large'), tooLarge0 + 1);

    const raw = await BlockClient.open(t, port);
    const first = await raw.answer(
      raw.block({ path: 'ps/devices/b1/big', query: q('b1'), num: 0, more: true, payload: 'B'.repeat(1024), size1: 300_000 }),
    );
    t.match(first, { code: '4.13' }, 'the first block, by its Size1');
    t.equal(optionValue(first, 'Size1'), MAX_PAYLOAD, 'Size1 = limits.maxPayloadBytes');
    t.ok(first.payload.length > 0, 'with a diagnostic');
    t.match(
      await raw.answer(raw.block({ path: 'ps/devices/b1/big', query: q('b1'), num: 1, more: true, payload: 'B'.repeat(1024) })),
      { code: '4.08' },
      'the upload was forgotten',
    );
  });

  await t.test('without Size1, 4.13 once the running total passes the limit', async (t) => {
    const raw = await BlockClient.open(t, port);
    const path = 'ps/devices/b1/growing';
    const chunk = 'G'.repeat(1024);
    const codes = new Map<string, number>();
    for (let num = 0; num < MAX_PAYLOAD / 1024; num++) {
      const a = await raw.answer(raw.block({ path, query: q('b1'), num, more: true, payload: chunk }));
      codes.set(a.code, (codes.get(a.code) ?? 0) + 1);
    }
    t.same([...codes], [['2.31', 256]], '256 KiB: at the limit, every block continues');
    const over = await raw.answer(raw.block({ path, query: q('b1'), num: 256, more: true, payload: chunk }));
    t.match(over, { code: '4.13' }, 'the block that passes it');
    t.equal(optionValue(over, 'Size1'), MAX_PAYLOAD);
    t.match(await raw.answer(raw.block({ path, query: q('b1'), num: 257, more: false, payload: 'end' })), { code: '4.08' });
    t.equal(up.json<Envelope>().filter((e) => e.topic === 'devices/b1/growing').length, 0, 'nothing published');
  });

  await t.test('a raw client keeping one token, going on with smaller blocks: 2.31 each, 2.04 with Block1 at the end', async (t) => {
    const raw = await BlockClient.open(t, port);
    const token = randomBytes(8);
    const body = pattern(1024 + 512 + 512 + 300, 'T');
    const send = (num: number, more: boolean, szx: number, from: number, to: number) =>
      raw.answer(
        raw.block({ path: 'ps/devices/b2/one-token', query: q('b2'), token, num, more, szx, payload: body.slice(from, to), format: 0 }),
      );
    const a0 = await send(0, true, 6, 0, 1024);
    t.match(a0, { code: '2.31' });
    t.same(block1Of(a0), { num: 0, more: true, szx: 6 }, 'Block1 echoed');
    t.same(a0.token, token, 'the same token back');
    const a2 = await send(2, true, 5, 1024, 1536); // 512-byte blocks from here: block 2 starts at byte 1024
    t.match(a2, { code: '2.31' });
    t.same(block1Of(a2), { num: 2, more: true, szx: 5 });
    t.match(await send(3, true, 5, 1536, 2048), { code: '2.31' });
    const last = await send(4, false, 5, 2048, body.length);
    t.match(last, { code: '2.04' });
    t.same(block1Of(last), { num: 4, more: false, szx: 5 }, 'the final response carries the last Block1');
    const [env] = await atCloud('devices/b2/one-token');
    t.match(env, { deviceId: 'b2', contentType: 'text' });
    t.equal(env!.payload, body);
  });

  await t.test('interleaved uploads from two endpoints to one topic with one identity do not mix', async (t) => {
    const a = await BlockClient.open(t, port);
    const b = await BlockClient.open(t, port);
    const path = 'ps/devices/b2/mixed';
    const bodyA = pattern(2500, 'A');
    const bodyB = pattern(2900, 'Z');
    const step = (c: BlockClient, body: string, num: number) =>
      c.answer(
        c.block({ path, query: q('b2'), num, more: (num + 1) * 1024 < body.length, payload: body.slice(num * 1024, (num + 1) * 1024) }),
      );
    for (let num = 0; num < 3; num++) {
      const [ra, rb] = await Promise.all([step(a, bodyA, num), step(b, bodyB, num)]);
      t.equal(ra.code, num < 2 ? '2.31' : '2.04');
      t.equal(rb.code, num < 2 ? '2.31' : '2.04');
    }
    const got = await atCloud('devices/b2/mixed', 2);
    t.same(got.map((e) => e.payload).sort(), [bodyA, bodyB].sort(), 'each upload whole, none mixed with the other');
  });

  await t.test('another device cannot add to an upload; a wrong token is 4.01 and changes nothing', async (t) => {
    const raw = await BlockClient.open(t, port);
    const path = 'ps/devices/b2/guarded';
    const body = pattern(2048, 'M');
    t.match(await raw.answer(raw.block({ path, query: q('b2'), num: 0, more: true, payload: body.slice(0, 1024) })), { code: '2.31' });
    // b3 from the same address and port, with its own valid token: not the same upload.
    t.match(await raw.answer(raw.block({ path, query: q('b3'), num: 1, more: false, payload: 'intruder' })), { code: '4.08' });
    const wrongK = [`d=b2`, `k=${tokens.b2!.slice(0, -2)}xx`];
    t.match(await raw.answer(raw.block({ path, query: wrongK, num: 1, more: false, payload: 'forged' })), { code: '4.01' });
    t.match(await raw.answer(raw.block({ path, query: q('b2'), num: 1, more: false, payload: body.slice(1024) })), { code: '2.04' });
    const [env] = await atCloud('devices/b2/guarded');
    t.equal(env!.payload, body, "b2's bytes only");
  });

  await t.test('a retransmitted block is answered from memory and not added twice', async (t) => {
    const raw = await BlockClient.open(t, port);
    const path = 'ps/devices/b3/retransmitted';
    const body = pattern(2500, 'R');
    const dup0 = await proxy.metric('edge_coap_exchanges_total', 'event="duplicate"');
    t.match(await raw.answer(raw.block({ path, query: q('b3'), num: 0, more: true, payload: body.slice(0, 1024) })), { code: '2.31' });
    const second = raw.block({ path, query: q('b3'), num: 1, more: true, payload: body.slice(1024, 2048) });
    const mid = second.readUInt16BE(2);
    raw.socket.send(second, port, '127.0.0.1');
    raw.socket.send(second, port, '127.0.0.1'); // before the first is answered
    await eventually('two answers', () => raw.answersTo(mid).length === 2);
    const again = await raw.answer(second); // and once more later
    t.match(again, { code: '2.31' });
    const copies = raw.answersTo(mid).map((r) => r.raw);
    t.same(copies[1], copies[0], 'the same bytes');
    t.same(copies[2], copies[0], 'the same bytes');
    t.equal(await proxy.metric('edge_coap_exchanges_total', 'event="duplicate"'), dup0 + 2, 'two duplicates');
    // The same block again under a new message id is a block that does not come next.
    t.match(await raw.answer(raw.block({ path, query: q('b3'), num: 1, more: true, payload: body.slice(1024, 2048) })), { code: '4.08' });
    t.match(await raw.answer(raw.block({ path, query: q('b3'), num: 2, more: false, payload: body.slice(2048) })), { code: '2.04' });
    const [env] = await atCloud('devices/b3/retransmitted');
    t.equal(env!.payload, body, 'each block once');
  });

  await t.test('blocks out of order get 4.08; the upload then goes on from where it was', async (t) => {
    const raw = await BlockClient.open(t, port);
    const path = 'ps/devices/b3/ordered';
    const body = pattern(3000, 'O');
    const incomplete0 = await metric('incomplete');
    const send = (num: number) =>
      raw.answer(
        raw.block({ path, query: q('b3'), num, more: (num + 1) * 1024 < body.length, payload: body.slice(num * 1024, (num + 1) * 1024) }),
      );
    const stray = await send(1);
    t.match(stray, { code: '4.08' }, 'no upload started');
    t.ok(stray.payload.length > 0, 'with a diagnostic');
    t.match(await send(0), { code: '2.31' });
    t.match(await send(2), { code: '4.08' }, 'block 1 missing');
    t.match(await send(1), { code: '2.31' });
    t.match(await send(2), { code: '2.04' });
    const [env] = await atCloud('devices/b3/ordered');
    t.equal(env!.payload, body);
    t.equal(await metric('incomplete'), incomplete0 + 2, 'counted');
  });

  await t.test('an upload its publish would refuse is refused at its first block, and nothing is kept', async (t) => {
    const raw = await BlockClient.open(t, port);
    const first = (path: string, format?: number) =>
      raw.answer(
        raw.block({ path, query: q('b3'), num: 0, more: true, payload: 'z'.repeat(1024), ...(format === undefined ? {} : { format }) }),
      );
    // The gauge is set every 100 ms: read once the previous test's finished upload is out of it.
    await sleep(300);
    const before = await proxy.metric('edge_adapter_memory_bytes', 'protocol="coap",structure="uploads"');
    t.match(await first('ps/devices/b1/not-mine'), { code: '4.03' }, "outside the device's publish filters");
    t.match(await first('ps/devices/b3/bad/+'), { code: '4.00' }, 'an invalid topic');
    t.match(await first('ps/devices/b3/fmt', 99), { code: '4.15' }, 'an unknown Content-Format');
    await sleep(300); // the gauge is set every 100 ms
    t.equal(await proxy.metric('edge_adapter_memory_bytes', 'protocol="coap",structure="uploads"'), before, 'no upload held');
  });

  await t.test('malformed Block1 values and block lengths are 4.00, a Block1 of the wrong length 4.02', async (t) => {
    const raw = await BlockClient.open(t, port);
    const path = 'ps/devices/b3/malformed';
    const szx7 = await raw.answer(raw.block({ path, query: q('b3'), num: 0, more: true, payload: 'x', rawBlock1: Buffer.from([0x0f]) }));
    t.match(szx7, { code: '4.00' }, 'SZX 7');
    t.match(szx7.payload.toString(), /SZX/);
    const long = await raw.answer(
      raw.block({ path, query: q('b3'), num: 0, more: true, payload: 'x', rawBlock1: Buffer.from([0, 0, 0, 0x0e]) }),
    );
    t.match(long, { code: '4.02' }, 'a 4-byte Block1 is a bad option (RFC 7252 §5.4.3)');
    t.match(
      await raw.answer(raw.block({ path, query: q('b3'), num: 0, more: true, payload: 'short' })),
      { code: '4.00' },
      'a non-final block shorter than its size',
    );
  });

  await t.test("node-coap's client: Block1 when asked for with a Block1 option, one token for all blocks", async (t) => {
    const agent = new coap.Agent({ type: 'udp4' });
    t.teardown(() => agent.close());
    const body = pattern(3000, 'N');
    const req = coap.request({
      hostname: '127.0.0.1',
      port,
      method: 'POST',
      pathname: '/ps/devices/b3/node-coap',
      query: `d=b3&k=${tokens.b3!}`,
      agent,
    });
    // node-coap sends a payload in one datagram unless the request carries Block1 (here SZX 6: 1024-byte blocks).
    req.setOption('Block1', Buffer.of(6));
    req.setOption('Content-Format', 'text/plain');
    const code = new Promise<string>((resolve, reject) => {
      req.on('response', (r: IncomingMessage) => resolve(r.code));
      req.on('error', reject);
    });
    req.end(Buffer.from(body));
    t.equal(await code, '2.04');
    const [env] = await atCloud('devices/b3/node-coap');
    t.equal(env!.payload, body);
  });

  await t.test('an abandoned upload is forgotten a minute after its last block', async (t) => {
    const wait = abandonedAt + UPLOAD_IDLE_MS + 2_000 - Date.now();
    t.comment(`waiting ${Math.max(0, Math.round(wait / 1000))} s for the idle time`);
    // Block 1 again is not next: the answer says what the upload holds, so it is still there.
    const before = await abandoned.answer(
      abandoned.block({ path: 'ps/devices/b1/left', query: abandonedQuery, num: 1, more: true, payload: abandonedBody.slice(1024) }),
    );
    t.match(before, { code: '4.08' });
    t.match(before.payload.toString(), /the upload has 2048/, 'still held before its idle time');
    await eventually('expired', async () => (await metric('expired')) === expired0 + 1, Math.max(wait, 0) + 5_000);
    t.ok(Date.now() - abandonedAt >= UPLOAD_IDLE_MS, 'not before the idle time');
    t.match(
      await abandoned.answer(abandoned.block({ path: 'ps/devices/b1/left', query: abandonedQuery, num: 2, more: false, payload: 'late' })),
      { code: '4.08' },
      'gone: its next block has no upload to continue',
    );
    t.equal(up.json<Envelope>().filter((e) => e.topic === 'devices/b1/left').length, 0, 'nothing published');
  });
});

t.test('the byte cap over many concurrent uploads, and the bound per endpoint', async (t) => {
  const dir = t.testdir();
  const devicesFile = join(dir, 'devices.yaml');
  const tokens = writeRegistry(devicesFile, [{ id: 'cap' }]);
  const proxy = await startProxy(dir, { auth: { mode: 'token' }, devicesFile });
  t.teardown(() => proxy.stop());
  const port = coapPort(proxy);
  const query = ['d=cap', `k=${tokens.cap!}`];
  const metric = (event: string): Promise<number> => proxy.metric('edge_coap_block_uploads_total', `event="${event}"`);

  await t.test('40 uploads of 230 KiB: past 8 MiB the ones idle longest are dropped, the others go on', async (t) => {
    // Each upload holds what it received (its buffer grows by doubling, whatever Size1 promises):
    // 200 blocks take about 256 KiB, so 8 MiB hold some 30 of them; each one past that pushes out
    // the one idle the longest, here the one that got its blocks first.
    const size = 230 * 1024;
    const held = 200;
    const clients = await Promise.all(Array.from({ length: 40 }, () => BlockClient.open(t, port)));
    const bodies = clients.map((_, i) => pattern(size, `c${i}`));
    const send = (i: number, num: number) =>
      clients[i]!.answer(
        clients[i]!.block({
          path: 'ps/devices/cap/big',
          query,
          num,
          more: (num + 1) * 1024 < size,
          payload: bodies[i]!.slice(num * 1024, (num + 1) * 1024),
          size1: size,
          format: 0,
        }),
      );
    const evicted0 = await metric('evicted');
    let continued = 0;
    for (let i = 0; i < 40; i++) for (let num = 0; num < held; num++) if ((await send(i, num)).code === '2.31') continued++;
    t.equal(continued, 40 * held, 'every block went in when it came');
    const dropped = (await metric('evicted')) - evicted0;
    t.ok(dropped >= 5 && dropped <= 15, `some dropped for room (${dropped})`);
    await sleep(300); // the gauge is set every 100 ms
    const bytes = await proxy.metric('edge_adapter_memory_bytes', 'protocol="coap",structure="uploads"');
    t.ok(bytes <= 8 * 1024 * 1024, `what the uploads hold stays within 8 MiB (${bytes})`);
    const next = await Promise.all(clients.map((_, i) => send(i, held)));
    t.same(
      next.map((a) => a.code),
      [...Array<string>(dropped).fill('4.08'), ...Array<string>(40 - dropped).fill('2.31')],
      'the oldest ones are gone, the newest go on',
    );
    // Two of those that stayed finish, and arrive whole.
    const mqttSub = await connectClient(proxy.ports.mqtt, { username: 'cap', password: tokens.cap! });
    t.teardown(() => mqttSub.endAsync());
    const seen = await collect(mqttSub, 'devices/cap/big');
    for (const i of [39 - 1, 39]) {
      let last: ParsedPacket | null = null;
      for (let num = held + 1; num * 1024 < size; num++) last = await send(i, num);
      t.match(last, { code: '2.04' }, `upload ${i} complete`);
    }
    await eventually('both at the MQTT subscriber', () => seen.messages.length === 2);
    t.same(seen.messages.map((m) => m.payload.toString()).sort(), [bodies[38], bodies[39]].sort(), 'whole, each its own');
  });

  await t.test('a fifth upload from one endpoint pushes out its oldest', async (t) => {
    const raw = await BlockClient.open(t, port);
    const evicted0 = await metric('evicted');
    for (let i = 0; i < 5; i++)
      t.match(await raw.answer(raw.block({ path: `ps/devices/cap/p${i}`, query, num: 0, more: true, payload: 'p'.repeat(1024) })), {
        code: '2.31',
      });
    t.equal(await metric('evicted'), evicted0 + 1);
    t.match(await raw.answer(raw.block({ path: 'ps/devices/cap/p0', query, num: 1, more: false, payload: 'end' })), { code: '4.08' });
    t.match(await raw.answer(raw.block({ path: 'ps/devices/cap/p1', query, num: 1, more: false, payload: 'end' })), { code: '2.04' });
  });
});
