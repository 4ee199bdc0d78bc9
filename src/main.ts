import { mkdirSync, writeFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Config, LoadedConfig } from './config/types.js';
import { Metrics } from './admin/metrics.js';
import { Rates } from './admin/rates.js';
import { AdminServer } from './admin/server.js';
import { resolveAdminToken } from './admin/token.js';
import { RUNTIME_PORTS_FILE } from './admin/local-files.js';
import type { DeviceAdapter, Endpoint } from './adapters/adapter.js';
import { MqttAdapter } from './adapters/mqtt/adapter.js';
import { WsAdapter } from './adapters/ws/adapter.js';
import { CoapAdapter } from './adapters/coap/adapter.js';
import { HttpEndpoint } from './adapters/http/endpoint.js';
import { AuthService } from './auth/service.js';
import { DeviceRegistry } from './auth/device-registry.js';
import { IngressGate } from './pipeline/ingress.js';
import { LocalDelivery } from './pipeline/local.js';
import { Router } from './pipeline/router.js';
import { InferenceService } from './inference/service.js';
import { RulesStore } from './rules/store.js';
import { answerCloudRulesRequest } from './rules/cloud-requests.js';
import { DurableCache } from './uplink/cache.js';
import { CloudLink } from './uplink/cloud.js';
import { Forwarder } from './uplink/forwarder.js';
import { Uplink } from './uplink/uplink.js';
import { notifySystemd, startWatchdog } from './systemd.js';
import { VERSION } from './version.js';
import type { ProxyStatus } from './admin/status.js';
import { redactUrl } from './core/redact.js';
import { acquireDataDirLock, acquireRulesDirLock } from './core/data-lock.js';
import { isLoopback } from './core/host.js';
import { EdgeError } from './core/errors.js';

export interface RunOptions {
  portsFile?: string | null;
}

export interface RunningProxy {
  ports: Record<string, number>;
  stop(): Promise<void>;
}

/**
 * Written whole and renamed, so a script polling for it never reads half a file. A failure names the
 * file (not its temporary one) and what it is, and leaves no temporary file behind.
 */
function writePortsFile(file: string, ports: Record<string, number>, what: 'the data directory' | '--ports-file'): void {
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, JSON.stringify(ports) + '\n');
    renameSync(tmp, file);
  } catch (err) {
    rmSync(tmp, { force: true });
    const code = (err as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT'
        ? 'its directory does not exist'
        : code === 'EACCES' || code === 'EPERM'
          ? 'permission denied'
          : code === 'EISDIR'
            ? 'it is a directory'
            : (code ?? (err as Error).message);
    throw new EdgeError(
      what === '--ports-file' ? 'E_USAGE' : 'E_CONFIG_FILE',
      `cannot write ${what === '--ports-file' ? '--ports-file' : "the data directory's ports file"} ${file}: ${why}`,
      { cause: err },
    );
  }
}

/**
 * What has started, and how to stop it: stopped in the reverse order, at the end or as soon as
 * a later start fails, so that a half-started proxy leaves nothing running.
 */
class Services {
  private readonly stops: Array<{ name: string; stop: () => Promise<void> | void }> = [];

  constructor(private readonly log: Logger) {}

  async start<T>(name: string, start: () => Promise<T> | T, stop: (started: T) => Promise<void> | void): Promise<T> {
    const started = await start();
    this.stops.push({ name, stop: () => stop(started) });
    return started;
  }

  async stopAll(): Promise<void> {
    for (let s = this.stops.pop(); s; s = this.stops.pop()) {
      try {
        await s.stop();
      } catch (err) {
        this.log.error({ service: s.name, err: (err as Error).message }, `stopping ${s.name} failed; stopping the rest`);
      }
    }
  }
}

/**
 * The composition root: config → cache → device registry → rules → inference → pipeline → cloud → device
 * adapters → admin, each started in turn and stopped in the reverse order.
 */
