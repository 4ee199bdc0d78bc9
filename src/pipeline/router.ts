import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import type { EdgeMessage, Protocol } from '../core/message.js';
import { EdgeError } from '../core/errors.js';
import { newMessageId } from '../core/ids.js';
import { checkDeviceTopic } from '../core/topic.js';
import { asBuffer } from '../core/bytes.js';
import type { RuleSet, Evaluation } from '../rules/engine.js';
import { decodePayload } from '../rules/payload.js';
import { fromJson, type Value } from '../rules/values.js';
import { dropParsed, keepParsed, parsedOf } from './parsed-payloads.js';
import { msgValue } from '../rules/msg.js';
import type { LocalDelivery } from './local.js';
import type { Priority } from '../core/priority.js';
import { PriorityTable } from './priorities.js';
import { encodePayload, planActions, type Plan } from './plan.js';
import type { InferRequest, InferenceResult } from '../inference/runner.js';

/** What the router needs of the uplink stage. */
export interface UplinkStage {
  submit(msg: EdgeMessage, priority: Priority, done: (err: EdgeError | null) => void): void;
}

/** What the router needs of local inference: null when queued, else why the input was refused. */
export interface InferenceStage {
  submit(req: InferRequest): string | null;
}

/** What the router reports; metrics hang on these. */
export interface RouterEvents {
  received(protocol: Protocol): void;
  ruleFired(rule: string): void;
  ruleFailed(rule: string): void;
  dropped(reason: 'hops' | 'derived_limit'): void;
  payloadUndecodable(): void;
}

/** The running ruleset, swapped as a whole (hot reload replaces `current`). */
export interface RulesHolder {
  current: RuleSet | null;
}

export interface RouterOptions {
  routing: Config['routing'];
  maxHops: number;
  maxTopicBytes: number;
  edge: { id: string; uplinkConnected(): boolean };
  /** what rules read as `device`: the registry's attrs of a device, null when it has none */
  deviceAttrs(deviceId: string): Value;
}

const EMPTY: Evaluation = { fired: [], actions: [], dropped: false, routed: false, errors: [] };
const MAX_DERIVED_PER_MESSAGE = 64;
const EMPTY_PAYLOAD = Buffer.alloc(0);

/**
 * accept → rules → actions. Each message is evaluated by the running ruleset; the actions the
 * fired rules collected are carried out in order, and default routing applies when no fired rule
 * decided. `done` is the acceptance: it runs once everything the message sends up is committed,
 * and the adapter acknowledges the device only then.
 */
export class Router {
  private readonly priorities: PriorityTable;
  private readonly faultLogged = new Map<string, number>();
  /** the messages rules may still make, shared by a root message and everything made from it */
  private readonly budgets = new WeakMap<EdgeMessage, { left: number }>();

  constructor(
    private readonly opts: RouterOptions,
    private readonly uplink: UplinkStage,
    private readonly local: LocalDelivery,
    private readonly inference: InferenceStage,
    private readonly rules: RulesHolder,
    private readonly events: RouterEvents,
    private readonly log: Logger,
  ) {
    this.priorities = new PriorityTable(opts.routing.priorities);
  }

  /**
   * A message from a device. Once it is accepted (committed where it goes up) it is delivered to
   * local subscribers of every protocol, dropped by the rules or not, as any broker would. A QoS 1
   * or 2 message the cache could not take is not: the device sends it again, and it is delivered
   * then. A QoS 0 message is delivered whatever became of its uplink copy: nobody sends it again,
   * and local automation must go on with a full disk.
   */
  acceptFromDevice(msg: EdgeMessage, done: (err: EdgeError | null) => void): void {
    this.events.received(msg.protocol);
    let ev: Evaluation;
    try {
      ev = this.evaluate(msg);
    } catch (err) {
      // Not acknowledged rather than acknowledged and lost: the device sends it again.
      this.log.error(
        { deviceId: msg.deviceId, topic: msg.topic, err: (err as Error).message },
        'a device message could not be evaluated; it is not acknowledged',
      );
      dropParsed(msg);
      done(new EdgeError('E_INTERNAL', `the message could not be processed: ${(err as Error).message}`));
      return;
    }
    this.carryOut(msg, ev, (err) => {
      if (!err || msg.qos === 0) this.local.deliver(msg);
      done(err);
    });
    dropParsed(msg);
  }

