// The one catalogue of the proxy's error codes. Every error the proxy raises on purpose
// is an EdgeError with a stable code; docs/errors.md lists the same codes (a test keeps them in step).

export const ERROR_CODES = {
  E_CONFIG_YAML: 'the configuration file is not valid YAML',
  E_CONFIG_UNKNOWN_KEY: 'a configuration key that does not exist',
  E_CONFIG_TYPE: 'a configuration value of the wrong type',
  E_CONFIG_VALUE: 'a configuration value out of range or not allowed',
  E_CONFIG_FILE: 'the configuration file cannot be read',
  E_MALFORMED: 'a packet or message that does not follow its protocol',
  E_TOO_LARGE: 'a payload larger than limits.maxPayloadBytes',
  E_ACL: 'a topic the device may not use (the reserved $edge/ tree)',
  E_CACHE_FULL: 'the durable cache cannot take the message now',
  E_CACHE_WRITE: 'the durable cache failed to write',
  E_CACHE_OPEN: 'the durable cache cannot be opened',
  E_LISTEN: 'an endpoint cannot listen on its address',
  E_UPLINK_CONFIG: 'the uplink settings cannot be used',
  E_ADMIN_AUTH: 'an admin request without a valid token',
  E_USAGE: 'a command line that cannot be understood',
  E_RULES_INVALID: 'the rules directory holds a ruleset with errors',
  E_RULES_REQUEST: 'a rules push whose body cannot be read as rules files',
  E_RULES_WRITE: 'the rules directory cannot be written, so a push cannot be applied',
  E_RULES_NO_EARLIER: 'a rollback with no earlier rules version to go back to',
  E_STOPPING: 'a change asked of the proxy while it is stopping',
  E_INTERNAL: 'a fault of the proxy itself while handling a message',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export class EdgeError extends Error {
  readonly code: ErrorCode;
  readonly retryable: boolean;
  constructor(code: ErrorCode, message: string, options: { retryable?: boolean; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'EdgeError';
    this.code = code;
    this.retryable = options.retryable ?? false;
  }
}

/** One problem found in a configuration, with where it was found. */
export interface ConfigProblem {
  code: 'E_CONFIG_YAML' | 'E_CONFIG_UNKNOWN_KEY' | 'E_CONFIG_TYPE' | 'E_CONFIG_VALUE' | 'E_CONFIG_FILE';
  /** file name, or `env:NAME` for an environment override */
  source: string;
  line: number;
  col: number;
  /** dotted key path, `` for the document itself */
  key: string;
  message: string;
}

export function formatConfigProblem(p: ConfigProblem): string {
  return `${p.source}:${p.line}:${p.col}: ${p.key || '(root)'}: ${p.code}: ${p.message}`;
}

/** A ruleset that does not compile: the message lists every error with its code frame. */
export class RuleLoadError extends EdgeError {
  constructor(listing: string, readonly count: number) {
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