export async function startProxy(loaded: LoadedConfig, log: Logger, opts: RunOptions = {}): Promise<RunningProxy> {
  const cfg: Config = loaded.config;
  const started = Date.now();
  log.info(
    { version: VERSION, config: loaded.file ?? '(embedded defaults)', edgeId: cfg.edge.id, authMode: cfg.auth.mode },
    'starting edge-proxy',
  );
  const trial = loaded.trialDefaults;
  if (trial.length > 0) {
    const open = trial.includes('auth.mode')
      ? '; auth.mode is open (no device authentication: device endpoints bind 127.0.0.1 unless set otherwise)'
      : '';
    log.warn(
      { keys: trial },
      `running on trial defaults for ${trial.join(', ')}${open}. For a board, start from config/edge-proxy.production.yaml`,
    );
  }
  if (!cfg.uplink.url)
    log.warn('uplink.url is not set: running offline, keeping what would go up in the cache until a cloud broker is configured');

  mkdirSync(cfg.dataDir, { recursive: true });

  const metrics = new Metrics({ loopMonitorMs: cfg.admin.loopMonitorMs });
  const services = new Services(log);
  let listening = false;
  const ports: Record<string, number> = {};
  const timers: Array<() => void> = [];
  try {
    // One proxy per data directory (docs/operations.md): taken first, so released last, also when a later start fails.
    await services.start(
      'data directory lock',
      () => acquireDataDirLock(cfg.dataDir, log.child({ stage: 'lock' })),
      (lock) => lock.release(),
    );
    // And per rules directory: a push to one proxy rewrites it, and another one's watcher would load it.
    // Taken before the rules store watches the directory, released after it stopped.
    await services.start(
      'rules directory lock',
      () => acquireRulesDirLock(cfg.rules.dir, log.child({ stage: 'lock' })),
      (lock) => lock.release(),
    );
    const admin = resolveAdminToken(cfg);
    if (admin.created)
      log.info({ file: admin.file }, 'made an admin token at first start; the edge-proxy CLI on this machine finds it there');

    const cache = await services.start(
      'cache',
      () =>
        DurableCache.open({
          path: cfg.cache.path,
          maxBytes: cfg.cache.maxBytes,
          maxAgeSeconds: cfg.cache.maxAgeSeconds,
          log: log.child({ stage: 'cache' }),
          events: metrics.cacheEvents(),
        }),
      async (c) => {
        const backlog = c.messageCount();
        await c.close();
        log.info({ backlog }, 'stopped; the backlog stays in the cache for the next start');
      },
    );
    metrics.watchCache(cache);
    log.info(
      { path: cfg.cache.path, backlog: cache.messageCount(), byPriority: cache.messagesByPriority(), bytes: cache.bytes() },
      'cache open',
    );

    const registry =
      cfg.auth.mode === 'token'
        ? new DeviceRegistry({ file: cfg.devicesFile, log: log.child({ stage: 'registry' }), required: true })
        : null;
    if (registry) {
      await services.start(
        'registry',
        () => registry.start(),
        () => registry.stop(),
      );
      metrics.registryDevices.set(registry.size);
      registry.on('change', () => metrics.registryDevices.set(registry.size));
      registry.on('invalid', () => metrics.registryReloadFailures.inc());
      log.info({ file: cfg.devicesFile, devices: registry.size }, 'device registry loaded (token mode: only these devices connect)');
    }
    const auth = new AuthService(cfg.auth.mode, registry);

    const rulesStore = new RulesStore({
      dir: cfg.rules.dir,
      dataDir: cfg.dataDir,
      limits: { maxFileBytes: cfg.rules.maxFileBytes, maxRules: cfg.rules.maxRules },
      engine: {
        maxWindowValues: cfg.rules.maxWindowValues,
        stateTtlSeconds: cfg.rules.stateTtlSeconds,
        onTruncated: (rule) => metrics.ruleWindowTruncated.labels(rule).inc(),
      },
      log: log.child({ stage: 'rules' }),
      onReloadFailure: () => metrics.rulesReloadFailures.inc(),
      onSwap: (v) => {
        metrics.rulesLoaded.set(v.rules);
        metrics.rulesVersion.set(v.version);
      },
      onPush: (source, result) => metrics.rulesPushes.labels(source, result).inc(),
    });
    await services.start(
      'rules',
      () => rulesStore.start(),
      () => rulesStore.stop(),
    );
    const rules = rulesStore.holder;
    const sweeper = setInterval(() => rules.current?.sweep(Date.now()), 60_000);
    sweeper.unref();
    timers.push(() => clearInterval(sweeper));

    const uplink = new Uplink(cfg.uplink, cache, metrics.uplinkEvents(), log.child({ stage: 'uplink' }));
    const cloud = cfg.uplink.url ? new CloudLink(cfg.uplink, log.child({ stage: 'cloud' })) : null;
    const forwarder = cloud
      ? new Forwarder(cache, cloud, cfg.uplink, cfg.edge.id, metrics.forwarderEvents(), log.child({ stage: 'forwarder' }))
      : null;
    // Results come back as derived messages through the router, which is made below.
    const inference = new InferenceService(cfg, metrics.inferenceEvents(), log.child({ stage: 'inference' }), (r) =>
      router.acceptInference(r),
    );
    await services.start(
      'inference',
      () => inference.start(),
      () => inference.stop(),
    );
    const local = new LocalDelivery(metrics.localEvents(), log.child({ stage: 'local' }));
    metrics.watchRetained(local.retained);
    const router = new Router(
      {
        routing: cfg.routing,
        maxHops: cfg.limits.maxHops,
        maxTopicBytes: cfg.limits.maxTopicBytes,
        edge: { id: cfg.edge.id, uplinkConnected: () => cloud?.connected ?? false },
        deviceAttrs: (id) => auth.deviceValue(id),
      },
      uplink,
      local,
      inference,
      rules,
      metrics.routerEvents(),
      log.child({ stage: 'router' }),
    );
    const gate = new IngressGate(auth, cfg.limits, router, metrics.ingressEvents(), log.child({ stage: 'ingress' }));

    if (cloud) {
      cloud.on('up', () => metrics.uplinkConnected.set(1));
      cloud.on('down', () => metrics.uplinkConnected.set(0));
      cloud.on('downlink', (topic, payload, retain) => gate.fromCloud(topic, payload, retain));
      cloud.on('rulesRequest', (kind, payload, retained) =>
        answerCloudRulesRequest(
          kind,
          payload,
          retained,
          rulesStore,
          (body) => cloud.publishRulesResult(body),
          log.child({ stage: 'rules' }),
        ),
      );
      await services.start(
        'cloud',
        () => cloud.start(),
        async () => {
          // What is in flight gets its PUBACK (else it is resent at the next start), then `offline`.
          await forwarder?.settle(3_000);
          await cloud.stop();
        },
      );
    }

    // Every device protocol: a new one is one more line here. WebSocket protocols register their
    // path on the one HTTP endpoint, which listens once they all have.
    const http = new HttpEndpoint(
      cfg.http,
      cfg.auth.mode,
      cfg.limits.maxConnections,
      metrics.httpEvents(),
      log.child({ endpoint: 'http' }),
    );
    const deps = (name: string) => ({
      gate,
      auth,
      retained: local.retained,
      events: metrics.adapterEvents(),
      http,
      log: log.child({ adapter: name }),
    });
    const adapters: DeviceAdapter[] = [
      new MqttAdapter({ mqtt: cfg.mqtt, limits: cfg.limits, brokerId: cfg.edge.id }, deps('mqtt')),
      new CoapAdapter({ coap: cfg.coap, limits: cfg.limits }, deps('coap')),
      new WsAdapter({ http: cfg.http, limits: cfg.limits }, deps('ws')),
    ];
    const endpoints: Endpoint[] = [];
    for (const adapter of adapters) {
      local.register(adapter);
      // Devices stop first: no new packets are read, what is in hand is committed and acknowledged.
      endpoints.push(
        ...(await services.start(
          adapter.protocol,
          () => adapter.start(),
          () => adapter.stop(() => cache.drainWrites()),
        )),
      );
    }
    // Stopped before the adapters: no new WebSocket connection while they settle theirs.
    endpoints.push(
      ...(await services.start(
        'http',
        () => http.start(),
        () => http.stop(),
      )),
    );

    const rates = new Rates(metrics);
    timers.push(() => rates.stop());
    metrics.watchDrainRate(() => rates.ackedPerSecond());
    const adminServer = new AdminServer(
      cfg.admin,
      admin.token,
      metrics,
      {
        rules: rulesStore,
        readiness: () =>
          listening
            ? cache.writable()
              ? { ready: true, reason: null }
              : { ready: false, reason: 'the cache is not writable' }
            : { ready: false, reason: 'starting' },
        status: (): ProxyStatus => {
          const drain = rates.ackedPerSecond();
          const backlog = cache.messageCount();
          return {
            version: VERSION,
            edgeId: cfg.edge.id,
            uptimeSeconds: (Date.now() - started) / 1000,
            ports,
            auth: { mode: cfg.auth.mode, devices: registry?.size ?? null },
            devices: Object.fromEntries(adapters.map((a) => [a.protocol, a.connectedCount()])),
            rates: { receivedPerSecond: rates.receivedPerSecond(), ackedPerSecond: drain },
            rules: rulesStore.version
              ? { version: rulesStore.version.version, sha256: rulesStore.version.sha256, rules: rulesStore.version.rules }
              : null,
            models: inference.status(),
            cache: {
              path: cfg.cache.path,
              messages: backlog,
              byPriority: cache.messagesByPriority(),
              bytes: cache.bytes(),
              oldestAgeSeconds: cache.oldestAgeSeconds(),
              writable: cache.writable(),
              drainRate: drain,
              timeToDrainSeconds: backlog === 0 ? 0 : drain > 0 ? backlog / drain : null,
            },
            uplink: { url: redactUrl(cfg.uplink.url), connected: cloud?.connected ?? false, inflight: forwarder?.inflightCount() ?? 0 },
          };
        },
      },
      log.child({ stage: 'admin' }),
    );
    endpoints.push({
      name: 'admin',
      ...(await services.start(
        'admin',
        () => adminServer.start(),
        () => adminServer.stop(),
      )),
    });

    for (const e of endpoints) {
      ports[e.name] = e.port;
      log.info({ endpoint: e.name, host: e.host, port: e.port }, 'listening');
    }
    const exposed = endpoints.filter((e) => e.name !== 'admin' && !isLoopback(e.host));
    if (cfg.auth.mode === 'open' && exposed.length > 0) {
      log.warn(
        { endpoints: exposed.map((e) => `${e.name} ${e.host}:${e.port}`) },
        `auth.mode is open while ${exposed.map((e) => `${e.name} (${e.host}:${e.port})`).join(', ')} ${exposed.length === 1 ? 'is' : 'are'} reachable beyond this machine: any client can connect as any device. Set auth.mode: token (config/edge-proxy.production.yaml) or bind 127.0.0.1`,
      );
    }
    // The CLI on this machine finds the running proxy's real ports (port 0 in the config) here.
    const localPortsFile = join(cfg.dataDir, RUNTIME_PORTS_FILE);
    await services.start(
      'ports file',
      () => {
        writePortsFile(localPortsFile, ports, 'the data directory');
        try {
          if (opts.portsFile) writePortsFile(opts.portsFile, ports, '--ports-file');
        } catch (err) {
          // Not started, so not stopped: the CLI must not find the ports of a proxy that is not running.
          rmSync(localPortsFile, { force: true });
          throw err;
        }
      },
      () => rmSync(localPortsFile, { force: true }),
    );
  } catch (err) {
    for (const stop of timers) stop();
    await services.stopAll();
    throw err;
  }

  listening = true;
  log.info('ready');
  notifySystemd('--ready', log);
  const stopWatchdog = startWatchdog(log);

  let stopping: Promise<void> | null = null;
  return {
    ports,
    stop(): Promise<void> {
      stopping ??= (async () => {
        log.info('stopping: closing device connections, committing the cache, saying offline to the cloud');
        listening = false;
        stopWatchdog();
        for (const stop of timers) stop();
        await services.stopAll();
      })();
      return stopping;
    },
  };
}
