// Observers (RFC 7641): who observes what, and how notifications reach them. An observation is
// keyed by the client's endpoint and token (§4.1: a new registration with both replaces the old).
// Each has a sequence number (24 bits, §4.4), at most one confirmable notification in flight
// (NSTART 1, RFC 7252 §4.7) retransmitted with the RFC 7252 §4.2 back-off, and behind it a queue
// bounded in count and bytes whose overflow drops the oldest. Nothing overtakes a notification in
// flight, non-confirmable ones included: a client drops a notification older than the newest it
// has seen (§3.4), so a later one sent first would make a retransmitted earlier one worthless.
// A notification larger than one block waits, the next one behind it, until the client fetched
// its blocks (block2.ts), so that the representation it is fetching is not replaced under it.
import type { Socket } from 'node:dgram';
import type { Identity } from '../../auth/service.js';
import { FilterIndex } from '../../core/filter-index.js';
import type { AdapterEvents } from '../adapter.js';
import { blockKey, type Block2Store, type Representation } from './block2.js';
import { encodeResponse, type Response } from './codec.js';

export interface Peer {
  socket: Socket;
  address: string;
  port: number;
}

export interface ObserveLimits {
  /** observations one device may hold (its other registrations are answered without Observe) */
  perDevice: number;
  /** observations in all */
  total: number;
  /** observations from one address and port (in open mode every `?d=` is a device of its own) */
  perEndpoint: number;
  /** notifications waiting behind the one in flight, per observation */
  queueCount: number;
  /** their payload bytes; the newest always stays, whatever its size, while the total allows */
  queueBytes: number;
  /** queued notifications' bytes over all observations: past it a new one is dropped */
  totalQueueBytes: number;
}

export const OBSERVE_LIMITS: Readonly<ObserveLimits> = Object.freeze({
  perDevice: 32,
  total: 2_000,
  perEndpoint: 32,
  queueCount: 16,
  queueBytes: 64 * 1024,
  totalQueueBytes: 16 * 1024 * 1024,
});

/** RFC 7252 §4.8 transmission parameters. */
export interface Transmission {
  ackTimeoutMs: number;
  randomFactor: number;
  maxRetransmit: number;
}

/** RFC 7641 §4.5: a confirmable notification at least this often, to learn whether the client is still there. */
const CON_AT_LEAST_EVERY_MS = 24 * 3600 * 1000;
/** At most this long a block-wise notification holds back the next one while its blocks are fetched. */
const TRANSFER_WAIT_MS = 10_000;
/** Message ids of recent notifications kept per observation, so that a reset to any of them deregisters (§3.6). */
const RECENT_MIDS = 8;
/** Bookkeeping per queued notification besides its payload. */
const NOTICE_OVERHEAD = 64;

/** One notification to send. */
export interface Notice {
  rep: Representation;
  /** confirmable: a QoS 1 message, a retained one */
  con: boolean;
}

interface InFlight {
  mid: number;
  data: Buffer;
  attempts: number;
  timeoutMs: number;
  dueAt: number;
  /** the response that ends the observation (4.01, 4.03): acknowledged or not, the observation goes */
  final: boolean;
}

export interface Observation {
  /** address|port|token */
  readonly key: string;
  /** address|port */
  readonly endpoint: string;
  readonly peer: Peer;
  readonly token: Buffer;
  filter: string;
  /** one topic: notifications carry its payload as it is; else the JSON of each message */
  exact: boolean;
  identity: Identity;
  /** the block size the client asked for (RFC 7959 §2.4), else MAX_SZX */
  szx: number;
  seq: number;
  lastConAt: number;
  inflight: InFlight | null;
  queue: Array<{ notice: Notice; bytes: number }>;
  queueBytes: number;
  /** the retained messages of a new observation, handed over one at a time before the queue */
  replay: Iterator<Notice> | null;
  /** the final response, waiting for the notification in flight; nothing more is queued */
  ending: Response | null;
  recentMids: number[];
  gone: boolean;
}

export type ObserveEvent = Parameters<AdapterEvents['coapObserve']>[0];

export interface ObserverEvents {
  observe(event: ObserveEvent): void;
  /** a queued notification dropped to stay within the queue's bounds */
  dropped(): void;
  /** an endpoint started (+1) or stopped (-1) observing anything */
  endpoints(delta: 1 | -1): void;
}

