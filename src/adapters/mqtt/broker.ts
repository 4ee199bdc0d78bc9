// The embedded aedes broker, with the two changes that make it one adapter among several: a
// device's publish is not fanned out by aedes (the pipeline delivers it once it is accepted, to
// the subscribers of every protocol), and retained messages live in the pipeline's shared store.
import { Readable } from 'node:stream';
import { Aedes, type AedesOptions, type Client, type PublishPacket } from 'aedes';
import memoryModule, { type AedesMemoryPersistence } from 'aedes-persistence';
import type { EdgeMessage } from '../../core/message.js';
import type { RetainedStore } from '../../pipeline/retained.js';
import { edgeMessageToMqtt } from './normalize.js';

type PublishDone = (error?: Error) => void;
// A CommonJS module whose types declare an ES default export: at run time the import is the factory.
const memoryPersistence = memoryModule as unknown as () => AedesMemoryPersistence;
type RawPublish = (packet: PublishPacket, client: Client | null, done?: PublishDone) => void;
// aedes's own publish, with the client argument its types leave out.
const aedesPublish = (Aedes.prototype as unknown as { publish: RawPublish }).publish;

/**
 * aedes publishes what a client sent to its own subscribers, retained store and offline queues
 * right after authorizePublish (and a will at a client's close). For a device publish (a client is
 * given), that step is skipped here: the ingress gate has handed the message to the pipeline,
 * whose local delivery comes back through publishLocal() exactly once, for every protocol alike.
 * The broker's own publishes ($SYS, no client) go through as they are.
 */
export class EdgeBroker extends Aedes {
  override publish(packet: PublishPacket, clientOrDone?: Client | null | PublishDone, done?: PublishDone): void {
    if (typeof clientOrDone === 'function') return aedesPublish.call(this, packet, null, clientOrDone);
    if (clientOrDone) {
      done?.();
      return;
    }
    aedesPublish.call(this, packet, null, done);
  }

  /** Deliver a message of the pipeline to this broker's subscribers, persistent sessions included. */
  publishLocal(msg: EdgeMessage, done: PublishDone): void {
    const packet = edgeMessageToMqtt(msg) as PublishPacket & { brokerId?: string };
    // aedes drops a delivery whose broker counter is not above the last one the client got under the
    // same broker id (how it gives overlapping subscriptions one copy). QoS 1 and 2 messages pass its
    // session store on their way out and leave after QoS 0 messages published later: under one id the
    // later QoS 0 counters made them look like copies. Each class keeps its order, so one id each.
    if (packet.qos > 0) packet.brokerId = `${this.id}/qos`;
    aedesPublish.call(this, packet, null, done);
  }

  static async open(opts: AedesOptions, retained: Pick<RetainedStore, 'matching'>): Promise<EdgeBroker> {
    const broker = new EdgeBroker({ ...opts, persistence: sharedRetained(retained) });
    await broker.listen();
    return broker;
  }
}

/**
 * aedes's in-memory session store, with its retained messages read from the pipeline's store.
 * The pipeline writes that store before any adapter delivers, so aedes's own write is not needed.
 */
function sharedRetained(retained: Pick<RetainedStore, 'matching'>): AedesMemoryPersistence {
  const persistence = memoryPersistence();
  const retainedPackets = function* (patterns: string[]): Generator<ReturnType<typeof edgeMessageToMqtt>> {
    const seen = new Set<string>();
    for (const pattern of patterns) {
      for (const msg of retained.matching(pattern)) {
        if (seen.has(msg.topic)) continue; // overlapping filters of one SUBSCRIBE get each message once
        seen.add(msg.topic);
        yield { ...edgeMessageToMqtt(msg), retain: true };
      }
    }
  };
  Object.assign(persistence, {
    storeRetained: (_packet: unknown, cb?: (err: null) => void): Promise<void> | void =>
      cb ? process.nextTick(cb, null) : Promise.resolve(),
    createRetainedStream: (pattern: string) => Readable.from(retainedPackets([pattern])),
    createRetainedStreamCombi: (patterns: string[]) => Readable.from(retainedPackets(patterns)),
    // aedes publishes the wills of brokers it no longer hears from, past the gate and the pipeline;
    // there is one broker here, and a device's will is taken through the gate when it disconnects.
    streamWill: () => Readable.from([]),
  });
  return persistence;
}
