import client from 'prom-client';
import type { Protocol } from '../core/message.js';
import type { AdapterEvents, Transport } from '../adapters/adapter.js';
import type { HttpEndpointEvents } from '../adapters/http/endpoint.js';
import type { DeviceProtocol, IngressEvents } from '../pipeline/ingress.js';
import type { LocalDeliveryEvents } from '../pipeline/local.js';
import type { RouterEvents } from '../pipeline/router.js';
import type { CacheEvents, CacheStats } from '../uplink/cache.js';
import type { ForwarderEvents } from '../uplink/forwarder.js';
import type { UplinkEvents } from '../uplink/uplink.js';
import type { InferenceEvents } from '../inference/runner.js';
import type { ModelRegistryEvents } from '../inference/registry.js';

// Every edge_* metric of the contract that exists so far, in one registry. Stages do not know it:
// each declares the events it reports, and the observers below turn them into counts. Label
// children are bound once and kept, so the hot path only increments.

/** A label child per value, bound at its first use. */
function children<L extends string>(counter: client.Counter<L>, label: L): (value: string) => client.Counter.Internal {
  const bound = new Map<string, client.Counter.Internal>();
  return (value) => {
    let child = bound.get(value);
    if (!child) {
      child = counter.labels({ [label]: value } as Partial<Record<L, string>>);
      bound.set(value, child);
    }
    return child;
  };
}

export class Metrics {
  readonly registry = new client.Registry();
  private readonly received: (protocol: string) => client.Counter.Internal;
  private readonly refused: (reason: string) => client.Counter.Internal;
  private readonly dropped: (reason: string) => client.Counter.Internal;
  private readonly rulesFired: (rule: string) => client.Counter.Internal;
  private readonly ruleErrors: (rule: string) => client.Counter.Internal;
  private readonly deliveredLocally: (protocol: string) => client.Counter.Internal;
  readonly authFailures: client.Counter<'protocol' | 'reason'>;
  private readonly upgradesRefused: client.Counter<'reason'>;
  private readonly slowConsumersClosed: client.Counter<'protocol'>;
  private readonly coapExchanges: client.Counter<'event'>;
  private readonly adapterMemory: client.Gauge<'protocol' | 'structure'>;
  private readonly coapBlock1: client.Counter<'event'>;
  private readonly coapObserve: client.Counter<'event'>;
  private readonly coapBlock2: client.Counter<'event'>;
  readonly payloadDecodeErrors: client.Counter;
  readonly cacheWriteErrors: client.Counter;
  readonly cacheRefused: client.Counter;
  readonly cacheEvicted: client.Counter<'priority' | 'reason'>;
  readonly uplinkSent: client.Counter;
  readonly uplinkAcked: client.Counter;
  readonly uplinkConnected: client.Gauge;
  readonly connections: client.Gauge<'protocol' | 'transport'>;
  readonly downlinkReceived: client.Counter;
  readonly ruleWindowTruncated: client.Counter<'rule'>;
  readonly rulesLoaded: client.Gauge;
  readonly rulesVersion: client.Gauge;
  readonly rulesReloadFailures: client.Counter;
  readonly rulesPushes: client.Counter<'source' | 'result'>;
  readonly registryDevices: client.Gauge;
  readonly registryReloadFailures: client.Counter;
  private readonly inferenceSeconds: client.Histogram<'model' | 'stage'>;
  private readonly inferenceTotal: client.Counter<'model' | 'label'>;
  private readonly inferenceBatchSize: client.Histogram<'model'>;
  private readonly inferenceErrors: client.Counter<'model' | 'reason'>;
  private readonly inferenceShed: client.Counter<'model'>;
  private readonly inferenceWindowsEvicted: client.Counter<'model'>;
  private readonly inferenceWindowBytes: client.Gauge;
  private readonly inferenceQueueBytes: client.Gauge;
  private readonly modelsLoaded: client.Counter<'model'>;
  private cacheSource: CacheStats | null = null;
  private retainedSource: { readonly size: number; readonly bytes: number } | null = null;
  private drainSource: (() => number) | null = null;

