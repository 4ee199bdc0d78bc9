// The device-facing HTTP endpoint (http.host, http.port; https with http.tls): it serves only
// WebSocket upgrades, each path handed to the adapter that registered it (/mqtt, /ws). It owns
// what is common to every WebSocket connection: the handshake and its timeout, the subprotocol,
// the cap of connections per source address, the keepalive pings that find dead peers.
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { readFileSync } from 'node:fs';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import type { Logger } from 'pino';
import type { Config } from '../../config/types.js';
import { EdgeError } from '../../core/errors.js';
import type { Endpoint } from '../adapter.js';
import { isLoopback } from '../../core/host.js';

/** What a route decides about an upgrade before the handshake: the context it keeps, or the HTTP refusal. */
export type Admission<C> = { ok: true; context: C } | { ok: false; status: 400 | 401 | 403 | 503; reason: UpgradeRefusal; message: string };

export type UpgradeRefusal = 'not_found' | 'subprotocol' | 'per_address' | 'origin' | 'auth' | 'unavailable';

/**
 * How a route's connections read frames, where it differs from the endpoint's defaults: the largest
 * message it takes (the endpoint's hard ceiling otherwise; a larger one closes the connection with
 * 1009 before it is buffered), and whether ws leaves text frames unchecked for UTF-8 so that the route
 * answers invalid text itself instead of ws closing the connection with 1007.
 */
export interface FrameOptions {
  readonly maxPayload?: number;
  readonly skipUTF8Validation?: boolean;
}

/** One path of the endpoint, registered by the adapter that speaks it. */
export interface UpgradeRoute<C> {
  readonly path: string;
  readonly frames?: FrameOptions;
  /** Subprotocols the route speaks; a request must offer one (else 400). Empty: any, none chosen. */
  readonly subprotocols: readonly string[];
  /** Decide from the request alone (its headers and query), before the handshake. */
  admit(req: IncomingMessage, url: URL): Admission<C> | Promise<Admission<C>>;
  /** The handshake is done: the connection is the route's until it closes. */
  open(ws: WebSocket, req: IncomingMessage, context: C): void;
}

/** Where adapters register their paths. */
export interface UpgradeRegistry {
  route<C>(route: UpgradeRoute<C>): void;
}

export interface HttpEndpointEvents {
  upgradeRefused(reason: UpgradeRefusal): void;
}

const REFUSAL_TEXT: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  503: 'Service Unavailable',
};

/** Pongs a connection may miss before it is taken for dead. */
const MISSED_PONGS = 2;

export class HttpEndpoint implements UpgradeRegistry {
  private readonly routes = new Map<string, UpgradeRoute<unknown>>();
  private readonly wss: WebSocketServer;
  /** the ws servers of routes with frame options of their own: ws applies them per server */
  private readonly routeServers = new Map<string, WebSocketServer>();
  private server: Server | null = null;
  /** open connections and upgrades in progress, by source address */
  private readonly perAddress = new Map<string, number>();
  private readonly missed = new Map<WebSocket, number>();
  private pinger: NodeJS.Timeout | null = null;

  constructor(
    private readonly cfg: Config['http'],
    /** open mode: a page's origin must be loopback or listed, since nothing else stops a foreign page */
    private readonly authMode: Config['auth']['mode'],
    private readonly maxConnections: number,
    private readonly events: HttpEndpointEvents,
    private readonly log: Logger,
  ) {
    this.wss = this.webSocketServer({});
  }

  private webSocketServer(frames: FrameOptions): WebSocketServer {
    return new WebSocketServer({
      noServer: true,
      perMessageDeflate: this.cfg.perMessageDeflate,
      // Frames are bounded by each route (it knows its encoding); this is the hard ceiling.
      maxPayload: Math.min(frames.maxPayload ?? Infinity, 512 * 2 ** 20),
      skipUTF8Validation: frames.skipUTF8Validation ?? false,
      clientTracking: false,
      handleProtocols: (offered: Set<string>, req: IncomingMessage) => {
        const route = this.routes.get(new URL(req.url ?? '/', 'http://device').pathname);
        if (!route || route.subprotocols.length === 0) return false;
        return route.subprotocols.find((p) => offered.has(p)) ?? false;
      },
    });
  }

