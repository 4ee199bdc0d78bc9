import { mkdirSync, writeFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Config, LoadedConfig } from './config/types.js';
import { Metrics } from './admin/metrics.js';
import { Rates } from './admin/rates.js';
import { AdminServer } from './admin/server.js';
import { resolveAdminToken } from './admin/token.js';
import { RUNTIME_PORTS_FILE } from './admin/client.js';
import { MqttAdapter } from './adapters/mqtt/server.js';
import { EDGE_DEVICE_ID } from './core/message.js';
import { newMessageId } from './core/ids.js';
import { sniffContentType } from './core/content-type.js';
import { checkDeviceTopic } from './core/topic.js';
import { LocalDelivery } from './pipeline/local.js';
import { Router } from './pipeline/router.js';
import { RulesStore } from './rules/store.js';
import { filesFromBody, PushRequestError } from './rules/push-request.js';
import { outcomeBody } from './admin/server.js';
import { DurableCache } from './uplink/cache.js';
import { CloudLink } from './uplink/cloud.js';
import { Forwarder } from './uplink/forwarder.js';
import { Uplink } from './uplink/uplink.js';
import { notifySystemd, startWatchdog } from './systemd.js';
import { VERSION } from './version.js';
import type { ProxyStatus } from './admin/status.js';
import type { EdgeError } from './core/errors.js';

export interface RunOptions {
  portsFile?: string | null;
}

export interface RunningProxy {
  ports: Record<string, number>;
  stop(): Promise<void>;
}

function redactUrl(url: string | null): string | null {
  if (!url) return null;
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return url;
  }
}


/** Written whole and renamed, so a script polling for it never reads half a file. */
function writePortsFile(file: string, ports: Record<string, number>): void {
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(ports) + '\n');
  renameSync(tmp, file);
}

/**
 * The composition root: config → cache → uplink → pipeline → adapters → admin.
 * Stops in the reverse order on stop().
 */
