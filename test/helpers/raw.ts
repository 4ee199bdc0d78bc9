import { connect, type Socket } from 'node:net';
import mqttPacket, { type Packet } from 'mqtt-packet';

/** A raw MQTT 3.1.1 connection, for what well-behaved clients never send. */
export interface RawClient {
  socket: Socket;
  packets: Packet[];
  closed: Promise<void>;
  send(packet: Record<string, unknown>): void;
  write(bytes: Buffer): void;
  next(cmd: string, timeoutMs?: number): Promise<Packet>;
}

export async function rawClient(port: number): Promise<RawClient> {
  const socket = connect(port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  const parser = mqttPacket.parser({ protocolVersion: 4 });
  const packets: Packet[] = [];
  const waiters: Array<() => void> = [];
  parser.on('packet', (p) => {
    packets.push(p);
    for (const w of waiters.splice(0)) w();
  });
  socket.on('data', (d) => parser.parse(d));
  socket.on('error', () => {});
  const closed = new Promise<void>((resolve) =>
    socket.once('close', () => {
      resolve();
      for (const w of waiters.splice(0)) w();
    }),
  );
  let seen = 0;
  return {
    socket,
    packets,
    closed,
    send(packet) {
      socket.write(mqttPacket.generate(packet as unknown as Packet, { protocolVersion: 4 }));
    },
    write(bytes) {
      socket.write(bytes);
    },
    async next(cmd, timeoutMs = 5_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        while (seen < packets.length) {
          const p = packets[seen++]!;
          if (p.cmd === cmd) return p;
        }
        if (socket.destroyed || Date.now() > deadline) throw new Error(`no ${cmd} packet (closed: ${socket.destroyed})`);
        await new Promise<void>((resolve) => {
          waiters.push(resolve);
          setTimeout(resolve, 100);
        });
      }
    },
  };
}

export function connectPacket(clientId: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId, keepalive: 30, ...extra };
}
