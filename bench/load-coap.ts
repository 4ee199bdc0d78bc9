import { createSocket, type Socket } from 'node:dgram';
import { generate } from 'coap-packet';
import { loadDeviceId } from './load.js';

/**
 * A lean CoAP load generator for benchmarks (the CoAP counterpart of load.ts): devices on a UDP
 * socket each that keep `inflight` confirmable publishes (`POST /ps/devices/<id>/telemetry`) in
 * flight and send the next as each 2.04 arrives. A request is a template made once per device with
 * its message id, token and payload written in, an answer is read from its first bytes: a few
 * microseconds a message, so the CPU goes to the proxy under test (node-coap's agent makes a stream,
 * an emitter and two timers per request).
 *
 * It behaves as RFC 7252 asks of a client, as far as a benchmark meets it: a confirmable request
 * unanswered is sent again with the same message id (ACK_TIMEOUT randomised, doubled each time,
 * §4.2), so that a datagram lost in a full socket buffer costs a retransmission, not a device; a
 * separate response (an empty ACK, then the 2.04 as a confirmable message) is acknowledged and
 * matched by its token (§5.2.2).
 */
export interface CoapLoadOptions {
  /** the proxy's CoAP port on 127.0.0.1 */
  port: number;
  devices: number;
  /** confirmable publishes each device keeps in flight (1 is RFC 7252's NSTART) */
  inflight: number;
  /** device id -> token, for a proxy in token mode: `k=<token>` beside `d=<id>` on every request */
  tokens?: ReadonlyMap<string, string>;
}

export interface CoapLoad {
  /** publishes answered 2.04 */
  acked(): number;
  /** publishes answered with an error (4.xx, 5.xx) */
  failed(): number;
  /** requests sent again for want of an answer */
  retransmitted(): number;
  /** publishes answered by a separate response (an empty ACK first) */
  separate(): number;
  /** every device's first publish answered 2.04: the proxy takes them (in token mode, their tokens) */
  ready: Promise<void>;
  stop(): Promise<void>;
}

/** RFC 7252 §4.8. */
const ACK_TIMEOUT_MS = 2_000;
const ACK_RANDOM_FACTOR = 1.5;
const MAX_RETRANSMIT = 4;
/** How often each device looks for requests to send again. */
const SCAN_MS = 100;

const TYPE_CON = 0;
const TYPE_ACK = 2;
const TOKEN_LENGTH = 4;
const CODE_CHANGED = (2 << 5) | 4;
/** How long a device may wait for the answer to its first publish. */
const FIRST_ANSWER_MS = 10_000;

function codeText(code: number): string {
  return `${code >> 5}.${String(code & 31).padStart(2, '0')}`;
}

interface InFlight {
  mid: number;
  token: number;
  datagram: Buffer;
  dueAt: number;
  timeoutMs: number;
  attempts: number;
}

function telemetry(device: number, seq: number): string {
  const t = 21 + Math.sin(seq / 50 + device) * 3;
  return `{"deviceId":"${loadDeviceId(device)}","seq":${seq},"ts":${Date.now()},"temp":${t.toFixed(2)},"humidity":${(45 + (seq % 7)).toFixed(1)},"battery":97}`;
}

/** The request's bytes up to the payload, made once with coap-packet: header, token, options, payload marker. */
function template(id: string, token: string | undefined): Buffer {
  const options = [
    ...['ps', 'devices', id, 'telemetry'].map((p) => ({ name: 'Uri-Path' as const, value: Buffer.from(p) })),
    { name: 'Content-Format' as const, value: Buffer.from([50]) },
    { name: 'Uri-Query' as const, value: Buffer.from(`d=${id}`) },
    ...(token === undefined ? [] : [{ name: 'Uri-Query' as const, value: Buffer.from(`k=${token}`) }]),
  ];
  const probe = generate({
    code: '0.02',
    messageId: 0,
    token: Buffer.alloc(TOKEN_LENGTH),
    confirmable: true,
    options,
    payload: Buffer.from('x'),
  });
  return probe.subarray(0, probe.length - 1);
}

