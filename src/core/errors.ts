// The one catalogue of the proxy's error codes. Every error the proxy raises on purpose
// is an EdgeError with a stable code; docs/errors.md lists the same codes (a test keeps them in step).

/**
 * Each code with what it means, the HTTP status it is answered with, and whether the same request
 * may succeed later (the cache full, the proxy stopping: a device retries, a client answered 503
 * tries again) or is refused for good (a bad token, a topic outside the filters: it never will).
 * Adapters choose their protocol's answer from `retryable`; the admin API answers `status`.
 */
export const ERROR_CODES = {
  E_CONFIG_YAML: { text: 'the configuration file is not valid YAML', status: 400, retryable: false },
  E_CONFIG_UNKNOWN_KEY: { text: 'a configuration key that does not exist', status: 400, retryable: false },
  E_CONFIG_TYPE: { text: 'a configuration value of the wrong type', status: 400, retryable: false },
  E_CONFIG_VALUE: { text: 'a configuration value out of range or not allowed', status: 400, retryable: false },
  E_CONFIG_FILE: { text: 'the configuration file, or a file it names, cannot be read', status: 400, retryable: false },
  E_MALFORMED: { text: 'a packet or message that does not follow its protocol', status: 400, retryable: false },
  E_TOO_LARGE: { text: 'a payload larger than limits.maxPayloadBytes', status: 413, retryable: false },
  E_ACL: {
    text: 'a topic the device may not use: outside its filters, or a subscription to the reserved $edge/ tree',
    status: 403,
    retryable: false,
  },
  E_AUTH: {
    text: 'a device that did not prove who it is: not in the registry, a wrong token, a refused certificate',
    status: 401,
    retryable: false,
  },
  E_REGISTRY: { text: 'the device registry (devicesFile) cannot be read or has errors', status: 500, retryable: false },
  E_TLS: { text: 'a TLS certificate, key or CA file that cannot be read or used', status: 500, retryable: false },
  E_CACHE_FULL: { text: 'the durable cache cannot take the message now', status: 503, retryable: true },
  E_UNSUPPORTED: {
    text: 'a request the protocol does not offer: a binary /ws frame, an unknown op, qos 2 on /ws',
    status: 400,
    retryable: false,
  },
  E_CACHE_WRITE: { text: 'the durable cache failed to write', status: 503, retryable: true },
  E_CACHE_OPEN: { text: 'the durable cache cannot be opened', status: 500, retryable: false },
  E_LISTEN: { text: 'an endpoint cannot listen on its address', status: 500, retryable: false },
  E_DATA_DIR_LOCKED: { text: 'the data directory is in use by another running proxy', status: 409, retryable: false },
  E_RULES_DIR_LOCKED: { text: 'the rules directory is in use by another running proxy', status: 409, retryable: false },
  E_UPLINK_CONFIG: { text: 'the uplink settings cannot be used', status: 500, retryable: false },
  E_ADMIN_AUTH: { text: 'an admin request without a valid token', status: 401, retryable: false },
  E_USAGE: { text: 'a command line that cannot be understood', status: 400, retryable: false },
  E_RULES_INVALID: { text: 'the rules directory holds a ruleset with errors', status: 422, retryable: false },
  E_RULES_REQUEST: { text: 'a rules push whose body cannot be read as rules files', status: 400, retryable: false },
  E_RULES_EMPTY: { text: 'a rules push that defines no rule, without allowEmpty', status: 422, retryable: false },
  E_RULES_WRITE: { text: 'the rules directory cannot be written, so a push cannot be applied', status: 500, retryable: false },
  E_RULES_NO_EARLIER: { text: 'a rollback with no earlier rules version to go back to', status: 409, retryable: false },
  E_RULES_NO_FILE: { text: 'a rules change that removes a file the running set does not have', status: 404, retryable: false },
  E_STOPPING: { text: 'a change asked of the proxy while it is stopping', status: 503, retryable: true },
  E_MODEL: {
    text: 'a model that cannot be loaded or run: its ONNX file, its yaml, or the two not matching',
    status: 422,
    retryable: false,
  },
  E_INTERNAL: { text: 'a fault of the proxy itself while handling a message', status: 500, retryable: true },
} as const satisfies Record<string, { text: string; status: number; retryable: boolean }>;

export type ErrorCode = keyof typeof ERROR_CODES;

export class EdgeError extends Error {
  readonly code: ErrorCode;
  /** The HTTP status this error is answered with: the catalogue's, unless the case needs another (413 for a body too large). */
  readonly status: number;
  constructor(code: ErrorCode, message: string, options: { cause?: unknown; status?: number } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'EdgeError';
    this.code = code;
    this.status = options.status ?? ERROR_CODES[code].status;
  }

  /** The same request may succeed later: the device or client should retry rather than give up. */
  get retryable(): boolean {
    return ERROR_CODES[this.code].retryable;
  }
}

/**
 * One problem found in a configuration, with where it was found. The files it names are checked too:
 * a TLS file that cannot be used is an E_TLS at the key naming it, a problem inside the device registry
 * an E_REGISTRY at the registry's own line, as the running proxy reports it.
 */
export interface ConfigProblem {
  code: 'E_CONFIG_YAML' | 'E_CONFIG_UNKNOWN_KEY' | 'E_CONFIG_TYPE' | 'E_CONFIG_VALUE' | 'E_CONFIG_FILE' | 'E_TLS' | 'E_REGISTRY';
  /** file name, or `env:NAME` for an environment override; for E_REGISTRY the registry file */
  source: string;
  line: number;
  col: number;
  /** dotted key path, `` for the document itself; for E_REGISTRY the place in the registry, `[1].id` */
  key: string;
  message: string;
}

export function formatConfigProblem(p: ConfigProblem): string {
  return `${p.source}:${p.line}:${p.col}: ${p.key || '(root)'}: ${p.code}: ${p.message}`;
}

/** A ruleset that does not compile: the message lists every error with its code frame. */
export class RuleLoadError extends EdgeError {
  constructor(
    listing: string,
    readonly count: number,
  ) {
    super('E_RULES_INVALID', `the rules have ${count} error${count === 1 ? '' : 's'}:\n${listing}`);
    this.name = 'RuleLoadError';
  }
}

export class ConfigError extends EdgeError {
  readonly problems: readonly ConfigProblem[];
  constructor(problems: readonly ConfigProblem[]) {
    super(problems[0]?.code ?? 'E_CONFIG_VALUE', problems.map(formatConfigProblem).join('\n'));
    this.name = 'ConfigError';
    this.problems = problems;
  }
}
