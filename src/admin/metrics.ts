import client from 'prom-client';
import type { Protocol } from '../core/message.js';

// Every edge_* metric of the contract that exists so far, in one registry. Stages get the
// handles they need; label children are bound once here so the hot path only increments.

export type RefuseReason = 'too_large' | 'malformed' | 'acl' | 'cache';
export type DropReason = 'control_topic' | 'hops' | 'derived_limit' | 'qos0_refused' | 'cloud_refused' | 'downlink_invalid';

export interface CacheGaugeSource {
  messagesByPriority(): Record<string, number>;
  bytes(): number;
  oldestAgeSeconds(): number;
  writable(): boolean;
}

export class Metrics {
  readonly registry = new client.Registry();
  private readonly receivedChildren = new Map<Protocol, client.Counter.Internal>();
  private readonly received: client.Counter<'protocol'>;
  readonly refused: client.Counter<'reason'>;
  readonly dropped: client.Counter<'reason'>;
  readonly payloadDecodeErrors: client.Counter;
  readonly cacheWriteErrors: client.Counter;
  readonly cacheRefused: client.Counter;
  readonly cacheEvicted: client.Counter<'priority' | 'reason'>;
  readonly uplinkSent: client.Counter;
  readonly uplinkAcked: client.Counter;
  readonly uplinkConnected: client.Gauge;
  readonly uplinkDrainRate: client.Gauge;
  readonly connections: client.Gauge<'protocol'>;
  readonly downlinkReceived: client.Counter;
  readonly rulesFired: client.Counter<'rule'>;
  readonly ruleErrors: client.Counter<'rule'>;
  readonly ruleWindowTruncated: client.Counter<'rule'>;
  readonly rulesLoaded: client.Gauge;
  readonly rulesVersion: client.Gauge;
  readonly rulesReloadFailures: client.Counter;
  readonly rulesPushes: client.Counter<'source' | 'result'>;
  private cacheSource: CacheGaugeSource | null = null;
  private drainSource: (() => number) | null = null;

  constructor() {
    const registers = [this.registry];
    client.collectDefaultMetrics({ register: this.registry });
    this.received = new client.Counter({ name: 'edge_messages_received_total', help: 'Messages received, by protocol', labelNames: ['protocol'], registers });
    this.refused = new client.Counter({ name: 'edge_messages_refused_total', help: 'Messages refused, by reason', labelNames: ['reason'], registers });
    this.dropped = new client.Counter({ name: 'edge_messages_dropped_total', help: 'Messages accepted but not forwarded, by reason', labelNames: ['reason'], registers });
    this.payloadDecodeErrors = new client.Counter({ name: 'edge_payload_decode_errors_total', help: 'Payloads that claimed JSON or CBOR and did not parse', registers });
    this.cacheWriteErrors = new client.Counter({ name: 'edge_cache_write_errors_total', help: 'Failed writes to the durable cache', registers });
    this.cacheRefused = new client.Counter({ name: 'edge_cache_refused_total', help: 'Messages the cache could not take (full, or not writable)', registers });
    this.cacheEvicted = new client.Counter({ name: 'edge_cache_evicted_total', help: 'Messages evicted from the cache, by priority and reason (bytes, age)', labelNames: ['priority', 'reason'], registers });
    this.uplinkSent = new client.Counter({ name: 'edge_uplink_sent_total', help: 'Publishes sent to the cloud broker (resends included)', registers });
    this.uplinkAcked = new client.Counter({ name: 'edge_uplink_acked_total', help: 'Publishes acknowledged by the cloud broker', registers });
    this.uplinkConnected = new client.Gauge({ name: 'edge_uplink_connected', help: '1 while connected to the cloud broker', registers });
    const drain = (): number => this.drainSource?.() ?? 0;
    this.uplinkDrainRate = new client.Gauge({ name: 'edge_uplink_drain_rate', help: 'Messages acknowledged by the cloud per second, over the last 10 s', registers, collect() { this.set(drain()); } });
    this.connections = new client.Gauge({ name: 'edge_connections', help: 'Connected devices, by protocol', labelNames: ['protocol'], registers });
    this.downlinkReceived = new client.Counter({ name: 'edge_downlink_received_total', help: 'Messages received from the cloud downlink', registers });
    this.rulesFired = new client.Counter({ name: 'edge_rules_fired_total', help: 'Rule firings, by rule', labelNames: ['rule'], registers });
    this.ruleErrors = new client.Counter({ name: 'edge_rule_errors_total', help: 'Runtime faults of rules, by rule', labelNames: ['rule'], registers });
    this.ruleWindowTruncated = new client.Counter({ name: 'edge_rule_window_truncated_total', help: 'Window values dropped at rules.maxWindowValues, by rule', labelNames: ['rule'], registers });
    this.rulesLoaded = new client.Gauge({ name: 'edge_rules_loaded', help: 'Rules in the running ruleset', registers });
    this.rulesVersion = new client.Gauge({ name: 'edge_rules_version', help: 'Version number of the running ruleset', registers });
    this.rulesReloadFailures = new client.Counter({ name: 'edge_rules_reload_failures_total', help: 'Rulesets refused because they had errors (reloads, pushes, rollbacks)', registers });
    this.rulesPushes = new client.Counter({ name: 'edge_rules_pushes_total', help: 'Rules pushes and rollbacks, by source (api, cloud, rollback) and result (applied, unchanged, rejected)', labelNames: ['source', 'result'], registers });
    const source = (): CacheGaugeSource | null => this.cacheSource;
    new client.Gauge({
      name: 'edge_cache_messages', help: 'Messages in the durable cache, by priority', labelNames: ['priority'], registers,
      collect() {
        const s = source();
        if (!s) return;
        for (const [priority, n] of Object.entries(s.messagesByPriority())) this.set({ priority }, n);
      },
    });
    new client.Gauge({ name: 'edge_cache_bytes', help: 'Bytes of messages in the durable cache', registers, collect() { const s = source(); if (s) this.set(s.bytes()); } });
    new client.Gauge({ name: 'edge_cache_oldest_age_seconds', help: 'Age of the oldest message in the cache', registers, collect() { const s = source(); if (s) this.set(s.oldestAgeSeconds()); } });
    new client.Gauge({ name: 'edge_cache_writable', help: '1 while the cache accepts writes', registers, collect() { const s = source(); this.set(s && s.writable() ? 1 : 0); } });
    this.uplinkConnected.set(0);
  }

  receivedFrom(protocol: Protocol): client.Counter.Internal {
    let child = this.receivedChildren.get(protocol);
    if (!child) {
      child = this.received.labels(protocol);
      this.receivedChildren.set(protocol, child);
    }
    return child;
  }

  watchCache(source: CacheGaugeSource): void {
    this.cacheSource = source;
  }

  watchDrainRate(source: () => number): void {
    this.drainSource = source;
  }

  /** The value of a counter or gauge without labels, or the sum over its labels. */
  async total(name: string): Promise<number> {
    const metric = this.registry.getSingleMetric(name);
    if (!metric) return 0;
    const data = await metric.get();
    return data.values.reduce((sum, v) => sum + v.value, 0);
  }
}