export function startCoapLoad(opts: CoapLoadOptions): CoapLoad {
  let acked = 0;
  let failed = 0;
  let retransmitted = 0;
  let separate = 0;
  let stopping = false;
  const sockets: Socket[] = [];
  const scanners: NodeJS.Timeout[] = [];
  const readies: Array<Promise<void>> = [];
  for (let d = 0; d < opts.devices; d++) {
    const id = loadDeviceId(d);
    const token = opts.tokens?.get(id);
    if (opts.tokens && token === undefined) throw new Error(`no token for the load device ${id}`);
    const head = template(id, token);
    const socket = createSocket('udp4');
    sockets.push(socket);
    let seq = 0;
    let mid = Math.floor(Math.random() * 0x10000);
    let nextToken = 0;
    const byMid = new Map<number, InFlight>();
    const byToken = new Map<number, InFlight>();
    let answered: (err?: Error) => void = () => {};
    readies.push(
      new Promise<void>((resolve, reject) => {
        const timer = setTimeout(
          () => answered(new Error(`${id}: no answer from the proxy's CoAP port ${opts.port} in ${FIRST_ANSWER_MS / 1000} s`)),
          FIRST_ANSWER_MS,
        );
        answered = (err) => {
          answered = () => {};
          clearTimeout(timer);
          if (err) reject(err);
          else resolve();
        };
      }),
    );

    const publish = (): void => {
      mid = (mid + 1) & 0xffff;
      nextToken = (nextToken + 1) >>> 0;
      const payload = Buffer.from(telemetry(d, ++seq));
      const datagram = Buffer.allocUnsafe(head.length + payload.length);
      head.copy(datagram, 0);
      datagram.writeUInt16BE(mid, 2);
      datagram.writeUInt32BE(nextToken, 4);
      payload.copy(datagram, head.length);
      const timeoutMs = ACK_TIMEOUT_MS * (1 + Math.random() * (ACK_RANDOM_FACTOR - 1));
      const f: InFlight = { mid, token: nextToken, datagram, dueAt: performance.now() + timeoutMs, timeoutMs, attempts: 0 };
      byMid.set(mid, f);
      byToken.set(nextToken, f);
      socket.send(datagram, opts.port, '127.0.0.1');
    };
    const settle = (f: InFlight, code: number): void => {
      byMid.delete(f.mid);
      byToken.delete(f.token);
      if (code === CODE_CHANGED) {
        acked++;
        answered();
      } else {
        failed++;
        answered(new Error(`${id}: its publish was answered ${codeText(code)}`));
      }
      if (!stopping) publish();
    };

    socket.on('message', (buf) => {
      if (buf.length < 4) return;
      const type = (buf[0]! >> 4) & 3;
      const code = buf[1]!;
      const rmid = buf.readUInt16BE(2);
      if (type === TYPE_ACK) {
        const f = byMid.get(rmid);
        if (!f) return;
        if (code === 0) {
          // An empty ACK: received, the 2.04 comes later as a separate response. No more retransmissions.
          byMid.delete(rmid);
          f.dueAt = Infinity;
          separate++;
          return;
        }
        settle(f, code);
        return;
      }
      if (type === TYPE_CON && code !== 0) {
        // A separate response: acknowledged whatever it is (RFC 7252 §5.2.2), then matched by its token.
        socket.send(Buffer.from([0x60, 0, buf[2]!, buf[3]!]), opts.port, '127.0.0.1');
        if ((buf[0]! & 0x0f) !== TOKEN_LENGTH || buf.length < 4 + TOKEN_LENGTH) return;
        const f = byToken.get(buf.readUInt32BE(4));
        if (f) settle(f, code);
      }
    });
    scanners.push(
      setInterval(() => {
        const now = performance.now();
        for (const f of byMid.values()) {
          if (f.dueAt > now || f.attempts >= MAX_RETRANSMIT) continue;
          f.attempts++;
          f.timeoutMs *= 2;
          f.dueAt = now + f.timeoutMs;
          retransmitted++;
          socket.send(f.datagram, opts.port, '127.0.0.1');
        }
      }, SCAN_MS),
    );
    socket.once('error', (err) => answered(err));
    socket.bind(0, '127.0.0.1', () => {
      for (let k = 0; k < opts.inflight; k++) publish();
    });
  }
  return {
    acked: () => acked,
    failed: () => failed,
    retransmitted: () => retransmitted,
    separate: () => separate,
    ready: Promise.all(readies).then(() => undefined),
    async stop() {
      stopping = true;
      // What is in flight is answered (or not) meanwhile; nothing new is sent.
      await new Promise((r) => setTimeout(r, 500));
      for (const s of scanners) clearInterval(s);
      await Promise.all(sockets.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    },
  };
}
