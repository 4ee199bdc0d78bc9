// GET on /ps (../shared/spec/protocols.md, CoAP; docs/coap.md): the retained message of a topic,
// observations of a topic or filter (RFC 7641) with their notifications from local delivery, the
// blocks of responses larger than one block (RFC 7959 §2.4, §3.4), and the end of observations
// that the registry no longer allows. Observation state is observers.ts's, blocks block2.ts's.
import type { Logger } from 'pino';
import type { EdgeMessage } from '../../core/message.js';
import type { Identity } from '../../auth/service.js';
import type { RegistryChange } from '../../auth/device-registry.js';
import { topicFilterProblem } from '../../config/schema.js';
import type { AdapterDeps } from '../adapter.js';
import { Block2Store, MAX_SZX, blockKey, type Representation } from './block2.js';
import type { BlockOption, CoapRequest, Response } from './codec.js';
import { OBSERVE_LIMITS, Observations, type Notice, type Peer, type Transmission } from './observers.js';
import { isFilter, representationOf } from './representation.js';

const CODE = {
  content: '2.05',
  badRequest: '4.00',
  unauthorized: '4.01',
  badOption: '4.02',
  forbidden: '4.03',
  notFound: '4.04',
  unavailable: '5.03',
} as const;

export interface ReadsConfig {
  maxTopicBytes: number;
  /** Max-Age of the 5.03 that ends observations at stop: when to register again */
  retryAfterS: number;
}

export class Reads {
  readonly observations: Observations;
  private readonly blocks: Block2Store;
  private stopped = false;

  constructor(
    private readonly cfg: ReadsConfig,
    private readonly deps: Pick<AdapterDeps, 'gate' | 'retained' | 'events'> & { log: Logger },
    wire: { send(peer: Peer, data: Buffer): void; mid(peer: Peer): number },
    tx: Transmission,
  ) {
    const events = deps.events;
    this.blocks = new Block2Store({
      stored: () => events.coapBlock2('stored'),
      evicted: () => events.coapBlock2('evicted'),
      missing: () => events.coapBlock2('missing'),
    });
    this.observations = new Observations(
      OBSERVE_LIMITS,
      tx,
      wire,
      this.blocks,
      {
        observe: (event) => events.coapObserve(event),
        dropped: () => events.deliveryDropped('coap', 'slow_consumer'),
        endpoints: (delta) => (delta > 0 ? events.connectionOpened('coap', 'udp') : events.connectionClosed('coap', 'udp')),
      },
      (obs) => (obs.exact && this.deps.gate.mayReceive(obs.identity, obs.filter) ? this.retained(obs.filter) : null),
    );
  }

  /** The answer to a GET on /ps/<topic> from an identified device. */
  get(peer: Peer, req: CoapRequest, identity: Identity, topic: string): Response {
    if (req.badBlock2 !== null) return diag(CODE.badRequest, `Block2: ${req.badBlock2}`);
    const problem =
      Buffer.byteLength(topic) > this.cfg.maxTopicBytes ? `it is longer than ${this.cfg.maxTopicBytes} bytes` : topicFilterProblem(topic);
    if (problem) return diag(CODE.badRequest, `"${topic.slice(0, 100)}" is not a valid topic or filter: ${problem}`);
    const exact = !isFilter(topic);
    const now = Date.now();
    // The client asks for smaller blocks than the proxy's 1024 bytes, never larger (RFC 7959 §2.4).
    const szx = Math.min(req.block2?.szx ?? MAX_SZX, MAX_SZX);
    const denied = this.deps.gate.checkSubscribe(identity, 'coap', topic);
    const existing = this.observations.find(peer.address, peer.port, req.token);
    if (denied) {
      // RFC 7641 §4.1: an unsuccessful registration removes the entry it would have replaced.
      if (existing && req.observe === 0 && !req.block2?.num) this.observations.deregister(existing);
      return diag(CODE.forbidden, denied.message);
    }
    // RFC 7959 §2.4, §3.4: the following blocks of a response or notification, asked without
    // Observe. node-coap repeats Observe 0 and the observation's token in them and takes the last
    // block's options for the whole notification's: its answers carry the observation's current
    // sequence number, which says the registration stands and registers nothing again.
    if (req.block2 && req.block2.num > 0) {
      const res = this.block(peer, req.block2, topic, exact, now);
      return req.observe === 0 && existing?.filter === topic && res.code === CODE.content ? { ...res, observe: existing.seq } : res;
    }
    if (req.observe === 0) return this.observe(peer, req, identity, topic, exact, szx, now);
    if (req.observe === 1) {
      if (existing) this.observations.deregister(existing);
      // A filter has no representation of its own to read: the answer says the observation ended.
      if (!exact) return { code: CODE.content };
    }
    if (!exact) return diag(CODE.badRequest, 'a GET without Observe reads one topic; observe a filter with Observe 0');
    return this.read(peer, topic, szx, now);
  }

  /** The retained message of a topic, in blocks when it is larger than one. */
  private read(peer: Peer, topic: string, szx: number, now: number): Response {
    const rep = this.retained(topic);
    if (!rep) return diag(CODE.notFound, `no retained message on ${topic.slice(0, 200)}`);
    return this.blocks.first(blockKey(endpointOf(peer), topic), rep, szx, now);
  }

