import { connect, type Socket } from 'node:net';
import mqttPacket from 'mqtt-packet';
import WebSocket from 'ws';

/**
 * A lean load generator for benchmarks: devices that keep `inflight` QoS 1 publishes outstanding
 * and send the next as each acknowledgement arrives. It spends a few microseconds a message, so
 * the machine's CPU goes to the proxy under test rather than to the clients (the firmware
 * simulator, on MQTT.js, costs several times more per message).
 *
 * Three transports, one device logic: raw MQTT 3.1.1 over TCP, the same MQTT packets in binary
 * WebSocket messages on the proxy's `/mqtt`, and the JSON protocol of `/ws` (`pub` frames with
 * qos 1 and an `id`, answered by `{"op":"ack","id"}` once committed).
 */
export type LoadTransport = 'tcp' | 'mqtt-ws' | 'ws';

export interface LoadOptions {
  /** the port of the transport's endpoint: the proxy's MQTT port for tcp, its http port for mqtt-ws and ws */
  port: number;
  /** tcp (default), mqtt-ws (/mqtt) or ws (/ws) */
  transport?: LoadTransport;
  devices: number;
  inflight: number;
  /** telemetry payload builder: device index and sequence number */
  payload?: (device: number, seq: number) => string;
  /**
   * A steady load instead of as fast as acknowledged: this many messages/s over all devices, each
   * device sending on its own clock (at most `inflight` unacknowledged).
   */
  rate?: number;
  /**
   * Which publishes go at QoS 0 (default none: all QoS 1). Only with `rate`: a QoS 0 publish is
   * not acknowledged, so it is sent on the clock and never counts as in flight.
   */
  qos0?: (device: number, seq: number) => boolean;
  /** each acknowledgement: when the publish was sent (performance.now() ms) and how long the acknowledgement took */
  onAck?: (sentAt: number, latencyMs: number) => void;
  /**
   * device id -> token, for a proxy in token mode: over MQTT (tcp and mqtt-ws) CONNECT with
   * username = device id, password = token; on /ws `Authorization: Bearer <token>` at the upgrade
   */
  tokens?: ReadonlyMap<string, string>;
}

export interface Load {
  acked(): number;
  /** QoS 0 publishes sent (never acknowledged) */
  sentQos0(): number;
  /** publishes the proxy refused (an `error` frame on /ws); MQTT has no refusal short of closing */
  failed(): number;
  /** publishes the clock could not send because `inflight` were still unacknowledged */
  behind(): number;
  ready: Promise<void>;
  stop(): Promise<void>;
}

/** The id of load device `index` (0-based): bench-0000, bench-0001, ... */
export function loadDeviceId(index: number): string {
  return `bench-${String(index).padStart(4, '0')}`;
}

/** CONNACK return codes of MQTT 3.1.1, for the error when a device is refused. */
const CONNACK_REFUSALS: Record<number, string> = {
  1: 'unacceptable protocol version',
  2: 'identifier rejected',
  3: 'server unavailable',
  4: 'bad user name or password',
  5: 'not authorized',
};

function telemetry(device: number, seq: number): string {
  const t = 21 + Math.sin(seq / 50 + device) * 3;
  return `{"deviceId":"${loadDeviceId(device)}","seq":${seq},"ts":${Date.now()},"temp":${t.toFixed(2)},"humidity":${(45 + (seq % 7)).toFixed(1)},"battery":97}`;
}

/** What a device hears from the proxy, whatever the protocol. */
interface Heard {
  ready(): void;
  ack(messageId: number): void;
  /** a publish refused with an error frame (counted, and no longer in flight) */
  failed(messageId: number): void;
  refused(why: string): void;
}

/** One protocol's side of a load device: what it sends and how it reads what comes back. */
interface Codec {
  /** sent once the connection is open: CONNECT for MQTT; nothing on /ws, ready once open */
  hello: Buffer | undefined;
  /** a QoS 1 publish with `messageId`, or a QoS 0 one without an id when it is undefined */
  publish(messageId: number | undefined, payload: string): Buffer | string;
  read(data: Buffer, heard: Heard): void;
}

