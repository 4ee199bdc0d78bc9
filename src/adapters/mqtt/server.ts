import { createServer, type Server, type Socket } from 'node:net';
import { Aedes, type AuthenticateError, type Client, type PublishPacket, type Subscription } from 'aedes';
import type { Logger } from 'pino';
import type { Config } from '../../config/types.js';
import { EdgeError } from '../../core/errors.js';
import type { EdgeMessage, QoS } from '../../core/message.js';
import { checkDeviceTopic, filterTouchesReserved } from '../../core/topic.js';
import type { Metrics } from '../../admin/metrics.js';
import { FrameGuard } from './frame-guard.js';
import { OrderedAcks } from './ordered-acks.js';
import { deviceIdFor, deviceIdProblem, edgeMessageToMqtt, mqttToEdgeMessage } from './normalize.js';

/** What the adapter needs of the pipeline: acceptance with a callback once the message is safe. */
export interface Acceptor {
  acceptFromDevice(msg: EdgeMessage, done: (err: EdgeError | null) => void): void;
}

interface Connection {
  deviceId: string | null;
  /** the client id and CleanSession flag as sent, before aedes replaces an empty id with its own */
  sent: { clientId: string; clean: boolean } | null;
  remote: string;
  acks: OrderedAcks;
  /** QoS 2 packet ids accepted and not yet released, to process a DUP resend once */
  qos2: Map<number, Promise<Error | null>>;
  /** why the proxy closed it, so the close is logged with the reason */
  refusal: { reason: 'too_large' | 'malformed' | 'acl' | 'cache'; detail: string } | null;
  /** the close was logged and counted: aedes may report one error more than once */
  reported: boolean;
}

// aedes keeps its MQTT parser on the client; the proxy inspects each chunk before it reaches it.
interface ParserHandle {
  _parser: { parse(buf: Buffer): number; prependListener(event: 'error', fn: (err: Error) => void): void };
}

// aedes's session store, where it keeps inbound QoS 2 publishes until their PUBREL; not in its types.
interface SessionStore {
  persistence: { incomingGetPacket(client: Client, packet: PublishPacket): Promise<unknown> };
}

/** MQTT over TCP through the embedded aedes broker. */
export class MqttAdapter {
  private broker!: Aedes;
  private server: Server | null = null;
  private readonly connections = new WeakMap<Client, Connection>();
  private readonly sockets = new Set<Socket>();
  /** set at shutdown: publishes not yet in hand are not accepted (the device sends them again later) */
  private stopping = false;