  private block(peer: Peer, block: BlockOption, topic: string, exact: boolean, now: number): Response {
    const got = this.blocks.next(blockKey(endpointOf(peer), topic), block, now, () => (exact ? this.retained(topic) : null));
    if (got.ok) return got.res;
    if (got.why === 'past_end')
      return diag(CODE.badOption, `block ${block.num} of ${block.size} bytes is past the end of the representation`);
    return diag(CODE.notFound, `no representation of ${topic.slice(0, 150)} is held for you any more: GET it again from block 0`);
  }

  /**
   * A registration (RFC 7641 §3.1, §4.1). The first response carries, for a topic, its retained
   * message; for a filter nothing: its retained matches follow as notifications, one at a time.
   * Over a bound the request is answered as if it had no Observe option, which tells the client
   * that it is not registered (§4.1).
   */
  private observe(peer: Peer, req: CoapRequest, identity: Identity, topic: string, exact: boolean, szx: number, now: number): Response {
    const obs = this.stopped ? null : this.observations.register({ peer, token: req.token, filter: topic, exact, identity, szx }, now);
    const key = blockKey(endpointOf(peer), topic);
    if (!obs) {
      if (!this.stopped)
        this.deps.log.warn(
          { deviceId: identity.deviceId, filter: topic.slice(0, 300) },
          `coap observation of "${topic.slice(0, 300)}" answered without Observe: over ${OBSERVE_LIMITS.perDevice} observations for the device or its address and port, or ${OBSERVE_LIMITS.total} in all`,
        );
      return exact ? this.read(peer, topic, szx, now) : { code: CODE.content };
    }
    const first = this.blocks.first(key, exact ? this.retained(topic) : null, szx, now);
    if (!exact) {
      const { gate, retained } = this.deps;
      const replay = function* (): Generator<Notice> {
        for (const m of retained.matching(topic)) {
          if (gate.mayReceive(identity, m.topic)) yield { rep: representationOf(m, false, true), con: true };
        }
      };
      // After the response to the registration has gone out: its sequence number is the lower.
      setImmediate(() => this.observations.replay(obs, replay(), Date.now()));
    }
    return { ...first, observe: this.observations.nextSeq(obs) };
  }

  private retained(topic: string): Representation | null {
    const msg = this.deps.retained.get(topic);
    return msg ? representationOf(msg, true, false) : null;
  }

  /** Local delivery: a notification to every observation whose filter matches and whose device may still receive it. */
  deliver(msg: EdgeMessage): void {
    if (this.stopped || this.observations.size === 0) return;
    const now = Date.now();
    let asPayload: Representation | null = null;
    let asJson: Representation | null = null;
    for (const obs of this.observations.matching(msg.topic)) {
      if (obs.ending) continue;
      // Asked at every delivery: the registry may have narrowed since the registration.
      if (!this.deps.gate.mayReceive(obs.identity, msg.topic)) continue;
      const rep = obs.exact ? (asPayload ??= representationOf(msg, true, false)) : (asJson ??= representationOf(msg, false, false));
      this.observations.notify(obs, { rep, con: msg.qos > 0 }, now);
    }
  }

  /**
   * A removed or re-keyed device's observations end with 4.01; those outside its narrowed
   * subscribe filters with 4.03 (RFC 7641 §3.2: a notification other than 2.xx ends an observation).
   */
  registryChanged(change: RegistryChange): void {
    const gone = new Set(change.removed);
    const rotated = new Set(change.rotated);
    const narrowed = new Set(change.filtersChanged);
    const now = Date.now();
    for (const obs of [...this.observations.all()]) {
      const { deviceId, by } = obs.identity;
      let res: Response | null = null;
      if (gone.has(deviceId)) res = diag(CODE.unauthorized, 'the device was removed from the registry');
      else if (rotated.has(deviceId) && by === 'token') res = diag(CODE.unauthorized, "the device's token was replaced");
      else if (narrowed.has(deviceId) && !this.deps.gate.stillMaySubscribe(obs.identity, obs.filter))
        res = diag(CODE.forbidden, `"${obs.filter.slice(0, 100)}" is outside the device's subscribe filters now`);
      if (!res) continue;
      this.deps.log.info({ deviceId, filter: obs.filter.slice(0, 300), code: res.code }, `coap observation ended (${res.code})`);
      this.observations.end(obs, res, now);
    }
  }

  acknowledged(peer: Peer, mid: number): boolean {
    return this.observations.acknowledged(peer.address, peer.port, mid, Date.now());
  }

  reset(peer: Peer, mid: number): boolean {
    return this.observations.reset(peer.address, peer.port, mid);
  }

  tick(now: number): void {
    this.observations.tick(now);
    this.blocks.expire(now);
  }

  /** Every observation ends with a non-confirmable 5.03 and Max-Age; nothing is sent after. */
  stop(): void {
    this.stopped = true;
    this.observations.stop({ ...diag(CODE.unavailable, 'the proxy is stopping: register again later'), maxAge: this.cfg.retryAfterS });
  }

  /** Memory held for clients: notifications queued for observers, representations held for their blocks. */
  get heldBytes(): { observeQueues: number; blocks: number } {
    return { observeQueues: this.observations.queuedBytes, blocks: this.blocks.bytes };
  }

  /** Endpoints (address and port) observing anything. */
  connectedCount(): number {
    return this.observations.endpointCount;
  }
}

function endpointOf(peer: Peer): string {
  return `${peer.address}|${peer.port}`;
}

function diag(code: string, text: string): Response {
  // A diagnostic payload is short (RFC 7252 §5.5.2).
  return { code, payload: Buffer.from(text.slice(0, 200)) };
}
