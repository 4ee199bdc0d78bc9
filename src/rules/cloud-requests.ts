import type { Logger } from 'pino';
import type { EdgeError } from '../core/errors.js';
import { changeFromBody, outcomeBody, PushRequestError, pushFromBody } from './push-request.js';
import type { RuleFile } from './loader.js';
import type { PushOptions, RulesChange, RulesOutcome } from './store.js';

/** What the cloud may ask of the rules: a whole set on `rules/set`, a change of some files on `rules/change`. */
export type CloudRulesRequest = 'set' | 'change';

/** The rules store as the cloud reaches it. */
export interface CloudRulesTarget {
  push(files: RuleFile[], source: 'cloud', opts?: PushOptions): Promise<RulesOutcome>;
  change(change: RulesChange, source: 'cloud', opts?: PushOptions): Promise<RulesOutcome>;
}

/**
 * A rules request from the cloud broker, answered on <controlPrefix>rules/result as the admin API
 * answers it, plus `"status"` and `"request"` (docs/rules.md, Pushing rules). A retained message
 * is never applied (the broker replays it at every reconnection); an empty one is refused
 * (E_RULES_EMPTY) as is any request that leaves no rule, unless it says {"allowEmpty": true}.
 */
export function answerCloudRulesRequest(
  kind: CloudRulesRequest,
  payload: Buffer,
  retained: boolean,
  rules: CloudRulesTarget,
  answer: (body: string) => boolean,
  log: Logger,
): void {
  const topic = `rules/${kind}`;
  if (retained && payload.length === 0) {
    // `mosquitto_pub -r -n` clears the retained message: not a request, nothing to answer.
    log.info({ topic }, `an empty retained message on ${topic} (a retained request cleared) is not a request; ignored`);
    return;
  }
  if (retained) {
    // The broker keeps its copy and sends it again at every reconnection, until it is cleared.
    log.warn(
      { topic },
      `a retained message on ${topic} is ignored; publish ${topic} without the retain flag. The broker sends its stored copy again at every reconnection until it is cleared: mosquitto_pub -r -n -t '<controlPrefix>${topic}' (by default edge/<edge.id>/${topic}) with the broker's connection options. The proxy ignores that empty message: it changes no rule`,
    );
    return;
  }
  const reply = (status: number, body: Record<string, unknown>): void => {
    if (!answer(JSON.stringify({ status, request: kind, ...body }))) {
      log.warn({ status, topic }, `the answer to ${topic} from the cloud was not sent: the cloud link is down`);
    }
  };
  let outcome: Promise<RulesOutcome>;
  try {
    if (kind === 'set') {
      // An empty message is a push of no file, which the store refuses unless allowEmpty (it cannot say so).
      const push = payload.length === 0 ? { files: [], allowEmpty: false } : pushFromBody(payload, 'auto');
      outcome = rules.push(push.files, 'cloud', { allowEmpty: push.allowEmpty });
    } else {
      const change = changeFromBody(payload);
      outcome = rules.change({ files: change.files, remove: change.remove }, 'cloud', { allowEmpty: change.allowEmpty });
    }
  } catch (err) {
    if (!(err instanceof PushRequestError)) throw err;
    log.warn({ err: err.message, topic }, `a message on ${topic} from the cloud could not be read; nothing changed`);
    return reply(err.status, { error: err.message, code: err.code });
  }
  outcome.then(
    (o) => {
      const { status, body } = outcomeBody(o);
      reply(status, body);
    },
    (err: EdgeError) => {
      // Refusals for no rule or a missing file are logged by the store, with what to do.
      if (err.code !== 'E_RULES_EMPTY' && err.code !== 'E_RULES_NO_FILE')
        log.error({ err: err.message, code: err.code, topic }, 'a rules request from the cloud failed; the running set keeps running');
      reply(typeof err.status === 'number' ? err.status : 500, { error: err.message, code: err.code ?? 'E_INTERNAL' });
    },
  );
}