  constructor(opts: { loopMonitorMs: number } = { loopMonitorMs: 10 }) {
    const registers = [this.registry];
    // admin.loopMonitorMs: 1 ms shows a stall of a few ms (at 10 ms an idle loop reads 11 ms) but wakes an idle
    // board 1,000 times a second (about 4 % of a core here), so it is for measuring, not the default.
    client.collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: opts.loopMonitorMs });
    const counter = <L extends string>(name: string, help: string, labelNames: L[] = []): client.Counter<L> =>
      new client.Counter({ name, help, labelNames, registers });
    this.received = children(counter('edge_messages_received_total', 'Messages received, by protocol', ['protocol']), 'protocol');
    this.refused = children(counter('edge_messages_refused_total', 'Messages refused, by reason', ['reason']), 'reason');
    this.dropped = children(counter('edge_messages_dropped_total', 'Messages accepted but not forwarded, by reason', ['reason']), 'reason');
    this.deliveredLocally = children(
      counter('edge_local_deliveries_total', 'Messages handed to local subscribers of every protocol, by the protocol they came from', [
        'protocol',
      ]),
      'protocol',
    );
    this.authFailures = counter(
      'edge_auth_failures_total',
      'Devices refused: unknown_device, bad_token, acl (a topic outside its filters), tls; by protocol',
      ['protocol', 'reason'],
    );
    this.payloadDecodeErrors = counter('edge_payload_decode_errors_total', 'Payloads that claimed JSON or CBOR and did not parse');
    this.cacheWriteErrors = counter('edge_cache_write_errors_total', 'Failed writes to the durable cache');
    this.cacheRefused = counter('edge_cache_refused_total', 'Messages the cache could not take (full, or not writable)');
    this.cacheEvicted = counter('edge_cache_evicted_total', 'Messages evicted from the cache, by priority and reason (bytes, age)', [
      'priority',
      'reason',
    ]);
    this.uplinkSent = counter('edge_uplink_sent_total', 'Publishes sent to the cloud broker (resends included)');
    this.uplinkAcked = counter('edge_uplink_acked_total', 'Publishes acknowledged by the cloud broker');
    this.uplinkConnected = new client.Gauge({ name: 'edge_uplink_connected', help: '1 while connected to the cloud broker', registers });
    const drain = (): number => this.drainSource?.() ?? 0;
    new client.Gauge({
      name: 'edge_uplink_drain_rate',
      help: 'Messages acknowledged by the cloud per second, over the last 10 s',
      registers,
      collect() {
        this.set(drain());
      },
    });
    this.upgradesRefused = counter(
      'edge_ws_upgrades_refused_total',
      'WebSocket upgrades refused before the handshake: not_found, subprotocol, per_address, origin, auth, unavailable',
      ['reason'],
    );
    this.slowConsumersClosed = counter(
      'edge_slow_consumers_closed_total',
      'Subscribers closed because their send buffer stayed over its limit (WebSocket close 1013), by protocol',
      ['protocol'],
    );
    this.coapExchanges = counter(
      'edge_coap_exchanges_total',
      'CoAP exchanges by event: duplicate (a retransmission answered again, not processed), evicted (forgotten early to keep deduplication memory under its cap), separate_response, separate_unacknowledged',
      ['event'],
    );
    this.adapterMemory = new client.Gauge({
      name: 'edge_adapter_memory_bytes',
      help: 'Bytes a device adapter holds for its peers, by protocol and structure (each bounded: docs/coap.md names the bounds)',
      labelNames: ['protocol', 'structure'],
      registers,
    });
    this.coapBlock1 = counter(
      'edge_coap_block_uploads_total',
      'CoAP block-wise uploads (Block1) by event: completed (reassembled), expired (idle too long), evicted (dropped to stay under the memory cap), too_large (4.13), incomplete (a block out of order, 4.08)',
      ['event'],
    );
    this.coapObserve = counter(
      'edge_coap_observations_total',
      'CoAP observations by event: registered, replaced, refused (over a bound, answered without Observe), deregistered, reset, unacknowledged (a confirmable notification never acknowledged), revoked (ended 4.01 or 4.03 by a registry change)',
      ['event'],
    );
    this.coapBlock2 = counter(
      'edge_coap_block_responses_total',
      'CoAP block-wise responses (Block2) by event: stored (a representation held for its following blocks), evicted (dropped early to stay under the memory cap), missing (a block asked of a representation no longer held)',
      ['event'],
    );
    this.connections = new client.Gauge({
      name: 'edge_connections',
      help: 'Connected devices, by protocol and transport (tcp, tls, ws, udp)',
      labelNames: ['protocol', 'transport'],
      registers,
    });
    this.downlinkReceived = counter('edge_downlink_received_total', 'Messages received from the cloud downlink');
    this.rulesFired = children(counter('edge_rules_fired_total', 'Rule firings, by rule', ['rule']), 'rule');
    this.ruleErrors = children(counter('edge_rule_errors_total', 'Runtime faults of rules, by rule', ['rule']), 'rule');
    this.ruleWindowTruncated = counter('edge_rule_window_truncated_total', 'Window values dropped at rules.maxWindowValues, by rule', [
      'rule',
    ]);
    this.inferenceSeconds = new client.Histogram({
      name: 'edge_inference_seconds',
      help: 'Inference time by model and stage: batch (one model run), input (message arrival to result)',
      labelNames: ['model', 'stage'],
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });
    this.inferenceTotal = counter('edge_inference_total', 'Inference results, by model and label', ['model', 'label']);
    this.inferenceBatchSize = new client.Histogram({
      name: 'edge_inference_batch_size',
      help: 'Inputs run together in one model run, by model',
      labelNames: ['model'],
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
      registers,
    });
    this.inferenceErrors = counter(
      'edge_inference_errors_total',
      'Inputs dropped and model loads refused, by model and reason (unknown_model, input, window_too_large, run, output, load, stopping)',
      ['model', 'reason'],
    );
    this.inferenceShed = counter('edge_inference_shed_total', 'Oldest queued inputs shed at inference.queueSize, by model', ['model']);
    this.inferenceWindowsEvicted = counter(
      'edge_inference_windows_evicted_total',
      'Per-device input windows dropped at inference.windowBytes (least recently fed first), by model',
      ['model'],
    );
    this.inferenceWindowBytes = new client.Gauge({
      name: 'edge_inference_window_bytes',
      help: 'Bytes held by per-device input windows',
      registers,
    });
    this.inferenceQueueBytes = new client.Gauge({
      name: 'edge_inference_queue_bytes',
      help: 'Bytes held by inputs waiting for their model run (inference.queueSize inputs of input.length floats each at most)',
      registers,
    });
    this.modelsLoaded = counter('edge_models_loaded_total', 'Model versions loaded (at start and on each change), by model', ['model']);
    this.rulesLoaded = new client.Gauge({ name: 'edge_rules_loaded', help: 'Rules in the running ruleset', registers });
    this.rulesVersion = new client.Gauge({ name: 'edge_rules_version', help: 'Version number of the running ruleset', registers });
    this.rulesReloadFailures = counter(
      'edge_rules_reload_failures_total',
      'Rulesets refused because they had errors (reloads, pushes, rollbacks)',
    );
    this.rulesPushes = counter(
      'edge_rules_pushes_total',
      'Rules pushes and rollbacks, by source (api, cloud, rollback) and result (applied, unchanged, rejected)',
      ['source', 'result'],
    );
    this.registryDevices = new client.Gauge({ name: 'edge_registry_devices', help: 'Devices in the registry (token mode)', registers });
    this.registryReloadFailures = counter(
      'edge_registry_reload_failures_total',
      'Edits of the device registry file refused because it had errors (the last good registry stays in force)',
    );
    const source = (): CacheStats | null => this.cacheSource;
    new client.Gauge({
      name: 'edge_cache_messages',
      help: 'Messages in the durable cache, by priority',
      labelNames: ['priority'],
      registers,
      collect() {
        const s = source();
        if (!s) return;
        for (const [priority, n] of Object.entries(s.messagesByPriority())) this.set({ priority }, n);
      },
    });
    new client.Gauge({
      name: 'edge_cache_bytes',
      help: 'Bytes of messages in the durable cache',
      registers,
      collect() {
        const s = source();
        if (s) this.set(s.bytes());
      },
    });
    new client.Gauge({
      name: 'edge_cache_oldest_age_seconds',
      help: 'Age of the oldest message in the cache',
      registers,
      collect() {
        const s = source();
        if (s) this.set(s.oldestAgeSeconds());
      },
    });
    new client.Gauge({
      name: 'edge_cache_writable',
      help: '1 while the cache accepts writes',
      registers,
      collect() {
        const s = source();
        this.set(s && s.writable() ? 1 : 0);
      },
    });
    const retained = (): { readonly size: number; readonly bytes: number } | null => this.retainedSource;
    new client.Gauge({
      name: 'edge_retained_messages',
      help: 'Retained messages held for local subscribers of every protocol',
      registers,
      collect() {
        this.set(retained()?.size ?? 0);
      },
    });
    new client.Gauge({
      name: 'edge_retained_bytes',
      help: 'Bytes of retained messages (payloads and topics) held in memory',
      registers,
      collect() {
        this.set(retained()?.bytes ?? 0);
      },
    });
    this.uplinkConnected.set(0);
  }

  watchRetained(source: { readonly size: number; readonly bytes: number }): void {
    this.retainedSource = source;
  }

  // ---- observers: each stage's events, counted

  ingressEvents(): IngressEvents {
    return {
      authFailure: (protocol, reason) => this.authFailures.labels(protocol, reason).inc(),
      refused: (reason) => this.refused(reason).inc(),
      dropped: (reason) => this.dropped(reason).inc(),
      downlinkReceived: () => this.downlinkReceived.inc(),
    };
  }

  httpEvents(): HttpEndpointEvents {
    return { upgradeRefused: (reason) => this.upgradesRefused.labels(reason).inc() };
  }

  adapterEvents(): AdapterEvents {
    return {
      connectionOpened: (protocol: DeviceProtocol, transport: Transport) => this.connections.labels(protocol, transport).inc(),
      connectionClosed: (protocol: DeviceProtocol, transport: Transport) => this.connections.labels(protocol, transport).dec(),
      framingRefused: (reason) => this.refused(reason).inc(),
      notAccepted: (_protocol, qos) => (qos === 0 ? this.dropped('qos0_refused') : this.refused('cache')).inc(),
      deliveryDropped: (_protocol, reason) => this.dropped(reason).inc(),
      slowConsumerClosed: (protocol) => this.slowConsumersClosed.labels(protocol).inc(),
      coapExchange: (event) => this.coapExchanges.labels(event).inc(),
      coapBlock1: (event) => this.coapBlock1.labels(event).inc(),
      coapObserve: (event) => this.coapObserve.labels(event).inc(),
      coapBlock2: (event) => this.coapBlock2.labels(event).inc(),
      memoryHeld: (protocol, structure, bytes) => this.adapterMemory.labels(protocol, structure).set(bytes),
    };
  }

  localEvents(): LocalDeliveryEvents {
    return { delivered: (source: Protocol) => this.deliveredLocally(source).inc() };
  }

  routerEvents(): RouterEvents {
    return {
      received: (protocol) => this.received(protocol).inc(),
      ruleFired: (rule) => this.rulesFired(rule).inc(),
      ruleFailed: (rule) => this.ruleErrors(rule).inc(),
      dropped: (reason) => this.dropped(reason).inc(),
      payloadUndecodable: () => this.payloadDecodeErrors.inc(),
    };
  }

  inferenceEvents(): InferenceEvents & ModelRegistryEvents {
    return {
      queued: () => {},
      result: (model, label, seconds) => {
        this.inferenceTotal.labels(model, label).inc();
        this.inferenceSeconds.labels(model, 'input').observe(seconds);
      },
      batch: (model, size, seconds) => {
        this.inferenceBatchSize.labels(model).observe(size);
        this.inferenceSeconds.labels(model, 'batch').observe(seconds);
      },
      error: (model, reason) => this.inferenceErrors.labels(model, reason).inc(),
      shed: (model) => this.inferenceShed.labels(model).inc(),
      windowEvicted: (model) => this.inferenceWindowsEvicted.labels(model).inc(),
      windowBytes: (bytes) => this.inferenceWindowBytes.set(bytes),
      queueBytes: (bytes) => this.inferenceQueueBytes.set(bytes),
      loaded: (model) => this.modelsLoaded.labels(model).inc(),
      loadFailed: (model) => this.inferenceErrors.labels(model, 'load').inc(),
    };
  }

  uplinkEvents(): UplinkEvents {
    return { dropped: (reason) => this.dropped(reason).inc() };
  }

  forwarderEvents(): ForwarderEvents {
    return {
      sent: () => this.uplinkSent.inc(),
      acked: () => this.uplinkAcked.inc(),
      dropped: (reason) => this.dropped(reason).inc(),
    };
  }

  cacheEvents(): CacheEvents {
    return {
      writeError: () => this.cacheWriteErrors.inc(),
      evicted: (priority, reason, n) => this.cacheEvicted.labels(priority, reason).inc(n),
      refused: () => this.cacheRefused.inc(),
    };
  }

  watchCache(source: CacheStats): void {
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
