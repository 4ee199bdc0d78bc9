import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import { EdgeError } from '../core/errors.js';
import { bodyKindOf, changeFromBody, MAX_PUSH_BYTES, outcomeBody, PushRequestError, pushFromBody } from '../rules/push-request.js';
import type { PushOptions, RulesChange, RulesOutcome, RulesVersion } from '../rules/store.js';
import type { RuleFile } from '../rules/loader.js';
import type { Metrics } from './metrics.js';
import { tokenMatches } from './token.js';
import { STATUS_PAGE } from './status-page.js';
import type { ProxyStatus } from './status.js';
import { isLoopback } from '../core/host.js';

export interface Readiness {
  ready: boolean;
  reason: string | null;
}

/** Rule management behind /api/v1/rules (docs/rules.md, Pushing rules); the RulesStore. */
export interface RulesAdmin {
  readonly version: RulesVersion | null;
  validate(files: RuleFile[], opts?: PushOptions): Promise<RulesOutcome>;
  push(files: RuleFile[], source: 'api', opts?: PushOptions): Promise<RulesOutcome>;
  change(change: RulesChange, source: 'api', opts?: PushOptions): Promise<RulesOutcome>;
  validateChange(change: RulesChange, opts?: PushOptions): Promise<RulesOutcome>;
  rollback(): Promise<RulesOutcome>;
}

export interface AdminSources {
  readiness(): Readiness;
  status(): ProxyStatus;
  rules: RulesAdmin;
}

function send(res: ServerResponse, status: number, body: string, type = 'application/json'): void {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
}

function sendError(res: ServerResponse, status: number, code: string, message: string): void {
  send(res, status, JSON.stringify({ error: message, code }));
}

/** `?allowEmpty=1` (or `true`; `0`, `false`), for a text body, which cannot say it itself. */
function allowEmptyOf(url: string | undefined): boolean {
  const value = new URL(url ?? '/', 'http://admin').searchParams.get('allowEmpty');
  if (value === null || value === '0' || value === 'false') return false;
  if (value === '' || value === '1' || value === 'true') return true;
  throw new PushRequestError(`?allowEmpty=${value}: it is 1 or 0 (true or false)`);
}