export interface Registration {
  peer: Peer;
  token: Buffer;
  filter: string;
  exact: boolean;
  identity: Identity;
  szx: number;
}

export class Observations {
  private readonly byKey = new Map<string, Observation>();
  /** the same, under their filters: a message costs what its matching observations cost, not all of them */
  private readonly byFilter = new FilterIndex<Observation>();
  /** address|port|mid of recent notifications */
  private readonly byMid = new Map<string, Observation>();
  private readonly perEndpoint = new Map<string, number>();
  private readonly perDevice = new Map<string, number>();
  /** bytes queued over all observations */
  private queued = 0;

  constructor(
    private readonly limits: ObserveLimits,
    private readonly tx: Transmission,
    private readonly wire: { send(peer: Peer, data: Buffer): void; mid(peer: Peer): number },
    private readonly blocks: Block2Store,
    private readonly events: ObserverEvents,
    /** what an observation's resource is now, for a probe: a topic's retained message, else nothing */
    private readonly current: (obs: Observation) => Representation | null = () => null,
  ) {}

  static key(address: string, port: number, token: Buffer): string {
    return `${address}|${port}|${token.toString('hex')}`;
  }

  /**
   * Add an observation, or replace the one with the same endpoint and token (its sequence number
   * goes on, so the client still takes what follows as newer). Null when over a bound.
   */
  register(r: Registration, now: number): Observation | null {
    const key = Observations.key(r.peer.address, r.peer.port, r.token);
    const old = this.byKey.get(key);
    const sameDevice = old?.identity.deviceId === r.identity.deviceId;
    if (old && old.ending === null && (sameDevice || (this.perDevice.get(r.identity.deviceId) ?? 0) < this.limits.perDevice)) {
      // What was queued was chosen for the old filter and checked for the old device.
      if (old.filter !== r.filter || !sameDevice) this.clearQueue(old);
      this.countDevice(old.identity.deviceId, -1);
      this.countDevice(r.identity.deviceId, 1);
      if (old.filter !== r.filter) this.refile(old, r.filter);
      Object.assign(old, { filter: r.filter, exact: r.exact, identity: r.identity, szx: r.szx, replay: null });
      this.events.observe('replaced');
      return old;
    }
    if (old) this.remove(old);
    const endpoint = `${r.peer.address}|${r.peer.port}`;
    if (
      this.byKey.size >= this.limits.total ||
      (this.perDevice.get(r.identity.deviceId) ?? 0) >= this.limits.perDevice ||
      (this.perEndpoint.get(endpoint) ?? 0) >= this.limits.perEndpoint
    ) {
      this.events.observe('refused');
      return null;
    }
    const obs: Observation = {
      key,
      endpoint,
      peer: r.peer,
      // A copy: the request's token is a slice of its datagram, which would stay in memory with it.
      token: Buffer.from(r.token),
      filter: r.filter,
      exact: r.exact,
      identity: r.identity,
      szx: r.szx,
      seq: old ? old.seq : 1,
      lastConAt: now,
      inflight: null,
      queue: [],
      queueBytes: 0,
      replay: null,
      ending: null,
      recentMids: [],
      gone: false,
    };
    this.byKey.set(key, obs);
    this.byFilter.add(obs.filter, obs);
    this.countDevice(obs.identity.deviceId, 1);
    const n = this.perEndpoint.get(obs.endpoint) ?? 0;
    this.perEndpoint.set(obs.endpoint, n + 1);
    if (n === 0) this.events.endpoints(1);
    this.events.observe('registered');
    return obs;
  }

  /** The Observe value of the registration's response: the next in the observation's sequence. */
  nextSeq(obs: Observation): number {
    obs.seq = (obs.seq + 1) & 0xffffff;
    return obs.seq;
  }

  find(address: string, port: number, token: Buffer): Observation | undefined {
    const obs = this.byKey.get(Observations.key(address, port, token));
    return obs && obs.ending === null ? obs : undefined;
  }

  /** The retained messages a new observation receives first, pulled one at a time as notifications go out. */
  replay(obs: Observation, notices: Iterator<Notice>, now: number): void {
    obs.replay = notices;
    this.pump(obs, now);
  }