  /** A message from the cloud downlink: published locally, evaluated by the rules, never sent back up. */
  acceptFromCloud(msg: EdgeMessage): void {
    this.events.received('cloud');
    this.local.deliver(msg);
    this.carryOut(msg, this.evaluate(msg), () => {});
    dropParsed(msg);
  }

  /**
   * A model's result (infer()): a derived message of the input, with the input's device and budget
   * and one more hop, delivered locally and evaluated like any message a rule makes.
   */
  acceptInference(r: InferenceResult): void {
    const derived = this.tryDerive(r.rule, r.parent, r.topic, r.payload);
    if (derived) this.acceptInternal(derived);
  }

  /** A message made by a rule (publish, emit): delivered locally, then evaluated in turn. */
  private acceptInternal(msg: EdgeMessage): void {
    this.events.received('internal');
    try {
      this.local.deliver(msg);
      this.carryOut(msg, this.evaluate(msg), () => {});
      dropParsed(msg);
    } catch (err) {
      // Runs from setImmediate: nothing may escape into the event loop.
      this.log.error({ topic: msg.topic, err: (err as Error).message }, 'a message made by a rule could not be handled');
    }
  }

  evaluate(msg: EdgeMessage): Evaluation {
    const rules = this.rules.current;
    if (!rules) return EMPTY;
    const ev = rules.evaluate(msg, {
      payload: () => this.payloadOf(msg),
      msgValue: () => msgValue(msg),
      device: this.opts.deviceAttrs(msg.deviceId),
      edge: { id: this.opts.edge.id, uplinkConnected: this.opts.edge.uplinkConnected() },
    });
    for (const f of ev.fired) this.events.ruleFired(f.rule);
    for (const e of ev.errors) this.fault(e.rule, e.error.message, msg);
    return ev;
  }

  /**
   * The decoded payload, parsed once per message (by the ingress gate for JSON and text, else here
   * when a rule or a model first reads it) and kept until the message is routed. The gate parses as
   * decode() would, but that it leaves out a leading byte order mark: such a payload reads as its
   * JSON, not as undecodable.
   */
  private payloadOf(msg: EdgeMessage): Value {
    const kept = parsedOf(msg);
    if (kept) return fromJson(kept.value);
    const value = this.decode(msg);
    keepParsed(msg, value);
    return value;
  }

  /** The payload as rules read it. */
  private decode(msg: EdgeMessage): Value {
    const decoded = decodePayload(msg.contentType, asBuffer(msg.payload));
    if (decoded.ok) return decoded.value;
    this.events.payloadUndecodable();
    return null;
  }

  private fault(rule: string, message: string, msg: EdgeMessage): void {
    this.events.ruleFailed(rule);
    const now = Date.now();
    // At most one line a minute per rule: a faulty rule on a busy topic must not flood the log.
    if ((this.faultLogged.get(rule) ?? 0) > now - 60_000) return;
    this.faultLogged.set(rule, now);
    this.log.warn(
      { rule, deviceId: msg.deviceId, topic: msg.topic, err: message },
      `rule "${rule}" failed at run time (counted in edge_rule_errors_total; logged at most once a minute)`,
    );
  }

