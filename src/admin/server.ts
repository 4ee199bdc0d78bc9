import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import { EdgeError } from '../core/errors.js';
import type { Metrics } from './metrics.js';
import { tokenMatches } from './token.js';
import { STATUS_PAGE } from './status-page.js';
import type { ProxyStatus } from './status.js';

export interface Readiness {
  ready: boolean;
  reason: string | null;
}

export interface AdminSources {
  readiness(): Readiness;
  status(): ProxyStatus;
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.');
}

function send(res: ServerResponse, status: number, body: string, type = 'application/json'): void {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
}

/** The admin endpoint: health, readiness, metrics, status. Never on a device-facing port. */
export class AdminServer {
  private server: Server | null = null;
  private readonly readsNeedToken: boolean;

  constructor(
    private readonly cfg: Config['admin'],
    private readonly token: string,
    private readonly metrics: Metrics,
    private readonly sources: AdminSources,
    private readonly log: Logger,
  ) {
    // Reads are open on loopback, where only local users reach them; beyond it they need the token.
    this.readsNeedToken = !isLoopback(cfg.host);
  }

  async start(): Promise<{ host: string; port: number }> {
    const server = createServer((req, res) => {
      this.handle(req, res).catch((err: Error) => {
        this.log.error({ url: req.url, err: err.message }, 'admin request failed');
        if (!res.headersSent) send(res, 500, JSON.stringify({ error: 'internal error' }));
      });
    });
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new EdgeError('E_LISTEN', `admin cannot listen on ${this.cfg.host}:${this.cfg.port}: ${err.message}`, { cause: err })));
      server.listen(this.cfg.port, this.cfg.host, () => resolve());
    });
    const addr = server.address();
    return { host: this.cfg.host, port: typeof addr === 'object' && addr ? addr.port : this.cfg.port };
  }

  private authorized(req: IncomingMessage): boolean {
    const header = req.headers.authorization;
    const presented = header?.startsWith('Bearer ') ? header.slice(7).trim() : undefined;
    return tokenMatches(presented, this.token);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      send(res, 405, JSON.stringify({ error: 'method not allowed' }));
      return;
    }
    if (path === '/healthz') return send(res, 200, JSON.stringify({ status: 'ok' }));
    if (this.readsNeedToken && !this.authorized(req)) {
      send(res, 401, JSON.stringify({ error: 'a bearer token is required (E_ADMIN_AUTH)' }));
      return;
    }
    switch (path) {
      case '/readyz': {
        const r = this.sources.readiness();
        return send(res, r.ready ? 200 : 503, JSON.stringify(r.ready ? { status: 'ready' } : { status: 'not ready', reason: r.reason }));
      }
      case '/metrics':
        return send(res, 200, await this.metrics.registry.metrics(), this.metrics.registry.contentType);
      case '/api/v1/status':
        return send(res, 200, JSON.stringify(this.sources.status()));
      case '/':
        return send(res, 200, STATUS_PAGE, 'text/html; charset=utf-8');
      default:
        return send(res, 404, JSON.stringify({ error: `no route ${path}` }));
    }
  }

  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