  notify(obs: Observation, notice: Notice, now: number): void {
    if (obs.gone || obs.ending) return;
    const bytes = NOTICE_OVERHEAD + notice.rep.payload.length;
    obs.queue.push({ notice, bytes });
    obs.queueBytes += bytes;
    this.queued += bytes;
    while (obs.queue.length > this.limits.queueCount || (obs.queueBytes > this.limits.queueBytes && obs.queue.length > 1)) {
      this.unqueue(obs);
      this.events.dropped();
    }
    // Over the total, what this observation holds goes, the newest last: the others' queues are theirs.
    while (this.queued > this.limits.totalQueueBytes && obs.queue.length > 0) {
      this.unqueue(obs);
      this.events.dropped();
    }
    this.pump(obs, now);
  }

  /** End an observation with a final response (4.01, 4.03, no Observe: RFC 7641 §3.2), once what is in flight is done. */
  end(obs: Observation, res: Response, now: number): void {
    if (obs.gone || obs.ending) return;
    obs.ending = res;
    this.clearQueue(obs);
    obs.replay = null;
    this.events.observe('revoked');
    this.pump(obs, now);
  }

  /** A client's GET with Observe 1 (RFC 7641 §3.6). */
  deregister(obs: Observation): void {
    this.remove(obs);
    this.events.observe('deregistered');
  }

  /** An ACK from `endpoint`; true when it acknowledged a notification. */
  acknowledged(address: string, port: number, mid: number, now: number): boolean {
    const obs = this.byMid.get(`${address}|${port}|${mid}`);
    if (!obs || obs.inflight?.mid !== mid) return obs !== undefined;
    const final = obs.inflight.final;
    obs.inflight = null;
    if (final) this.remove(obs);
    else this.pump(obs, now);
    return true;
  }

  /** A RST from `endpoint`; true when it rejected a notification, which deregisters (RFC 7641 §3.6). */
  reset(address: string, port: number, mid: number): boolean {
    const obs = this.byMid.get(`${address}|${port}|${mid}`);
    if (!obs) return false;
    const ending = obs.ending !== null;
    this.remove(obs);
    if (!ending) this.events.observe('reset');
    return true;
  }

  /** Retransmissions, the end of unacknowledged observers, and queues held back by a block-wise transfer. */
  tick(now: number): void {
    for (const obs of this.byKey.values()) {
      const f = obs.inflight;
      if (f) {
        if (f.dueAt > now) continue;
        if (f.attempts >= this.tx.maxRetransmit) {
          // RFC 7641 §4.5: a client that does not acknowledge a confirmable notification is no longer interested.
          this.remove(obs);
          if (!f.final) this.events.observe('unacknowledged');
          continue;
        }
        f.attempts++;
        f.timeoutMs *= 2;
        f.dueAt = now + f.timeoutMs;
        this.wire.send(obs.peer, f.data);
      } else if (obs.queue.length > 0 || obs.replay || obs.ending) this.pump(obs, now);
      else if (now - obs.lastConAt >= CON_AT_LEAST_EVERY_MS) this.probe(obs, now);
    }
  }

  /**
   * At stop: each observation ends with `final` (5.03, non-confirmable: there is nobody left to
   * retransmit it), and nothing more is sent.
   */
  stop(final: Response): void {
    for (const obs of [...this.byKey.values()]) {
      if (!obs.ending || obs.inflight?.final !== true)
        this.wire.send(obs.peer, encodeResponse(final, 'non', this.wire.mid(obs.peer), obs.token));
      this.remove(obs);
    }
  }

  all(): IterableIterator<Observation> {
    return this.byKey.values();
  }

  /** The observations whose filter matches `topic` (MQTT matching), each once; ending ones included. */
  matching(topic: string): readonly Observation[] {
    return this.byFilter.match(topic);
  }

  /** An observation's filter changed on a new registration with its token: it is found under the new one. */
  private refile(obs: Observation, filter: string): void {
    this.byFilter.remove(obs.filter, obs);
    this.byFilter.add(filter, obs);
  }

  get size(): number {
    return this.byKey.size;
  }