/** The request body, refused past MAX_PUSH_BYTES without reading the rest. */
function readBody(req: IncomingMessage): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > MAX_PUSH_BYTES)
    return Promise.reject(new PushRequestError(`the body is ${declared} bytes; a push may carry at most ${MAX_PUSH_BYTES}`, 413));
  return new Promise((resolve, reject) => {
    let chunks: Buffer[] = [];
    // A promise settles once: the 413 is given at the first chunk past the limit, the rest is ignored.
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_PUSH_BYTES) {
        // The rest is read and thrown away, so that the client gets the answer rather than a reset.
        chunks = [];
        reject(new PushRequestError(`the body is over ${MAX_PUSH_BYTES} bytes, the most a push may carry`, 413));
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => {
      if (size <= MAX_PUSH_BYTES) resolve(Buffer.concat(chunks));
    });
    req.on('error', reject);
  });
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
      server.once('error', (err) =>
        reject(
          new EdgeError(
            'E_LISTEN',
            `admin cannot listen on ${this.cfg.host}:${this.cfg.port}: ${err.message}; the port is admin.port (environment EDGE_PROXY_ADMIN_PORT), the address admin.host (EDGE_PROXY_ADMIN_HOST)`,
            { cause: err },
          ),
        ),
      );
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
    const path = (req.url ?? '/').split('?')[0]!;
    const read = req.method === 'GET' || req.method === 'HEAD';
    // Probes (Kubernetes, systemd, a load balancer) send no token: up or ready and a short reason, nothing more.
    if (path === '/healthz' && read) return send(res, 200, JSON.stringify({ status: 'ok' }));
    if (path === '/readyz' && read) {
      const r = this.sources.readiness();
      return send(res, r.ready ? 200 : 503, JSON.stringify(r.ready ? { status: 'ready' } : { status: 'not ready', reason: r.reason }));
    }
    // The status page is static and reveals nothing: it is served without a token, and asks for one
    // itself when its call to /api/v1/status answers 401.
    if (path === '/' && read) return send(res, 200, STATUS_PAGE, 'text/html; charset=utf-8');
    // Every write needs the token; reads need it beyond loopback, where others could reach them.
    if ((!read || this.readsNeedToken) && !this.authorized(req)) {
      return sendError(
        res,
        401,
        'E_ADMIN_AUTH',
        `a valid bearer token is required${read ? '' : ' for every change'}: Authorization: Bearer <token> (the token is in <dataDir>/admin-token unless admin.token or admin.tokenFile is set)`,
      );
    }
    if (path.startsWith('/api/v1/rules')) return this.rules(req, res, path);
    if (!read) return sendError(res, 405, 'E_USAGE', `${req.method} is not allowed on ${path}`);
    switch (path) {
      case '/metrics':
        return send(res, 200, await this.metrics.registry.metrics(), this.metrics.registry.contentType);
      case '/api/v1/status':
        return send(res, 200, JSON.stringify(this.sources.status()));
      default:
        return send(res, 404, JSON.stringify({ error: `no route ${path}` }));
    }
  }

  private async rules(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
    const rules = this.sources.rules;
    const route = `${req.method} ${path}`;
    try {
      switch (route) {
        case 'GET /api/v1/rules':
        case 'HEAD /api/v1/rules': {
          const v = rules.version;
          return send(
            res,
            200,
            JSON.stringify(
              v
                ? { version: v.version, sha256: v.sha256, rules: v.rules, files: v.files }
                : { version: 0, sha256: null, rules: 0, files: {} },
            ),
          );
        }
        case 'PUT /api/v1/rules':
        case 'POST /api/v1/rules/validate': {
          const { files, allowEmpty } = pushFromBody(await readBody(req), bodyKindOf(req.headers['content-type']));
          const opts = { allowEmpty: allowEmptyOf(req.url) || allowEmpty };
          const outcome = path === '/api/v1/rules' ? await rules.push(files, 'api', opts) : await rules.validate(files, opts);
          const { status, body } = outcomeBody(outcome);
          return send(res, status, JSON.stringify(body));
        }
        case 'PATCH /api/v1/rules':
        case 'PATCH /api/v1/rules/validate': {
          // Some files added, replaced or removed; the others keep running (docs/rules.md, Adding and removing files).
          const { files, remove, allowEmpty } = changeFromBody(await readBody(req));
          const opts = { allowEmpty: allowEmptyOf(req.url) || allowEmpty };
          const outcome =
            path === '/api/v1/rules'
              ? await rules.change({ files, remove }, 'api', opts)
              : await rules.validateChange({ files, remove }, opts);
          const { status, body } = outcomeBody(outcome);
          return send(res, status, JSON.stringify(body));
        }
        case 'POST /api/v1/rules/rollback': {
          const { status, body } = outcomeBody(await rules.rollback());
          return send(res, status, JSON.stringify(body));
        }
        default: {
          const known = ['/api/v1/rules', '/api/v1/rules/validate', '/api/v1/rules/rollback'].includes(path);
          return known
            ? sendError(
                res,
                405,
                'E_USAGE',
                `${req.method} is not allowed on ${path} (GET, PUT or PATCH /api/v1/rules, POST or PATCH /api/v1/rules/validate, POST /api/v1/rules/rollback)`,
              )
            : sendError(res, 404, 'E_USAGE', `no route ${path}`);
        }
      }
    } catch (err) {
      if (!(err instanceof EdgeError)) throw err;
      if (err.code === 'E_RULES_WRITE')
        this.log.error({ err: err.message }, 'a valid rules push could not be written; the running set keeps running');
      // A retryable refusal (the proxy stopping) tells the client when to come back.
      if (err.retryable) res.setHeader('retry-after', '5');
      return sendError(res, err.status, err.code, err.message);
      throw err;
    }
  }

  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
