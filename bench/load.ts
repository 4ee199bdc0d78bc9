import { connect, type Socket } from 'node:net';
import mqttPacket from 'mqtt-packet';

/**
 * A lean load generator for benchmarks: raw MQTT 3.1.1 devices that keep `inflight` QoS 1
 * publishes outstanding and send the next as each PUBACK arrives. It spends a few microseconds
 * a message, so the machine's CPU goes to the proxy under test rather than to the clients
 * (the firmware simulator, on MQTT.js, costs several times more per message).
 */
export interface LoadOptions {
  port: number;
  devices: number;
  inflight: number;
  /** telemetry payload builder: device index and sequence number */
  payload?: (device: number, seq: number) => string;
  /**
   * A steady load instead of as fast as acknowledged: this many messages/s over all devices, each
   * device sending on its own clock (at most `inflight` unacknowledged).
   */
  rate?: number;
  /** each acknowledgement: when the publish was sent (performance.now() ms) and how long the PUBACK took */
  onAck?: (sentAt: number, latencyMs: number) => void;
  /** device id -> token, for a proxy in token mode: CONNECT with username = device id, password = token */
  tokens?: ReadonlyMap<string, string>;
}

export interface Load {
  acked(): number;
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

export function startLoad(opts: LoadOptions): Load {
  const build = opts.payload ?? telemetry;
  let acked = 0;
  let behind = 0;
  let stopping = false;
  const timers: NodeJS.Timeout[] = [];
  const sockets: Socket[] = [];
  const readies: Promise<void>[] = [];
  for (let d = 0; d < opts.devices && opts.tokens; d++) {
    if (!opts.tokens.has(loadDeviceId(d))) throw new Error(`no token for the load device ${loadDeviceId(d)}`);
  }
  for (let d = 0; d < opts.devices; d++) {
    const id = loadDeviceId(d);
    const token = opts.tokens?.get(id);
    const topic = `devices/${id}/telemetry`;
    const socket = connect(opts.port, '127.0.0.1');
    socket.setNoDelay(true);
    sockets.push(socket);
    let seq = 0;
    let messageId = 0;
    let outstanding = 0;
    const sentAt = new Map<number, number>();
    const publish = (): Buffer => {
      messageId = (messageId % 65535) + 1;
      outstanding++;
      if (opts.onAck) sentAt.set(messageId, performance.now());
      return mqttPacket.generate({ cmd: 'publish', topic, payload: build(d, ++seq), qos: 1, messageId, retain: false, dup: false });
    };
    const paced = opts.rate !== undefined;
    const perDevice = (opts.rate ?? 0) / opts.devices;
    readies.push(
      new Promise<void>((resolve, reject) => {
        let pending: Buffer = Buffer.alloc(0);
        let connected = false;
        socket.once('error', reject);
        const credentials = token === undefined ? {} : { username: id, password: Buffer.from(token) };
        socket.on('connect', () =>
          socket.write(
            mqttPacket.generate({
              cmd: 'connect',
              protocolId: 'MQTT',
              protocolVersion: 4,
              clientId: id,
              clean: true,
              keepalive: 60,
              ...credentials,
            }),
          ),
        );
        socket.on('data', (chunk: Buffer) => {
          pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
          let i = 0;
          const out: Buffer[] = [];
          // CONNACK (0x20) and PUBACK (0x40) are both 4 bytes: type, length 2, two bytes.
          while (pending.length - i >= 4) {
            const type = pending[i]! >> 4;
            if (type === 2) {
              const rc = pending[i + 3]!;
              if (rc !== 0) {
                reject(new Error(`${id} refused: CONNACK return code ${rc} (${CONNACK_REFUSALS[rc] ?? 'unknown'})`));
                socket.destroy();
                return;
              }
              connected = true;
              resolve();
              if (paced) {
                // Each device on its own clock: the messages due by now, minus what was sent.
                const deviceStart = performance.now();
                const timer = setInterval(() => {
                  if (stopping) return;
                  const due = Math.floor(((performance.now() - deviceStart) / 1000) * perDevice);
                  const batch: Buffer[] = [];
                  while (seq < due) {
                    if (outstanding >= opts.inflight) {
                      behind += due - seq;
                      seq = due;
                      break;
                    }
                    batch.push(publish());
                  }
                  if (batch.length) socket.write(batch.length === 1 ? batch[0]! : Buffer.concat(batch));
                }, 5);
                timers.push(timer);
              } else {
                for (let k = 0; k < opts.inflight; k++) out.push(publish());
              }
            } else if (type === 4) {
              acked++;
              outstanding--;
              if (opts.onAck) {
                const id = pending.readUInt16BE(i + 2);
                const t0 = sentAt.get(id);
                if (t0 !== undefined) {
                  sentAt.delete(id);
                  opts.onAck(t0, performance.now() - t0);
                }
              }
              if (!stopping && !paced) out.push(publish());
            }
            i += 2 + pending[i + 1]!;
          }
          pending = pending.subarray(i);
          if (out.length) socket.write(out.length === 1 ? out[0]! : Buffer.concat(out));
        });
        socket.on('close', () => {
          if (!connected) reject(new Error(`${id} closed before CONNACK`));
        });
      }),
    );
  }
  return {
    acked: () => acked,
    behind: () => behind,
    ready: Promise.all(readies).then(() => undefined),
    async stop() {
      stopping = true;
      for (const timer of timers) clearInterval(timer);
      await new Promise((r) => setTimeout(r, 200));
      for (const s of sockets) s.destroy();
    },
  };
}