/** MQTT 3.1.1 by hand: CONNECT out, CONNACK and PUBACK in (both 4 bytes), across chunk boundaries. */
function mqttCodec(id: string, topic: string, token: string | undefined): Codec {
  let pending: Buffer = Buffer.alloc(0);
  const credentials = token === undefined ? {} : { username: id, password: Buffer.from(token) };
  return {
    hello: mqttPacket.generate({
      cmd: 'connect',
      protocolId: 'MQTT',
      protocolVersion: 4,
      clientId: id,
      clean: true,
      keepalive: 60,
      ...credentials,
    }),
    publish: (messageId, payload) =>
      mqttPacket.generate(
        messageId === undefined
          ? { cmd: 'publish', topic, payload, qos: 0, retain: false, dup: false }
          : { cmd: 'publish', topic, payload, qos: 1, messageId, retain: false, dup: false },
      ),
    read(chunk, heard) {
      pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
      let i = 0;
      while (pending.length - i >= 4) {
        const type = pending[i]! >> 4;
        if (type === 2) {
          const rc = pending[i + 3]!;
          if (rc !== 0) {
            heard.refused(`${id} refused: CONNACK return code ${rc} (${CONNACK_REFUSALS[rc] ?? 'unknown'})`);
            return;
          }
          heard.ready();
        } else if (type === 4) {
          heard.ack(pending.readUInt16BE(i + 2));
        }
        i += 2 + pending[i + 1]!;
      }
      pending = pending.subarray(i);
    },
  };
}

const ACK_HEAD = Buffer.from('{"op":"ack","id":');

/** The JSON protocol of /ws: a payload that is JSON text goes as the JSON value it is. */
function jsonCodec(topic: string): Codec {
  const head = `{"op":"pub","topic":${JSON.stringify(topic)},"qos":1,"payload":`;
  const head0 = `{"op":"pub","topic":${JSON.stringify(topic)},"qos":0,"payload":`;
  return {
    hello: undefined,
    publish: (messageId, payload) => (messageId === undefined ? `${head0}${payload}}` : `${head}${payload},"id":${messageId}}`),
    read(data, heard) {
      // The frame the proxy sends most, read without JSON.parse: the client's CPU is not what is measured.
      if (data.length < 40 && data.subarray(0, ACK_HEAD.length).equals(ACK_HEAD) && data[data.length - 1] === 0x7d) {
        const id = Number(data.toString('latin1', ACK_HEAD.length, data.length - 1));
        if (Number.isInteger(id)) {
          heard.ack(id);
          return;
        }
      }
      const frame = JSON.parse(data.toString('utf8')) as { op?: string; id?: unknown };
      if (typeof frame.id !== 'number') return;
      if (frame.op === 'ack') heard.ack(frame.id);
      else if (frame.op === 'error') heard.failed(frame.id);
    },
  };
}

/** The connection of one device: bytes or frames out, a callback for what comes in. */
interface Wire {
  /** several publishes at once: one write over TCP, one WebSocket message of MQTT packets, or a frame each on /ws */
  send(out: Array<Buffer | string>): void;
  destroy(): void;
}

function openWire(
  transport: LoadTransport,
  port: number,
  id: string,
  token: string | undefined,
  on: { open: () => void; data: (chunk: Buffer) => void; error: (err: Error) => void; close: () => void },
): Wire {
  if (transport === 'tcp') {
    const socket: Socket = connect(port, '127.0.0.1');
    socket.setNoDelay(true);
    socket.once('error', on.error);
    socket.on('connect', on.open);
    socket.on('data', on.data);
    socket.on('close', on.close);
    return {
      send: (out) => socket.write(out.length === 1 ? out[0]! : Buffer.concat(out as Buffer[])),
      destroy: () => socket.destroy(),
    };
  }
  const ws =
    transport === 'mqtt-ws'
      ? new WebSocket(`ws://127.0.0.1:${port}/mqtt`, 'mqtt', { perMessageDeflate: false })
      : new WebSocket(`ws://127.0.0.1:${port}/ws?d=${encodeURIComponent(id)}`, {
          perMessageDeflate: false,
          headers: token === undefined ? {} : { authorization: `Bearer ${token}` },
        });
  ws.once('error', on.error);
  ws.on('open', on.open);
  ws.on('message', (data: Buffer) => on.data(data));
  ws.on('close', on.close);
  return {
    send(out) {
      if (transport === 'ws') for (const frame of out) ws.send(frame);
      // One message may hold several MQTT packets (docs/websocket.md), as one TCP write does.
      else ws.send(out.length === 1 ? out[0]! : Buffer.concat(out as Buffer[]), { binary: true });
    },
    destroy: () => ws.terminate(),
  };
}

