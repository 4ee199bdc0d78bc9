import { priorityRank, type Priority } from '../core/priority.js';
import type { EdgeMessage } from '../core/message.js';
import type { Evaluation } from '../rules/engine.js';
import type { Value } from '../rules/values.js';

const DEVICE_PROTOCOLS = new Set(['mqtt', 'coap', 'ws']);

/** What goes up for one message: the message itself, or a new one made by a rule. */
interface PlannedUplink {
  rule: string | null;
  /** true: the message itself (same id); false: a new message */
  self: boolean;
  topic: string;
  /** for a new message: the value to encode; undefined: the original payload */
  payload: Value | undefined;
  priority: Priority;
}

export interface Plan {
  uplinks: PlannedUplink[];
  /** everything that goes up, events included, in the order the actions asked (default routing last) */
  sends: Array<{ topic: string; priority: Priority; payload: Value | undefined }>;
  publishes: Array<{ rule: string; topic: string; payload: Value; qos: 0 | 1; retain: boolean }>;
  emits: Array<{ rule: string; name: string; data: Value }>;
  infers: Array<{ rule: string; model: string; to: string | null }>;
  logs: Array<{ rule: string; level: 'debug' | 'info' | 'warn' | 'error'; text: Value }>;
  /** actions that could not be carried out: counted in edge_rule_errors_total and logged */
  faults: Array<{ rule: string; message: string }>;
}

/**
 * Turns the rules' collected actions into what happens, in their order: `uplink()` without topic
 * or payload sends the message itself at most once, at the highest priority asked; default routing
 * applies to device messages when no fired rule called uplink, emit or drop; what came from the
 * cloud never goes back up. Pure, so that `edge-proxy rules test` shows exactly what the proxy does.
 */
export function planActions(
  msg: EdgeMessage,
  ev: Evaluation,
  routingDefault: 'uplink' | 'local',
  priorityOf: (topic: string) => Priority,
): Plan {
  const plan: Plan = { uplinks: [], sends: [], publishes: [], emits: [], infers: [], logs: [], faults: [] };
  let self: PlannedUplink | null = null;
  for (const a of ev.actions) {
    const args = a.args;
    switch (a.name) {
      case 'uplink': {
        // A topic given is a new message, even when it evaluates to no string: then there is nothing
        // to send, and the message itself must not go up in its place.
        const hasTopic = Object.hasOwn(args, 'topic');
        const hasPayload = Object.hasOwn(args, 'payload');
        if (hasTopic && typeof args.topic !== 'string') {
          plan.faults.push({ rule: a.rule, message: `uplink(): topic is ${JSON.stringify(args.topic)}, not a string; nothing was sent` });
          break;
        }
        const asked = typeof args.priority === 'string' ? (args.priority as Priority) : null;
        if (!hasTopic && !hasPayload) {
          const priority = asked ?? priorityOf(msg.topic);
          if (!self) {
            self = { rule: a.rule, self: true, topic: msg.topic, payload: undefined, priority };
            plan.uplinks.push(self);
            plan.sends.push(self);
          } else if (priorityRank(priority) < priorityRank(self.priority)) {
            self.priority = priority;
          }
        } else {
          const topic = hasTopic ? (args.topic as string) : msg.topic;
          const derived: PlannedUplink = {
            rule: a.rule,
            self: false,
            topic,
            payload: hasPayload ? args.payload : undefined,
            priority: asked ?? priorityOf(topic),
          };
          plan.uplinks.push(derived);
          plan.sends.push(derived);
        }
        break;
      }
      case 'publish':
        if (typeof args.topic !== 'string')
          plan.faults.push({
            rule: a.rule,
            message: `publish(): topic is ${JSON.stringify(args.topic)}, not a string; nothing was published`,
          });
        else
          plan.publishes.push({
            rule: a.rule,
            topic: args.topic,
            payload: args.payload ?? null,
            qos: args.qos === 1 ? 1 : 0,
            retain: args.retain === true,
          });
        break;
      case 'emit':
        if (typeof args.name === 'string') {
          plan.emits.push({ rule: a.rule, name: args.name, data: args.data ?? null });
          plan.sends.push({ topic: `events/${args.name}`, priority: 'high', payload: args.data ?? null });
        }
        break;
      case 'infer':
        plan.infers.push({
          rule: a.rule,
          model: typeof args.model === 'string' ? args.model : JSON.stringify(args.model),
          to: typeof args.to === 'string' ? args.to : null,
        });
        break;
      case 'log':
        plan.logs.push({ rule: a.rule, level: args.level as Plan['logs'][number]['level'], text: args.text ?? null });
        break;
      default:
        break; // drop() did its work during evaluation
    }
  }
  if (!ev.routed && DEVICE_PROTOCOLS.has(msg.protocol) && routingDefault === 'uplink') {
    const routed: PlannedUplink = { rule: null, self: true, topic: msg.topic, payload: undefined, priority: priorityOf(msg.topic) };
    plan.uplinks.push(routed);
    plan.sends.push(routed);
  }
  if (msg.protocol === 'cloud') {
    plan.uplinks = plan.uplinks.filter((u) => !u.self);
    plan.sends = plan.sends.filter((u) => !(u as PlannedUplink).self);
  }
  return plan;
}

/** A payload given by a rule: objects and lists as JSON, a string as text, other values as JSON text. */
export function encodePayload(v: Value): { bytes: Buffer; contentType: 'json' | 'text' } {
  if (typeof v === 'string') return { bytes: Buffer.from(v), contentType: 'text' };
  const json = Buffer.from(JSON.stringify(v));
  return { bytes: json, contentType: v !== null && typeof v === 'object' ? 'json' : 'text' };
}