export async function startProxy(loaded: LoadedConfig, log: Logger, opts: RunOptions = {}): Promise<RunningProxy> {
  const cfg: Config = loaded.config;
  const started = Date.now();
  log.info({ version: VERSION, config: loaded.file ?? '(embedded defaults)', edgeId: cfg.edge.id }, 'starting edge-proxy');
  if (loaded.trialDefaults.length > 0) {
    log.warn({ keys: loaded.trialDefaults }, 'running on trial defaults: device endpoints bind 127.0.0.1 and auth.mode is open (no device authentication). For a board, start from config/edge-proxy.production.yaml');
  }
  if (!cfg.uplink.url) log.warn('uplink.url is not set: running offline, keeping what would go up in the cache until a cloud broker is configured');

  mkdirSync(cfg.dataDir, { recursive: true });
  const admin = resolveAdminToken(cfg);
  if (admin.created) log.info({ file: admin.file }, 'made an admin token at first start; the edge-proxy CLI on this machine finds it there');

  const metrics = new Metrics();
  const cache = await DurableCache.open({
    path: cfg.cache.path,
    maxBytes: cfg.cache.maxBytes,
    maxAgeSeconds: cfg.cache.maxAgeSeconds,
    log: log.child({ stage: 'cache' }),
    events: {
      writeError: () => metrics.cacheWriteErrors.inc(),
      evicted: (priority, reason, n) => metrics.cacheEvicted.labels(priority, reason).inc(n),
      refused: () => metrics.cacheRefused.inc(),
    },
  });
  metrics.watchCache(cache);
  log.info({ path: cfg.cache.path, backlog: cache.messageCount(), byPriority: cache.messagesByPriority(), bytes: cache.bytes() }, 'cache open');

  const uplink = new Uplink(cfg.uplink, cache, metrics, log.child({ stage: 'uplink' }));
  const cloud = cfg.uplink.url ? new CloudLink(cfg.uplink, log.child({ stage: 'cloud' })) : null;
  const forwarder = cloud ? new Forwarder(cache, cloud, cfg.uplink, cfg.edge.id, metrics, log.child({ stage: 'forwarder' })) : null;
  if (cloud) {
    cloud.on('up', () => metrics.uplinkConnected.set(1));
    cloud.on('down', () => metrics.uplinkConnected.set(0));
  }

  const local = new LocalDelivery();
  const rulesStore = new RulesStore({
    dir: cfg.rules.dir,
    dataDir: cfg.dataDir,
    limits: { maxFileBytes: cfg.rules.maxFileBytes, maxRules: cfg.rules.maxRules },
    engine: { maxWindowValues: cfg.rules.maxWindowValues, stateTtlSeconds: cfg.rules.stateTtlSeconds, onTruncated: (rule) => metrics.ruleWindowTruncated.labels(rule).inc() },
    log: log.child({ stage: 'rules' }),
    onReloadFailure: () => metrics.rulesReloadFailures.inc(),
    onSwap: (v) => { metrics.rulesLoaded.set(v.rules); metrics.rulesVersion.set(v.version); },
    onPush: (source, result) => metrics.rulesPushes.labels(source, result).inc(),
  });
  try {
    rulesStore.start();
  } catch (err) {
    await cache.close();
    throw err;
  }
  const rules = rulesStore.holder;
  const router = new Router(
    { routing: cfg.routing, maxHops: cfg.limits.maxHops, maxTopicBytes: cfg.limits.maxTopicBytes, edge: { id: cfg.edge.id, uplinkConnected: () => cloud?.connected ?? false } },
    uplink, local, rules, metrics, log.child({ stage: 'router' }),
  );
  const sweeper = setInterval(() => rules.current?.sweep(Date.now()), 60_000);
  sweeper.unref();
  const mqtt = new MqttAdapter(cfg, router, metrics, log.child({ adapter: 'mqtt' }));
  local.register((msg) => mqtt.deliver(msg));

  cloud?.on('downlink', (topic, payload, retain) => {
    metrics.downlinkReceived.inc();
    // The cloud is held to the same limits as a device.
    const problem = checkDeviceTopic(topic, cfg.limits.maxTopicBytes) ?? (payload.length > cfg.limits.maxPayloadBytes ? `payload of ${payload.length} bytes over limits.maxPayloadBytes` : null);
    if (problem) {
      metrics.dropped.labels('downlink_invalid').inc();
      log.warn({ topic: topic.slice(0, 300), bytes: payload.length, problem }, 'a downlink message from the cloud was not delivered locally');
      return;
    }
    const now = Date.now();
    router.acceptFromCloud({
      id: newMessageId(now), ts: now, deviceId: EDGE_DEVICE_ID, protocol: 'cloud', topic, payload,
      contentType: sniffContentType(payload).contentType, qos: 1, retain, props: {}, hops: 0,
    });
  });

  // A ruleset pushed from the cloud, answered on <controlPrefix>rules/result like the admin API answers.
  cloud?.on('rulesSet', (payload, retained) => {
    if (retained) {
      // Replayed by the broker at each (re)subscription: applying it would undo later pushes made here.
      log.warn({ topic: `${cfg.uplink.controlPrefix}rules/set` }, 'a retained rules push is ignored; publish rules/set without the retain flag');
      return;
    }
    const answer = (status: number, body: Record<string, unknown>): void => {
      if (!cloud.publishRulesResult(JSON.stringify({ status, ...body }))) {
        log.warn({ status }, 'the answer to a rules push from the cloud was not sent: the cloud link is down');
      }
    };
    let files;
    try {
      files = filesFromBody(payload, 'auto');
    } catch (err) {
      if (!(err instanceof PushRequestError)) throw err;
      log.warn({ err: err.message }, 'a rules push from the cloud could not be read; nothing changed');
      return answer(err.status, { error: err.message, code: err.code });
    }
    rulesStore.push(files, 'cloud').then((outcome) => {
      const { status, body } = outcomeBody(outcome);
      answer(status, body);
    }, (err: EdgeError) => {
      log.error({ err: err.message, code: err.code }, 'a rules push from the cloud failed; the running set keeps running');
      answer(err.code === 'E_STOPPING' ? 503 : 500, { error: err.message, code: err.code ?? 'E_INTERNAL' });
    });
  });

  let listening = false;
  const rates = new Rates(metrics);
  metrics.watchDrainRate(() => rates.ackedPerSecond());
  const adminServer = new AdminServer(cfg.admin, admin.token, metrics, {
    rules: rulesStore,
    readiness: () => listening ? (cache.writable() ? { ready: true, reason: null } : { ready: false, reason: 'the cache is not writable' }) : { ready: false, reason: 'starting' },
    status: (): ProxyStatus => {
      const drain = rates.ackedPerSecond();
      const backlog = cache.messageCount();
      return {
        version: VERSION,
        edgeId: cfg.edge.id,
        uptimeSeconds: (Date.now() - started) / 1000,
        ports,
        devices: { mqtt: mqtt.connectedCount() },
        rates: { receivedPerSecond: rates.receivedPerSecond(), ackedPerSecond: drain },
        rules: rulesStore.version ? { version: rulesStore.version.version, sha256: rulesStore.version.sha256, rules: rulesStore.version.rules } : null,
        models: [],
        cache: {
          path: cfg.cache.path, messages: backlog, byPriority: cache.messagesByPriority(), bytes: cache.bytes(),
          oldestAgeSeconds: cache.oldestAgeSeconds(), writable: cache.writable(),
          drainRate: drain, timeToDrainSeconds: backlog === 0 ? 0 : drain > 0 ? backlog / drain : null,
        },
        uplink: { url: redactUrl(cfg.uplink.url), connected: cloud?.connected ?? false, inflight: forwarder?.inflightCount() ?? 0 },
      };
    },
  }, log.child({ stage: 'admin' }));

  const ports: Record<string, number> = {};
  let mqttAddr: { host: string; port: number };
  let adminAddr: { host: string; port: number };
  try {
    mqttAddr = await mqtt.start();
    adminAddr = await adminServer.start();
  } catch (err) {
    rates.stop();
    await mqtt.stop().catch(() => {});
    await adminServer.stop().catch(() => {});
    await cache.close();
    throw err;
  }
  ports.mqtt = mqttAddr.port;
  ports.admin = adminAddr.port;
  log.info({ endpoint: 'mqtt', host: mqttAddr.host, port: mqttAddr.port }, 'listening');
  log.info({ endpoint: 'admin', host: adminAddr.host, port: adminAddr.port }, 'listening');
  // The CLI on this machine finds the running proxy's real ports (port 0 in the config) here.
  const localPortsFile = join(cfg.dataDir, RUNTIME_PORTS_FILE);
  writePortsFile(localPortsFile, ports);
  if (opts.portsFile) writePortsFile(opts.portsFile, ports);
  listening = true;
  log.info('ready');
  notifySystemd('--ready', log);
  const stopWatchdog = startWatchdog(log);
  cloud?.start();

  let stopping: Promise<void> | null = null;
  return {
    ports,
    stop(): Promise<void> {
      stopping ??= (async () => {
        log.info('stopping: closing device connections, committing the cache, saying offline to the cloud');
        listening = false;
        rates.stop();
        stopWatchdog();
        clearInterval(sweeper);
        await rulesStore.stop();
        // Devices first: no new packets are read, what is in hand is committed and acknowledged.
        await mqtt.stop(() => cache.drainWrites());
        // Then the cloud: what is in flight gets its PUBACK (else it is resent at the next start).
        await forwarder?.settle(3_000);
        await cloud?.stop();
        const backlog = cache.messageCount();
        await cache.close();
        await adminServer.stop();
        rmSync(localPortsFile, { force: true });
        log.info({ backlog }, 'stopped; the backlog stays in the cache for the next start');
      })();
      return stopping;
    },
  };
}
