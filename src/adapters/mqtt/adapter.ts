import { createServer, type Server, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import type { AedesPublishPacket, AuthenticateError, Client, PublishPacket, Subscription } from 'aedes';
import type { Logger } from 'pino';
import type { Config } from '../../config/types.js';
import { EdgeError } from '../../core/errors.js';
import type { EdgeMessage, QoS } from '../../core/message.js';
import type { Identity } from '../../auth/service.js';
import type { RegistryChange } from '../../auth/device-registry.js';
import type { AdapterDeps, DeviceAdapter, Endpoint, Transport } from '../adapter.js';
import { EdgeBroker } from './broker.js';
import { FrameGuard } from './frame-guard.js';
import { OrderedAcks } from '../ordered-acks.js';
import { mqttToPublishRequest } from './normalize.js';
import { readTlsFiles, watchTlsFiles, type TlsFiles } from './tls.js';
import { mqttWebSocketRoute, type MqttUpgrade } from './websocket.js';
import { CLOSE, closeReason, type WebSocketStream } from './ws-stream.js';

/** The slice of the configuration the MQTT adapter reads. */
export interface MqttAdapterConfig {
  mqtt: Config['mqtt'];
  limits: Pick<Config['limits'], 'maxPayloadBytes' | 'maxTopicBytes' | 'maxConnections'>;
  /** names the embedded broker ($SYS topics) */
  brokerId: string;
}

type RefusalReason = 'too_large' | 'malformed' | 'acl' | 'cache';

interface Connection {
  transport: Transport;
  /** the device, once CONNECT authenticated it */
  identity: Identity | null;
  /** a client certificate verified against mqtt.tls.ca, and its CN when it has exactly one */
  certificate: { cn: string | null } | null;
  /** the client id and CleanSession flag as sent, before aedes replaces an empty id with its own */
  sent: { clientId: string; clean: boolean } | null;
  remote: string;
  /** a registry token checked at the WebSocket upgrade: the credential at CONNECT, then forgotten */
  upgradeToken: string | null;
  /** the WebSocket under a /mqtt connection, told why before the proxy closes it */
  ws: WebSocketStream | null;
  acks: OrderedAcks;
  /** QoS 2 packet ids accepted and not yet released, to process a DUP resend once */
  qos2: Map<number, Promise<Error | null>>;
  /** why the proxy closed it, so the close is logged with the reason; `framing`: refused before the gate saw it */
  refusal: { reason: RefusalReason; detail: string; framing?: true } | null;
  /** the close was logged and counted: aedes may report one error more than once */
  reported: boolean;
}

// aedes keeps its MQTT parser on the client; the proxy inspects each chunk before it reaches it.
interface ParserHandle {
  _parser: { parse(buf: Buffer): number; prependListener(event: 'error', fn: (err: Error) => void): void };
}

// aedes's session store: inbound QoS 2 publishes kept until their PUBREL, and persistent sessions'
// subscriptions; not in its types.
interface SessionStore {
  persistence: {
    incomingGetPacket(client: Client, packet: PublishPacket): Promise<unknown>;
    removeSubscriptions(client: Client, topics: string[]): Promise<unknown>;
  };
}

// What aedes keeps per client that its types leave out or mark read-only.
interface ClientState {
  id: string;
  will: unknown;
  subscriptions: Record<string, unknown>;
}

const REFUSAL_OF: Record<string, RefusalReason> = { E_ACL: 'acl', E_TOO_LARGE: 'too_large', E_MALFORMED: 'malformed' };

/** The Remaining Length in a PUBLISH header of the largest payload and topic accepted, with room for the rest. */
function maxPacketBytes(limits: MqttAdapterConfig['limits']): number {
  return limits.maxPayloadBytes + limits.maxTopicBytes + 16;
}

/**
 * MQTT 3.1 and 3.1.1 over TCP, over TLS when mqtt.tls has a certificate, and over WebSocket at
 * /mqtt on the HTTP endpoint (websocket.ts), through the embedded aedes broker. A connection's
 * device is decided at CONNECT by the ingress gate; its session is keyed by device and client id,
 * so that no client id reaches another device's session.
 */
export class MqttAdapter implements DeviceAdapter {
  readonly protocol = 'mqtt';
  private broker!: EdgeBroker;
  private readonly servers: Server[] = [];
  private readonly connections = new WeakMap<Client, Connection>();
  private readonly clients = new Set<Client>();
  /** what stop() ends after the broker closed: TCP and TLS sockets, the WebSockets of /mqtt */
  private readonly sockets = new Set<Socket>();
  private readonly webSockets = new Set<WebSocketStream>();
  private stopWatchingTls: (() => void) | null = null;
  private readonly onRegistryChange = (change: RegistryChange): void => this.registryChanged(change);
  /** set at shutdown: publishes not yet in hand are not accepted (the device sends them again later) */
  private stopping = false;

  constructor(
    private readonly cfg: MqttAdapterConfig,
    private readonly deps: AdapterDeps,
  ) {
    // Registered now; the HTTP endpoint listens after every adapter started, and stops before they do.
    deps.http.route(
      mqttWebSocketRoute({
        gate: deps.gate,
        // Room for one packet of the largest size accepted and the start of the next (a frame may hold several).
        maxMessageBytes: 2 * (maxPacketBytes(cfg.limits) + 5),
        accepting: () => this.broker !== undefined && !this.stopping,
        attach: (stream, upgrade) => this.handleWebSocket(stream, upgrade),
      }),
    );
  }

  private get log(): Logger {
    return this.deps.log;
  }

  async start(): Promise<Endpoint[]> {
    try {
      return await this.startEndpoints();
    } catch (err) {
      // A start that fails half-way (the TLS port taken after the plain one listens) leaves nothing running.
      await this.stop(async () => {});
      throw err;
    }
  }

  private async startEndpoints(): Promise<Endpoint[]> {
    const { mqtt } = this.cfg;
    const tlsFiles: TlsFiles | null = mqtt.tls.cert && mqtt.tls.key ? { cert: mqtt.tls.cert, key: mqtt.tls.key, ca: mqtt.tls.ca } : null;
    const tlsOptions = tlsFiles ? readTlsFiles(tlsFiles) : null; // before anything listens: a bad file stops the start
    this.broker = await EdgeBroker.open(
      {
        id: `edge-${this.cfg.brokerId}`,
        maxClientsIdLength: 128,
        preConnect: (client, packet, done) => this.preConnect(client, packet.clientId, packet.clean !== false, done),
        authenticate: (client, username, password, done) => this.authenticate(client, username, password, done),
        authorizePublish: (client, packet, done) => this.authorizePublish(client, packet, done),
        authorizeSubscribe: (client, sub, done) => this.authorizeSubscribe(client, sub, done),
        authorizeForward: (client, packet) => this.authorizeForward(client, packet),
      },
      this.deps.retained,
    );
    this.broker.on('clientError', (client, err) => this.onClientError(client, err));
    this.broker.on('connectionError', (client, err) => this.onClientError(client, err));
    this.broker.on('clientReady', (client) => this.deps.events.connectionOpened('mqtt', this.connections.get(client)?.transport ?? 'tcp'));
    this.broker.on('clientDisconnect', (client) =>
      this.deps.events.connectionClosed('mqtt', this.connections.get(client)?.transport ?? 'tcp'),
    );
    this.deps.auth.on('change', this.onRegistryChange);

    const endpoints: Endpoint[] = [];
    const plain = createServer((socket) => this.handle(socket, 'tcp', null));
    endpoints.push(await this.listen(plain, 'mqtt', mqtt.port));
    if (tlsFiles && tlsOptions) {
      const requireCert = tlsFiles.ca !== null;
      const secure = createTlsServer({ ...tlsOptions, requestCert: requireCert, rejectUnauthorized: requireCert }, (socket) => {
        // rejectUnauthorized: a socket that gets here with a CA configured holds a certificate it signed.
        this.handle(socket, 'tls', requireCert ? { cn: commonName(socket) } : null);
      });
      secure.on('tlsClientError', (err, socket) => {
        this.deps.gate.tlsRefused('mqtt', `${socket.remoteAddress}:${socket.remotePort}`, `TLS handshake failed: ${err.message}`);
      });
      endpoints.push(await this.listen(secure, 'mqtt-tls', mqtt.tls.port));
      this.stopWatchingTls = watchTlsFiles(tlsFiles, () => this.reloadTls(secure, tlsFiles));
    }
    return endpoints;
  }

  private async listen(server: Server, name: string, port: number): Promise<Endpoint> {
    const host = this.cfg.mqtt.host;
    server.maxConnections = this.cfg.limits.maxConnections;
    this.servers.push(server);
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: Error) =>
        reject(
          new EdgeError(
            'E_LISTEN',
            `${name} cannot listen on ${host}:${port}: ${err.message}; the port is ${name === 'mqtt-tls' ? 'mqtt.tls.port (environment EDGE_PROXY_MQTT_TLS_PORT)' : 'mqtt.port (environment EDGE_PROXY_MQTT_PORT)'}, the address mqtt.host (EDGE_PROXY_MQTT_HOST)`,
            { cause: err },
          ),
        ),
      );
      server.listen(port, host, () => resolve());
    });
    server.on('error', (err: Error) => this.log.error({ endpoint: name, err: err.message }, 'MQTT listener error'));
    const addr = server.address();
    return { name, host, port: typeof addr === 'object' && addr ? addr.port : port };
  }

  /** A renewed certificate, key or CA: new connections use it; one that does not load changes nothing. */
  private reloadTls(server: TlsServer, files: TlsFiles): void {
    try {
      server.setSecureContext(readTlsFiles(files));
      this.log.info(
        { cert: files.cert, key: files.key, ca: files.ca },
        'mqtt-tls: reloaded the renewed certificate files; new connections use them',
      );
    } catch (err) {
      this.log.error(
        { code: (err as EdgeError).code, err: (err as Error).message },
        'mqtt-tls: the renewed certificate files cannot be used; the previous ones stay in force. Check them with openssl x509 -noout -text -in FILE',
      );
    }
  }

  private handle(socket: Socket, transport: Transport, certificate: Connection['certificate']): void {
    this.sockets.add(socket);
    socket.setNoDelay(true);
    socket.on('close', () => this.sockets.delete(socket));
    this.attach(socket, {
      transport,
      certificate,
      remote: `${socket.remoteAddress}:${socket.remotePort}`,
      upgradeToken: null,
      ws: null,
    });
  }

  /** A /mqtt WebSocket connection: its stream goes the way of a TCP socket. */
  private handleWebSocket(stream: WebSocketStream, upgrade: MqttUpgrade): void {
    this.webSockets.add(stream);
    stream.on('close', () => this.webSockets.delete(stream));
    this.attach(stream, { transport: 'ws', certificate: null, remote: upgrade.remote, upgradeToken: upgrade.token, ws: stream });
  }

  /** Any byte stream of MQTT packets, handed to aedes behind the frame guard. */
  private attach(stream: Duplex, how: Pick<Connection, 'transport' | 'certificate' | 'remote' | 'upgradeToken' | 'ws'>): void {
    const client = this.broker.handle(stream);
    stream.on('close', () => this.clients.delete(client));
    const conn: Connection = {
      ...how,
      identity: null,
      sent: null,
      acks: new OrderedAcks(),
      qos2: new Map(),
      refusal: null,
      reported: false,
    };
    this.connections.set(client, conn);
    this.guard(client, conn, new FrameGuard(maxPacketBytes(this.cfg.limits)));
  }

  /** Inspect each chunk before aedes parses it: oversized packets are refused from their header. */
  private guard(client: Client, conn: Connection, guard: FrameGuard): void {
    const parser = (client as unknown as ParserHandle)._parser;
    if (!parser || typeof parser.parse !== 'function') throw new Error('aedes internals changed: client._parser.parse not found');
    const parse = parser.parse.bind(parser);
    parser.parse = (buf: Buffer): number => {
      const verdict = guard.scan(buf);
      if (verdict.ok) return parse(buf);
      conn.refusal = { reason: verdict.reason, detail: verdict.detail, framing: true };
      client.emit('error', new EdgeError(verdict.reason === 'too_large' ? 'E_TOO_LARGE' : 'E_MALFORMED', verdict.detail));
      return 0;
    };
    // Before aedes's own listener, which closes the client and reports the error at once.
    parser.prependListener('error', (err) => {
      if (!conn.refusal) conn.refusal = { reason: 'malformed', detail: err.message, framing: true };
    });
  }

  private onClientError(client: Client, err: Error): void {
    const conn = this.connections.get(client);
    if (conn?.reported) return;
    if (conn) conn.reported = true;
    const who = {
      clientId: conn?.sent?.clientId ?? null,
      deviceId: conn?.identity?.deviceId ?? null,
      remote: conn?.remote,
      transport: conn?.transport,
    };
    // A refusal the transport made from its own framing (a WebSocket message over its cap, a text frame).
    const refusal = conn?.refusal ?? (conn ? transportRefusal(err) : null);
    if (!refusal) {
      this.log.info({ ...who, err: err.message }, 'MQTT client connection ended with an error');
      return;
    }
    // The gate counted its own refusals, and the cache's were counted per message.
    if (refusal.framing && (refusal.reason === 'too_large' || refusal.reason === 'malformed'))
      this.deps.events.framingRefused(refusal.reason);
    if (refusal.reason === 'acl') return; // the gate logged it, once a minute per device
    const hint = refusal.reason === 'too_large' ? ` (limits.maxPayloadBytes=${this.cfg.limits.maxPayloadBytes})` : '';
    this.log.warn({ ...who, reason: refusal.reason }, `closed MQTT client ${who.deviceId ?? who.remote}: ${refusal.detail}${hint}`);
  }

  private preConnect(client: Client, clientId: string, clean: boolean, done: (err: Error | null, ok: boolean) => void): void {
    const conn = this.connections.get(client);
    if (conn) conn.sent = { clientId, clean };
    done(null, true);
  }

  // Identity is decided here rather than in preConnect: only an authenticate refusal is answered
  // with a CONNACK return code before the connection closes.
  private authenticate(
    client: Client,
    username: string | undefined,
    password: Buffer | undefined,
    done: (err: AuthenticateError | null, ok: boolean | null) => void,
  ): void {
    const conn = this.connections.get(client);
    if (!conn) return done(connackError(5, 'unknown connection'), false);
    const sent = conn.sent ?? { clientId: client.id, clean: client.clean };
    // [MQTT-3.1.3-8]: a zero-byte client id with CleanSession 0 gets CONNACK 2, identifier rejected.
    if (sent.clientId === '' && !sent.clean) {
      conn.reported = true;
      this.log.warn({ remote: conn.remote }, 'MQTT connection refused (CONNACK 2): an empty client id needs CleanSession=1');
      return done(connackError(2, 'an empty client id needs CleanSession=1'), false);
    }
    if (conn.certificate && conn.certificate.cn === null) {
      // Signed by the CA but naming no device: not a way around the registry to a password login.
      conn.reported = true;
      this.deps.gate.tlsRefused('mqtt', conn.remote, 'the client certificate has no single subject CN to name its device');
      return done(connackError(5, 'the client certificate names no device'), false);
    }
    // A token checked at the WebSocket upgrade stands in for the password (websocket.ts): a username
    // naming another device is that device with a wrong token. Used once, not kept.
    const upgradeToken = conn.upgradeToken;
    conn.upgradeToken = null;
    const result = this.deps.gate.authenticate(
      'mqtt',
      {
        claimedId: username || null,
        token: upgradeToken ?? (password ? password.toString('utf8') : null),
        certificateId: conn.certificate?.cn ?? null,
        fallbackId: sent.clientId === '' ? client.id : sent.clientId,
        fallbackAssigned: sent.clientId === '',
      },
      conn.remote,
    );
    if (!result.ok) {
      conn.reported = true; // the gate logged it; the close that follows is expected
      // [MQTT-3.2.2-5]: 4 bad user name or password, 5 not authorized.
      return done(connackError(result.reason === 'bad_token' ? 4 : 5, result.detail), false);
    }
    conn.identity = result.identity;
    // The session key: the device id cannot hold '/', so no client id reaches another device's session.
    (client as unknown as ClientState).id = `${result.identity.deviceId}/${client.id}`;
    // Followed from here, not from clientReady: a registry change while the session is being set up applies too.
    this.clients.add(client);
    done(null, true);
  }

  private authorizePublish(client: Client | null, packet: PublishPacket, done: (err?: Error | null) => void): void {
    const conn = client ? this.connections.get(client) : undefined;
    if (!client || !conn?.identity) {
      done(null); // the broker's own publishes: not a device message
      return;
    }
    if (this.stopping) {
      conn.reported = true; // an expected close, not worth a line per device
      done(new EdgeError('E_STOPPING', 'the proxy is stopping'));
      return;
    }
    const qos = packet.qos;
    const verdict = this.deps.gate.checkPublish(
      conn.identity,
      'mqtt',
      mqttToPublishRequest({ topic: packet.topic, payload: packet.payload, qos, retain: packet.retain }),
    );
    if (verdict.kind === 'drop') {
      // Acknowledged, and nobody receives it; in its place in line, after the publishes before it [MQTT-4.6.0-2].
      if (qos === 0) done(null);
      else conn.acks.reserve((err) => done(err))(null);
      return;
    }
    if (verdict.kind === 'refuse') {
      // MQTT 3.1.1 has no negative PUBACK: a refused publish closes the connection, as brokers do.
      conn.refusal = { reason: REFUSAL_OF[verdict.error.code] ?? 'malformed', detail: verdict.error.message };
      done(verdict.error);
      return;
    }
    if (qos === 2 && packet.dup && packet.messageId !== undefined) {
      const earlier = conn.qos2.get(packet.messageId);
      if (earlier) {
        // A resend of a QoS 2 publish still being accepted on this connection: answered like the first.
        void earlier.then(done);
        return;
      }
      // A resend after a reconnect (persistent session): aedes kept the first until PUBREL, and
      // answers the resend with PUBREC without publishing it again; the proxy does not take it twice.
      (this.broker as unknown as SessionStore).persistence.incomingGetPacket(client, packet).then(
        () => done(null),
        () => this.accept(conn, verdict.msg, qos, packet.messageId, done),
      );
      return;
    }
    this.accept(conn, verdict.msg, qos, packet.messageId, done);
  }

  private accept(conn: Connection, msg: EdgeMessage, qos: QoS, messageId: number | undefined, done: (err?: Error | null) => void): void {
    const gate = this.deps.gate;
    if (qos === 0) {
      gate.accept(msg, (err) => {
        if (err) this.deps.events.notAccepted('mqtt', 0);
      });
      done(null);
      return;
    }
    let settle: ((err: Error | null) => void) | undefined;
    if (qos === 2 && messageId !== undefined) {
      conn.qos2.set(
        messageId,
        new Promise((resolve) => {
          settle = resolve;
        }),
      );
      if (conn.qos2.size > 1024) conn.qos2.delete(conn.qos2.keys().next().value!);
    }
    const accepted = conn.acks.reserve((err) => {
      if (err) {
        this.deps.events.notAccepted('mqtt', qos);
        // MQTT 3.1.1 has no negative PUBACK: not acknowledged, the connection closes after a line saying why.
        const later = !(err instanceof EdgeError) || err.retryable;
        conn.refusal = {
          reason: 'cache',
          detail: `message not accepted, ${later ? 'closing so that the device sends it again later' : 'refused for good'}: ${err.message}`,
        };
      }
      settle?.(err);
      done(err);
    });
    gate.accept(msg, accepted);
  }

  private authorizeSubscribe(client: Client, sub: Subscription, done: (err: Error | null, sub?: Subscription | null) => void): void {
    const identity = this.connections.get(client)?.identity;
    if (!identity) return done(null, null);
    if (!this.deps.gate.checkSubscribe(identity, 'mqtt', sub.topic)) return done(null, sub);
    // A refusal is a failure return code (0x80) in the SUBACK; the connection stays. A persistent
    // session restored under narrower filters also forgets the subscription, so nothing is queued for it.
    (this.broker as unknown as SessionStore).persistence.removeSubscriptions(client, [sub.topic]).catch(() => {});
    done(null, null);
  }

  /**
   * Every message on its way to a subscriber, live or from a persistent session's queue: only what
   * the device may receive now, under the registry as it is (filters narrowed or the device removed
   * since it subscribed).
   */
  private authorizeForward(client: Client, packet: AedesPublishPacket): AedesPublishPacket | null {
    const identity = this.connections.get(client)?.identity;
    return identity && this.deps.gate.mayReceive(identity, packet.topic) ? packet : null;
  }

  /**
   * A removed or re-keyed device is disconnected; a device whose filters changed is disconnected
   * when a subscription it holds is no longer allowed, so that it subscribes again under the new ones.
   */
  private registryChanged(change: RegistryChange): void {
    const gone = new Set(change.removed);
    const rotated = new Set(change.rotated);
    const filters = new Set(change.filtersChanged);
    for (const client of this.clients) {
      const identity = this.connections.get(client)?.identity;
      if (!identity) continue;
      const id = identity.deviceId;
      let why: string | null = null;
      let code: number = CLOSE.auth;
      if (gone.has(id)) why = 'it was removed from the registry';
      else if (rotated.has(id) && identity.by === 'token') why = 'its token was replaced';
      else if (filters.has(id)) {
        const lost = Object.keys((client as unknown as ClientState).subscriptions).find(
          (f) => !this.deps.gate.stillMaySubscribe(identity, f),
        );
        if (lost !== undefined) {
          why = `its subscription "${lost.slice(0, 300)}" is outside its new subscribe filters; it may subscribe again under them`;
          code = CLOSE.access;
        }
      }
      if (why) this.disconnect(client, why, code);
    }
  }

  private disconnect(client: Client, why: string, wsCode: number): void {
    const conn = this.connections.get(client);
    if (conn) conn.reported = true;
    // A WebSocket says why in its close frame, with the codes of /ws: 4401 no longer admitted, 4403 access narrowed.
    if (conn?.ws) conn.ws.closing = { code: wsCode, reason: closeReason(why) };
    // The device did not die: its will is not published.
    (client as unknown as ClientState).will = null;
    this.log.info(
      { deviceId: conn?.identity?.deviceId, remote: conn?.remote },
      `disconnected MQTT device ${conn?.identity?.deviceId ?? ''}: ${why}`,
    );
    client.close();
  }

  /** Publish to local MQTT subscribers: the sink of the pipeline's local delivery. */
  deliver(msg: EdgeMessage): void {
    if (!this.broker) return; // not started yet: nobody is subscribed
    this.broker.publishLocal(msg, (err) => {
      if (err) this.log.warn({ topic: msg.topic, err: err.message }, 'local MQTT delivery failed');
    });
  }

  connectedCount(): number {
    return this.broker?.connectedClients ?? 0;
  }

  /**
   * Stop accepting and reading, let `settle` commit what is in hand so that its PUBACKs go out,
   * then close every client and the broker. Wills are cleared first: a device is not dead because
   * the proxy restarts.
   */
  async stop(settle: () => Promise<void>): Promise<void> {
    this.deps.auth.off('change', this.onRegistryChange);
    this.stopWatchingTls?.();
    const closed = this.servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve())));
    this.stopping = true;
    await settle();
    if (!this.broker) return;
    await new Promise<void>((resolve) => setImmediate(resolve)); // the PUBACKs of the last commit are written
    for (const client of this.clients) (client as unknown as ClientState).will = null;
    for (const ws of this.webSockets) ws.closing = { code: CLOSE.goingAway, reason: 'the proxy is stopping' };
    await new Promise<void>((resolve) => this.broker.close(() => resolve()));
    for (const socket of this.sockets) socket.destroy();
    await this.closeWebSockets();
    await Promise.all(closed);
  }

  /** A moment for each /mqtt peer to answer the close frame, then the rest are dropped. */
  private async closeWebSockets(): Promise<void> {
    const deadline = Date.now() + 1_000;
    while ([...this.webSockets].some((ws) => !ws.socketClosed) && Date.now() < deadline)
      await new Promise((resolve) => setTimeout(resolve, 20));
    for (const ws of this.webSockets) ws.terminate();
  }
}

/** An error a transport raised from its own framing, before the frame guard or aedes saw the bytes. */
function transportRefusal(err: Error): Connection['refusal'] {
  if (!(err instanceof EdgeError)) return null;
  if (err.code !== 'E_TOO_LARGE' && err.code !== 'E_MALFORMED') return null;
  return { reason: err.code === 'E_TOO_LARGE' ? 'too_large' : 'malformed', detail: err.message, framing: true };
}

function connackError(returnCode: 2 | 4 | 5, message: string): AuthenticateError {
  const err = new Error(message) as AuthenticateError;
  err.returnCode = returnCode;
  return err;
}

/** The subject CN of the client certificate; a certificate with several CNs names no device. */
function commonName(socket: TLSSocket): string | null {
  const cn = socket.getPeerCertificate()?.subject?.CN as unknown;
  return typeof cn === 'string' && cn !== '' ? cn : null;
}