  route<C>(route: UpgradeRoute<C>): void {
    if (this.routes.has(route.path)) throw new Error(`two routes for ${route.path}`);
    this.routes.set(route.path, route);
    if (route.frames) this.routeServers.set(route.path, this.webSocketServer(route.frames));
  }

  /** Listen, once every adapter registered its route (not at all when none did). */
  async start(): Promise<Endpoint[]> {
    if (this.routes.size === 0) return [];
    const tls = this.cfg.tls.cert !== null && this.cfg.tls.key !== null ? this.readTls(this.cfg.tls.cert, this.cfg.tls.key) : null;
    const server = tls ? createHttpsServer(tls) : createServer();
    server.headersTimeout = this.cfg.handshakeTimeoutSeconds * 1000;
    server.requestTimeout = this.cfg.handshakeTimeoutSeconds * 1000;
    server.keepAliveTimeout = 5_000;
    server.maxConnections = this.maxConnections;
    server.on('request', (req, res) => {
      // Plain requests get an answer that says what the endpoint is for, and are not kept alive.
      const path = new URL(req.url ?? '/', 'http://device').pathname;
      const known = this.routes.has(path);
      res.writeHead(known ? 426 : 404, { 'content-type': 'text/plain', connection: 'close', ...(known ? { upgrade: 'websocket' } : {}) });
      res.end(
        known
          ? `${path} is a WebSocket endpoint: connect with a WebSocket client\n`
          : `no route ${path}: the endpoints are ${[...this.routes.keys()].join(' and ')}\n`,
      );
    });
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => void this.upgrade(req, socket, head));
    server.on('clientError', (err, socket) => {
      if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n');
      else socket.destroy();
      this.log.debug({ err: err.message }, 'a malformed HTTP request on the WebSocket endpoint');
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: Error) =>
        reject(
          new EdgeError(
            'E_LISTEN',
            `http cannot listen on ${this.cfg.host}:${this.cfg.port}: ${err.message}; the port is http.port (environment EDGE_PROXY_HTTP_PORT), the address http.host (EDGE_PROXY_HTTP_HOST)`,
            { cause: err },
          ),
        ),
      );
      server.listen(this.cfg.port, this.cfg.host, () => resolve());
    });
    server.on('error', (err: Error) => this.log.error({ endpoint: 'http', err: err.message }, 'HTTP listener error'));
    this.server = server;
    this.pinger = setInterval(() => this.ping(), this.cfg.pingIntervalSeconds * 1000);
    this.pinger.unref();
    const address = server.address();
    const port = typeof address === 'object' && address !== null ? address.port : this.cfg.port;
    return [{ name: 'http', host: this.cfg.host, port }];
  }

  /** Stop taking connections; the adapters close the ones they hold. */
  stop(): Promise<void> {
    if (this.pinger) clearInterval(this.pinger);
    this.pinger = null;
    const server = this.server;
    this.server = null;
    if (!server) return Promise.resolve();
    // close() stops listening at once, but its callback waits for every socket, upgraded ones
    // included, which are the adapters' to close after this: nothing here waits for them.
    server.close();
    server.closeIdleConnections();
    return Promise.resolve();
  }

  private readTls(cert: string, key: string): { cert: Buffer; key: Buffer } {
    const read = (name: string, path: string): Buffer => {
      try {
        return readFileSync(path);
      } catch (err) {
        throw new EdgeError('E_TLS', `cannot read http.tls.${name} ${path}: ${(err as Error).message}`, { cause: err });
      }
    };
    return { cert: read('cert', cert), key: read('key', key) };
  }

  private async upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    socket.on('error', () => socket.destroy());
    const url = new URL(req.url ?? '/', 'http://device');
    const route = this.routes.get(url.pathname);
    if (!route) return this.refuse(socket, 404, 'not_found', `no route ${url.pathname}`);
    if (route.subprotocols.length > 0) {
      const offered = (req.headers['sec-websocket-protocol'] ?? '').split(',').map((p) => p.trim());
      if (!route.subprotocols.some((p) => offered.includes(p)))
        return this.refuse(
          socket,
          400,
          'subprotocol',
          `${url.pathname} needs the WebSocket subprotocol ${route.subprotocols.join(' or ')}`,
        );
    }
    const origin = req.headers.origin;
    if (origin !== undefined && !this.originAllowed(origin)) {
      this.log.warn(
        { origin, path: url.pathname },
        'a WebSocket upgrade from a page of another origin refused: list it in http.allowedOrigins if it may connect',
      );
      return this.refuse(socket, 403, 'origin', `pages from ${origin} may not connect: http.allowedOrigins does not list it`);
    }
    const address = req.socket.remoteAddress ?? 'unknown';
    const count = this.perAddress.get(address) ?? 0;
    if (count >= this.cfg.maxConnectionsPerAddress) {
      this.log.warn(
        { address, limit: this.cfg.maxConnectionsPerAddress },
        'a WebSocket upgrade refused: this address holds http.maxConnectionsPerAddress connections already',
      );
      return this.refuse(socket, 503, 'per_address', `too many connections from ${address}`);
    }
    this.perAddress.set(address, count + 1);
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      const n = (this.perAddress.get(address) ?? 1) - 1;
      if (n <= 0) this.perAddress.delete(address);
      else this.perAddress.set(address, n);
    };
    socket.once('close', release);
    let admission: Admission<unknown>;
    try {
      admission = await route.admit(req, url);
    } catch (err) {
      this.log.error({ err: (err as Error).message, path: url.pathname }, 'a WebSocket upgrade failed');
      return this.refuse(socket, 503, 'unavailable', 'the proxy cannot take this connection now');
    }
    if (!admission.ok) return this.refuse(socket, admission.status, admission.reason, admission.message);
    if (!this.server || socket.destroyed) {
      socket.destroy();
      return;
    }
    (this.routeServers.get(url.pathname) ?? this.wss).handleUpgrade(req, socket, head, (ws) => {
      this.missed.set(ws, 0);
      ws.on('pong', () => this.missed.set(ws, 0));
      ws.once('close', () => {
        this.missed.delete(ws);
        release();
      });
      route.open(ws, req, admission.context);
    });
  }

  /**
   * A browser names the page that opens a WebSocket in Origin, and lets any page open one. Without
   * this check, in open mode any web site the operator visits could publish as any device through
   * the browser. Listed origins (or "*") always pass; otherwise, in open mode only pages served from
   * this machine, and in token mode any page when none is listed, since it must still send a
   * device's token.
   */
  private originAllowed(origin: string): boolean {
    const allowed = this.cfg.allowedOrigins;
    if (allowed.includes('*') || allowed.includes(origin)) return true;
    if (this.authMode === 'token') return allowed.length === 0;
    try {
      const url = new URL(origin);
      return (url.protocol === 'http:' || url.protocol === 'https:') && isLoopback(url.hostname.replace(/^\[|\]$/g, ''));
    } catch {
      return false; // "null": a file, a sandboxed frame
    }
  }

  private refuse(socket: Duplex, status: number, reason: UpgradeRefusal, message: string): void {
    this.events.upgradeRefused(reason);
    const body = `${message}\n`;
    socket.end(
      `HTTP/1.1 ${status} ${REFUSAL_TEXT[status] ?? 'Error'}\r\ncontent-type: text/plain\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
    );
  }

  /** A ping each interval; a peer that missed MISSED_PONGS in a row is terminated (its route sees the close). */
  private ping(): void {
    for (const [ws, missed] of this.missed) {
      if (missed >= MISSED_PONGS) {
        this.log.info({ missed }, 'a WebSocket peer stopped answering pings; connection terminated');
        ws.terminate();
        continue;
      }
      this.missed.set(ws, missed + 1);
      ws.ping();
    }
  }
}
