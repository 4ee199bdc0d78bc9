import { connect, type Socket } from 'node:net';
import mqttPacket, { type Packet } from 'mqtt-packet';

/**
 * A device that never resends: each publish carries a fresh sequence number, and a publish whose
 * PUBACK never came (the connection dropped) is simply abandoned. So whatever reaches the cloud
 * twice with one sequence number was resent by the proxy, and must carry one id. It reconnects by
 * itself, so it keeps publishing across proxy crashes.
 */
export interface RawDevice {
  id: string;
  acked: Map<number, string>;
  sent(): number;
  stop(): void;
}

export function startRawDevice(opts: {
  port: () => number;
  id: string;
  inflight?: number;
  topics: (seq: number) => string;
  intervalMs?: number;
}): RawDevice {
  const acked = new Map<number, string>();
  let seq = 0;
  let stopped = false;
  let socket: Socket | null = null;
  const device: RawDevice = {
    id: opts.id,
    acked,
    sent: () => seq,
    stop() {
      stopped = true;
      socket?.destroy();
    },
  };
  const run = (): void => {
    if (stopped) return;
    const s = connect(opts.port(), '127.0.0.1');
    socket = s;
    const inflight = new Map<number, { seq: number; topic: string }>();
    let messageId = 0;
    const parser = mqttPacket.parser({ protocolVersion: 4 });
    const publishNext = (): void => {
      if (stopped || s.destroyed) return;
      const n = ++seq;
      const topic = opts.topics(n);
      messageId = (messageId % 65535) + 1;
      inflight.set(messageId, { seq: n, topic });
      s.write(
        mqttPacket.generate({ cmd: 'publish', topic, payload: JSON.stringify({ seq: n }), qos: 1, messageId, retain: false, dup: false }),
      );
    };
    parser.on('packet', (p: Packet) => {
      if (p.cmd === 'connack') {
        if (p.returnCode !== 0) {
          s.destroy();
          return;
        }
        for (let i = 0; i < (opts.inflight ?? 1); i++) publishNext();
      } else if (p.cmd === 'puback') {
        const m = inflight.get(p.messageId!);
        if (!m) return;
        inflight.delete(p.messageId!);
        acked.set(m.seq, m.topic);
        if (opts.intervalMs) setTimeout(publishNext, opts.intervalMs);
        else publishNext();
      }
    });
    s.on('connect', () =>
      s.write(
        mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: opts.id, clean: true, keepalive: 30 }),
      ),
    );
    s.on('data', (d: Buffer) => parser.parse(d));
    s.on('error', () => {});
    s.on('close', () => {
      if (!stopped) setTimeout(run, 100);
    });
  };
  run();
  return device;
}