  constructor(
    private readonly cfg: Config,
    private readonly pipeline: Acceptor,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {}

  async start(): Promise<{ host: string; port: number }> {
    const maxPacket = this.cfg.limits.maxPayloadBytes + this.cfg.limits.maxTopicBytes + 16;
    this.broker = await Aedes.createBroker({
      id: `edge-${this.cfg.edge.id}`,
      maxClientsIdLength: 128,
      preConnect: (client, packet, done) => this.preConnect(client, packet.clientId, packet.clean !== false, done),
      authenticate: (client, username, _password, done) => this.authenticate(client, username, done),
      authorizePublish: (client, packet, done) => this.authorizePublish(client, packet, done),
      authorizeSubscribe: (client, sub, done) => this.authorizeSubscribe(client, sub, done),
    });
    this.broker.on('clientError', (client, err) => this.onClientError(client, err));
    this.broker.on('connectionError', (client, err) => this.onClientError(client, err));
    this.broker.on('clientReady', () => this.metrics.connections.labels('mqtt').inc());
    this.broker.on('clientDisconnect', () => this.metrics.connections.labels('mqtt').dec());

    const server = createServer((socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
      socket.setNoDelay(true);
      const client = this.broker.handle(socket);
      const conn: Connection = {
        deviceId: null,
        sent: null,
        remote: `${socket.remoteAddress}:${socket.remotePort}`,
        acks: new OrderedAcks(),
        qos2: new Map(),
        refusal: null,
        reported: false,
      };
      this.connections.set(client, conn);
      this.guard(client, conn, new FrameGuard(maxPacket));
    });
    server.maxConnections = this.cfg.limits.maxConnections;
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new EdgeError('E_LISTEN', `MQTT cannot listen on ${this.cfg.mqtt.host}:${this.cfg.mqtt.port}: ${err.message}`, { cause: err })));
      server.listen(this.cfg.mqtt.port, this.cfg.mqtt.host, () => resolve());
    });
    server.on('error', (err) => this.log.error({ err: err.message }, 'MQTT listener error'));
    const addr = server.address();
    return { host: this.cfg.mqtt.host, port: typeof addr === 'object' && addr ? addr.port : this.cfg.mqtt.port };
  }

  /** Inspect each chunk before aedes parses it: oversized packets are refused from their header. */
  private guard(client: Client, conn: Connection, guard: FrameGuard): void {
    const parser = (client as unknown as ParserHandle)._parser;
    if (!parser || typeof parser.parse !== 'function') throw new Error('aedes internals changed: client._parser.parse not found');
    const parse = parser.parse.bind(parser);
    parser.parse = (buf: Buffer): number => {
      const verdict = guard.scan(buf);
      if (verdict.ok) return parse(buf);
      conn.refusal = { reason: verdict.reason, detail: verdict.detail };
      client.emit('error', new EdgeError(verdict.reason === 'too_large' ? 'E_TOO_LARGE' : 'E_MALFORMED', verdict.detail));
      return 0;
    };
    // Before aedes's own listener, which closes the client and reports the error at once.
    parser.prependListener('error', (err) => {
      if (!conn.refusal) conn.refusal = { reason: 'malformed', detail: err.message };
    });
  }

  private onClientError(client: Client, err: Error): void {
    const conn = this.connections.get(client);
    if (conn?.reported) return;
    if (conn) conn.reported = true;
    const who = { clientId: client.id ?? null, deviceId: conn?.deviceId ?? null, remote: conn?.remote };
    const refusal = conn?.refusal;
    if (!refusal) {
      this.log.info({ ...who, err: err.message }, 'MQTT client connection ended with an error');
      return;
    }
    // Cache refusals are counted per message where they happen, not per closed connection.
    if (refusal.reason !== 'cache') this.metrics.refused.labels(refusal.reason).inc();
    const hint = refusal.reason === 'too_large' ? ` (limits.maxPayloadBytes=${this.cfg.limits.maxPayloadBytes})` : '';
    this.log.warn({ ...who, reason: refusal.reason }, `closed MQTT client ${client.id ?? conn.remote}: ${refusal.detail}${hint}`);
  }

  private preConnect(client: Client, clientId: string, clean: boolean, done: (err: Error | null, ok: boolean) => void): void {
    const conn = this.connections.get(client);
    if (conn) conn.sent = { clientId, clean };
    done(null, true);
  }

  // Identity is decided here rather than in preConnect: only an authenticate refusal is answered
  // with a CONNACK return code before the connection closes.
  private authenticate(client: Client, username: string | undefined, done: (err: AuthenticateError | null, ok: boolean | null) => void): void {
    const conn = this.connections.get(client);
    const sent = conn?.sent ?? { clientId: client.id, clean: client.clean };
    // [MQTT-3.1.3-8]: a zero-byte client id with CleanSession 0 gets CONNACK 2, identifier rejected.
    if (sent.clientId === '' && !sent.clean) return this.refuseConnect(conn, 'an empty client id needs CleanSession=1', done);
    const deviceId = deviceIdFor(username, sent.clientId === '' ? client.id : sent.clientId);
    const problem = deviceIdProblem(deviceId);
    if (problem) return this.refuseConnect(conn, `device id "${deviceId.slice(0, 140)}" refused: ${problem}`, done);
    if (conn) conn.deviceId = deviceId;
    done(null, true);
  }

  private refuseConnect(conn: Connection | undefined, why: string, done: (err: AuthenticateError | null, ok: boolean | null) => void): void {
    this.log.warn({ remote: conn?.remote }, `MQTT connection refused (CONNACK 2): ${why}`);
    if (conn) conn.reported = true; // logged here; the close that follows is expected
    const err = new Error(why) as AuthenticateError;
    err.returnCode = 2;
    done(err, false);
  }

  private authorizePublish(client: Client | null, packet: PublishPacket, done: (err?: Error | null) => void): void {
    const conn = client ? this.connections.get(client) : undefined;
    if (!client || !conn || conn.deviceId === null) {
      done(null); // the broker's own publishes (wills of other broker instances): not a device message
      return;
    }
    if (this.stopping) {
      conn.reported = true; // an expected close, not worth a line per device
      done(new EdgeError('E_CACHE_WRITE', 'the proxy is stopping', { retryable: true }));
      return;
    }
    const problem = checkDeviceTopic(packet.topic, this.cfg.limits.maxTopicBytes);
    if (problem) {
      const reason = problem === 'reserved' ? 'acl' : 'malformed';
      conn.refusal = { reason, detail: problem === 'reserved' ? `publish to the reserved topic "${packet.topic}" refused` : `invalid topic (${problem})` };
      done(new EdgeError(reason === 'acl' ? 'E_ACL' : 'E_MALFORMED', conn.refusal.detail));
      return;
    }
    const payloadBytes = typeof packet.payload === 'string' ? Buffer.byteLength(packet.payload) : packet.payload.length;
    if (payloadBytes > this.cfg.limits.maxPayloadBytes) {
      conn.refusal = { reason: 'too_large', detail: `PUBLISH payload of ${payloadBytes} bytes exceeds the limit of ${this.cfg.limits.maxPayloadBytes}` };
      done(new EdgeError('E_TOO_LARGE', conn.refusal.detail));
      return;
    }
    const qos = packet.qos as QoS;
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
        () => this.accept(conn, packet, qos, done),
      );
      return;
    }
    this.accept(conn, packet, qos, done);
  }

  private accept(conn: Connection, packet: PublishPacket, qos: QoS, done: (err?: Error | null) => void): void {
    const msg = mqttToEdgeMessage({ topic: packet.topic, payload: packet.payload, qos, retain: packet.retain }, conn.deviceId!);
    if (qos === 0) {
      this.pipeline.acceptFromDevice(msg, (err) => {
        if (err) this.metrics.dropped.labels('qos0_refused').inc();
      });
      done(null);
      return;
    }
    let settle!: (err: Error | null) => void;
    if (qos === 2 && packet.messageId !== undefined) {
      const id = packet.messageId;
      conn.qos2.set(id, new Promise((resolve) => { settle = resolve; }));
      if (conn.qos2.size > 1024) conn.qos2.delete(conn.qos2.keys().next().value!);
    }
    const accepted = conn.acks.reserve((err) => {
      if (err) {
        this.metrics.refused.labels('cache').inc();
        conn.refusal = { reason: 'cache', detail: `message not accepted, closing so the device retries later: ${err.message}` };
      }
      settle?.(err);
      done(err);
    });
    this.pipeline.acceptFromDevice(msg, accepted);
  }

  private authorizeSubscribe(client: Client, sub: Subscription, done: (err: Error | null, sub?: Subscription | null) => void): void {
    if (filterTouchesReserved(sub.topic)) {
      const conn = this.connections.get(client);
      this.log.warn({ deviceId: conn?.deviceId, filter: sub.topic }, 'subscription to the reserved $edge/ tree refused');
      done(null, null); // a failure return code in the SUBACK, the connection stays
      return;
    }
    done(null, sub);
  }

  /** Publish to local MQTT subscribers (the sink the pipeline uses for downlink and rule publishes). */
  deliver(msg: EdgeMessage): void {
    this.broker.publish(edgeMessageToMqtt(msg) as never, (err) => {
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
  async stop(settle: () => Promise<void> = async () => {}): Promise<void> {
    const server = this.server;
    const closed = server ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve();
    this.stopping = true;
    await settle();
    await new Promise<void>((resolve) => setImmediate(resolve)); // the PUBACKs of the last commit are written
    for (const client of Object.values((this.broker as unknown as { clients: Record<string, { will: unknown }> }).clients)) client.will = null;
    await new Promise<void>((resolve) => this.broker.close(() => resolve()));
    for (const socket of this.sockets) socket.destroy();
    await closed;
  }
}
