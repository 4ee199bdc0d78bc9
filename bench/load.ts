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
}

export interface Load {
  acked(): number;
  ready: Promise<void>;
  stop(): Promise<void>;
}

function telemetry(device: number, seq: number): string {
  const t = 21 + Math.sin(seq / 50 + device) * 3;
  return `{"deviceId":"bench-${String(device).padStart(4, '0')}","seq":${seq},"ts":${Date.now()},"temp":${t.toFixed(2)},"humidity":${(45 + (seq % 7)).toFixed(1)},"battery":97}`;
}

export function startLoad(opts: LoadOptions): Load {
  const build = opts.payload ?? telemetry;
  let acked = 0;
  let stopping = false;
  const sockets: Socket[] = [];
  const readies: Promise<void>[] = [];
  for (let d = 0; d < opts.devices; d++) {
    const id = `bench-${String(d).padStart(4, '0')}`;
    const topic = `devices/${id}/telemetry`;
    const socket = connect(opts.port, '127.0.0.1');
    socket.setNoDelay(true);
    sockets.push(socket);
    let seq = 0;
    let messageId = 0;
    const publish = (): Buffer => {
      messageId = (messageId % 65535) + 1;
      return mqttPacket.generate({ cmd: 'publish', topic, payload: build(d, ++seq), qos: 1, messageId, retain: false, dup: false });
    };
    readies.push(new Promise<void>((resolve, reject) => {
      let pending: Buffer = Buffer.alloc(0);
      let connected = false;
      socket.once('error', reject);
      socket.on('connect', () => socket.write(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: id, clean: true, keepalive: 60 })));
      socket.on('data', (chunk: Buffer) => {
        pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
        let i = 0;
        const out: Buffer[] = [];
        // CONNACK (0x20) and PUBACK (0x40) are both 4 bytes: type, length 2, two bytes.
        while (pending.length - i >= 4) {
          const type = pending[i]! >> 4;
          if (type === 2) {
            connected = true;
            resolve();
            for (let k = 0; k < opts.inflight; k++) out.push(publish());
          } else if (type === 4) {
            acked++;
            if (!stopping) out.push(publish());
          }
          i += 2 + pending[i + 1]!;
        }
        pending = pending.subarray(i);
        if (out.length) socket.write(out.length === 1 ? out[0]! : Buffer.concat(out));
      });
      socket.on('close', () => { if (!connected) reject(new Error(`${id} closed before CONNACK`)); });
    }));
  }
  return {
    acked: () => acked,
    ready: Promise.all(readies).then(() => undefined),
    async stop() {
      stopping = true;
      await new Promise((r) => setTimeout(r, 200));
      for (const s of sockets) s.destroy();
    },
  };
}