  private carryOut(msg: EdgeMessage, ev: Evaluation, done: (err: EdgeError | null) => void): void {
    let plan: Plan;
    try {
      plan = planActions(msg, ev, this.opts.routing.default, (t) => this.priorities.priorityOf(t));
    } catch (err) {
      this.fault(ev.fired[0]?.rule ?? '', `the actions could not be planned: ${(err as Error).message}`, msg);
      done(null);
      return;
    }
    let pending = 1;
    let failure: EdgeError | null = null;
    const settle = (err: EdgeError | null): void => {
      if (err && !failure) failure = err;
      if (--pending === 0) done(failure);
    };
    for (const u of plan.uplinks) {
      if (u.self) {
        pending++;
        this.uplink.submit(msg, u.priority, settle);
        continue;
      }
      const derived = this.tryDerive(u.rule ?? '', msg, u.topic, u.payload);
      if (!derived) continue;
      pending++;
      this.uplink.submit(derived, u.priority, settle);
    }
    for (const p of plan.publishes) {
      const derived = this.tryDerive(p.rule, msg, p.topic, p.payload, { qos: p.qos, retain: p.retain });
      if (derived) setImmediate(() => this.acceptInternal(derived));
    }
    for (const e of plan.emits) {
      const derived = this.tryDerive(e.rule, msg, `events/${e.name}`, e.data);
      if (!derived) continue;
      pending++;
      this.uplink.submit(derived, 'high', settle);
      setImmediate(() => this.acceptInternal(derived));
    }
    if (plan.infers.length > 0) {
      const payload = (): Value => this.payloadOf(msg);
      const parent = this.withoutPayload(msg);
      for (const i of plan.infers) {
        const refused = this.inference.submit({ rule: i.rule, model: i.model, to: i.to, parent, payload });
        if (refused) this.fault(i.rule, `infer("${i.model}"): ${refused}`, msg);
      }
    }
    for (const f of plan.faults) this.fault(f.rule, f.message, msg);
    for (const l of plan.logs) {
      try {
        this.log[l.level](
          { rule: l.rule, deviceId: msg.deviceId, topic: msg.topic },
          typeof l.text === 'string' ? l.text : JSON.stringify(l.text),
        );
      } catch (err) {
        this.fault(l.rule, `log(): ${(err as Error).message}`, msg);
      }
    }
    settle(null);
  }

  /**
   * derive() that never throws: a payload too deep to encode (JSON.stringify of a hostile
   * nesting) is the rule's fault, counted and logged, not the proxy's end. Every root message has
   * a budget of messages its rules may make, however they chain, so one message cannot fan out
   * into thousands.
   */
  private tryDerive(
    rule: string,
    parent: EdgeMessage,
    topic: string,
    payload: Value | undefined,
    opts: { qos?: 0 | 1; retain?: boolean } = {},
  ): EdgeMessage | null {
    const budget = this.budgetOf(parent);
    if (budget.left <= 0) {
      this.events.dropped('derived_limit');
      this.fault(rule, `more than ${MAX_DERIVED_PER_MESSAGE} messages made from one message; the rest are not made`, parent);
      return null;
    }
    try {
      const derived = this.derive(rule, parent, topic, payload, opts);
      if (derived) {
        budget.left--;
        this.budgets.set(derived, budget);
      }
      return derived;
    } catch (err) {
      this.fault(rule, `cannot make a message on "${topic.slice(0, 200)}": ${(err as Error).message}`, parent);
      return null;
    }
  }

  private budgetOf(msg: EdgeMessage): { left: number } {
    let budget = this.budgets.get(msg);
    if (!budget) {
      budget = { left: MAX_DERIVED_PER_MESSAGE };
      this.budgets.set(msg, budget);
    }
    return budget;
  }

  /**
   * The message as a model's result needs it while the input waits for its batch: everything but
   * the payload (up to limits.maxPayloadBytes, which a queue of inputs must not hold), with the
   * same budget of derived messages.
   */
  private withoutPayload(msg: EdgeMessage): EdgeMessage {
    const light: EdgeMessage = { ...msg, payload: EMPTY_PAYLOAD, props: {} };
    this.budgets.set(light, this.budgetOf(msg));
    return light;
  }

  /** A new message made from `parent` by a rule: new id, parent's device, hops + 1 within the limit. */
  private derive(
    ruleOf: string,
    parent: EdgeMessage,
    topic: string,
    payload: Value | undefined,
    opts: { qos?: 0 | 1; retain?: boolean } = {},
  ): EdgeMessage | null {
    const hops = parent.hops + 1;
    if (hops > this.opts.maxHops) {
      this.events.dropped('hops');
      return null;
    }
    const problem = checkDeviceTopic(topic, this.opts.maxTopicBytes);
    if (problem) {
      this.fault(ruleOf, `cannot make a message on topic "${topic.slice(0, 300)}": ${problem}`, parent);
      return null;
    }
    const encoded = payload === undefined ? { bytes: parent.payload, contentType: parent.contentType } : encodePayload(payload);
    const now = Date.now();
    return {
      id: newMessageId(now),
      ts: now,
      deviceId: parent.deviceId,
      protocol: 'internal',
      topic,
      payload: encoded.bytes,
      contentType: encoded.contentType,
      qos: opts.qos ?? 0,
      retain: opts.retain ?? false,
      props: {},
      hops,
      parentId: parent.id,
    };
  }
}