export function startLoad(opts: LoadOptions): Load {
  const build = opts.payload ?? telemetry;
  const transport = opts.transport ?? 'tcp';
  let acked = 0;
  let failed = 0;
  let behind = 0;
  let sentQos0 = 0;
  let stopping = false;
  if (opts.qos0 && opts.rate === undefined) throw new Error('QoS 0 publishes need a steady rate (the rate option)');
  const timers: NodeJS.Timeout[] = [];
  const wires: Wire[] = [];
  const readies: Promise<void>[] = [];
  for (let d = 0; d < opts.devices && opts.tokens; d++) {
    if (!opts.tokens.has(loadDeviceId(d))) throw new Error(`no token for the load device ${loadDeviceId(d)}`);
  }
  for (let d = 0; d < opts.devices; d++) {
    const id = loadDeviceId(d);
    const token = opts.tokens?.get(id);
    const topic = `devices/${id}/telemetry`;
    const codec = transport === 'ws' ? jsonCodec(topic) : mqttCodec(id, topic, token);
    let seq = 0;
    let messageId = 0;
    let outstanding = 0;
    const sentAt = new Map<number, number>();
    const publish = (): Buffer | string => {
      if (opts.qos0?.(d, seq + 1)) {
        sentQos0++;
        return codec.publish(undefined, build(d, ++seq));
      }
      messageId = (messageId % 65535) + 1;
      outstanding++;
      if (opts.onAck) sentAt.set(messageId, performance.now());
      return codec.publish(messageId, build(d, ++seq));
    };
    const paced = opts.rate !== undefined;
    const perDevice = (opts.rate ?? 0) / opts.devices;
    readies.push(
      new Promise<void>((resolve, reject) => {
        let connected = false;
        let out: Array<Buffer | string> = [];
        const settled = (messageId: number): void => {
          outstanding--;
          if (opts.onAck) {
            const t0 = sentAt.get(messageId);
            if (t0 !== undefined) {
              sentAt.delete(messageId);
              opts.onAck(t0, performance.now() - t0);
            }
          }
          if (!stopping && !paced) out.push(publish());
        };
        const heard: Heard = {
          ready() {
            connected = true;
            resolve();
            if (paced) {
              // Each device on its own clock: the messages due by now, minus what was sent.
              const deviceStart = performance.now();
              const timer = setInterval(() => {
                if (stopping) return;
                const due = Math.floor(((performance.now() - deviceStart) / 1000) * perDevice);
                const batch: Array<Buffer | string> = [];
                while (seq < due) {
                  if (outstanding >= opts.inflight) {
                    behind += due - seq;
                    seq = due;
                    break;
                  }
                  batch.push(publish());
                }
                if (batch.length) wire.send(batch);
              }, 5);
              timers.push(timer);
            } else {
              for (let k = 0; k < opts.inflight; k++) out.push(publish());
            }
          },
          ack(messageId) {
            acked++;
            settled(messageId);
          },
          failed(messageId) {
            failed++;
            settled(messageId);
          },
          refused(why) {
            reject(new Error(why));
            wire.destroy();
          },
        };
        const wire = openWire(transport, opts.port, id, token, {
          open() {
            if (codec.hello) wire.send([codec.hello]);
            else heard.ready();
            flush();
          },
          data(chunk) {
            codec.read(chunk, heard);
            flush();
          },
          error: reject,
          close() {
            if (!connected) reject(new Error(`${id} closed before it was admitted`));
          },
        });
        const flush = (): void => {
          if (out.length === 0) return;
          const batch = out;
          out = [];
          wire.send(batch);
        };
        wires.push(wire);
      }),
    );
  }
  return {
    acked: () => acked,
    sentQos0: () => sentQos0,
    failed: () => failed,
    behind: () => behind,
    ready: Promise.all(readies).then(() => undefined),
    async stop() {
      stopping = true;
      for (const timer of timers) clearInterval(timer);
      await new Promise((r) => setTimeout(r, 200));
      for (const w of wires) w.destroy();
    },
  };
}