  /** Endpoints (address and port) observing anything. */
  get endpointCount(): number {
    return this.perEndpoint.size;
  }

  private pump(obs: Observation, now: number): void {
    while (!obs.gone && !obs.inflight) {
      if (this.blocks.busy(blockKey(obs.endpoint, obs.filter), now, TRANSFER_WAIT_MS)) return;
      if (obs.ending) {
        this.transmit(obs, obs.ending, true, now);
        return;
      }
      let notice: Notice | undefined;
      if (obs.replay) {
        const r = obs.replay.next();
        if (r.done) obs.replay = null;
        else notice = r.value;
      }
      if (!notice) {
        const queued = this.unqueue(obs);
        if (!queued) return;
        notice = queued.notice;
      }
      const base = this.blocks.first(blockKey(obs.endpoint, obs.filter), notice.rep, obs.szx, now);
      const con = notice.con || now - obs.lastConAt >= CON_AT_LEAST_EVERY_MS;
      this.transmit(obs, { ...base, observe: this.nextSeq(obs) }, con, now);
    }
  }

  /**
   * An observation without a confirmable exchange for a day gets one, of what its resource is now
   * (RFC 7641 §4.5): a device that went away without deregistering is found out and its place freed
   * once the retransmissions go unanswered, even on a topic where nothing is published.
   */
  private probe(obs: Observation, now: number): void {
    const base = this.blocks.first(blockKey(obs.endpoint, obs.filter), this.current(obs), obs.szx, now);
    this.transmit(obs, { ...base, observe: this.nextSeq(obs) }, true, now);
  }

  private transmit(obs: Observation, res: Response, con: boolean, now: number): void {
    const mid = this.wire.mid(obs.peer);
    const data = encodeResponse(res, con ? 'con' : 'non', mid, obs.token);
    this.remember(obs, mid);
    if (con) {
      const timeoutMs = this.tx.ackTimeoutMs * (1 + Math.random() * (this.tx.randomFactor - 1));
      obs.inflight = { mid, data, attempts: 0, timeoutMs, dueAt: now + timeoutMs, final: obs.ending !== null };
      obs.lastConAt = now;
    }
    this.wire.send(obs.peer, data);
  }

  private remember(obs: Observation, mid: number): void {
    obs.recentMids.push(mid);
    this.byMid.set(`${obs.endpoint}|${mid}`, obs);
    if (obs.recentMids.length > RECENT_MIDS) this.forget(obs, obs.recentMids.shift()!);
  }

  private forget(obs: Observation, mid: number): void {
    const key = `${obs.endpoint}|${mid}`;
    if (this.byMid.get(key) === obs) this.byMid.delete(key);
  }

  private remove(obs: Observation): void {
    if (obs.gone) return;
    obs.gone = true;
    obs.inflight = null;
    this.clearQueue(obs);
    obs.replay = null;
    if (this.byKey.get(obs.key) === obs) this.byKey.delete(obs.key);
    this.byFilter.remove(obs.filter, obs);
    for (const mid of obs.recentMids) this.forget(obs, mid);
    this.countDevice(obs.identity.deviceId, -1);
    const n = (this.perEndpoint.get(obs.endpoint) ?? 1) - 1;
    if (n > 0) this.perEndpoint.set(obs.endpoint, n);
    else {
      this.perEndpoint.delete(obs.endpoint);
      this.events.endpoints(-1);
    }
  }

  /** The oldest queued notification of `obs`, out of its queue and out of the total. */
  private unqueue(obs: Observation): { notice: Notice; bytes: number } | undefined {
    const queued = obs.queue.shift();
    if (queued) {
      obs.queueBytes -= queued.bytes;
      this.queued -= queued.bytes;
    }
    return queued;
  }

  private clearQueue(obs: Observation): void {
    this.queued -= obs.queueBytes;
    obs.queue = [];
    obs.queueBytes = 0;
  }

  /** Bytes of notifications queued over all observations. */
  get queuedBytes(): number {
    return this.queued;
  }

  private countDevice(deviceId: string, delta: number): void {
    const n = (this.perDevice.get(deviceId) ?? 0) + delta;
    if (n > 0) this.perDevice.set(deviceId, n);
    else this.perDevice.delete(deviceId);
  }
}
