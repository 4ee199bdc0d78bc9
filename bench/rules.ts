import type { EdgeMessage } from '../src/core/message.js';
import { compileRuleset } from '../src/rules/loader.js';
import { msgValue } from '../src/rules/msg.js';
import type { Value } from '../src/rules/values.js';

export interface RulesCase {
  rules: number;
  inScope: number;
  nsPerMessage: number;
  fired: number;
}

export interface RulesResult {
  cases: RulesCase[];
  compileMs1000: number;
}

const RULE = (i: number, scope: string): string =>
  `rule r${i}\nwhen msg.topic matches "${scope}" and payload.temp > 30 and avg(payload.temp, 10) > 25\nthen uplink(priority = "high")\nend\n`;

function ruleset(n: number, outOfScopeShare: number): string {
  const out = Math.round(n * outOfScopeShare);
  let text = '';
  for (let i = 0; i < n; i++) text += RULE(i, i < n - out ? 'devices/+/telemetry' : `plant-${i}/+/telemetry`);
  return text;
}

const engineOpts = { maxWindowValues: 10_000, stateTtlSeconds: 3600, onTruncated() {} };
const limits = { maxFileBytes: 64 * 2 ** 20, maxRules: 100_000 };

/**
 * The rule engine on its own, in this process: the cost per message of evaluating N rules of the
 * kind the issue names, all in scope or 90 % with scopes the traffic never matches. The payload is
 * decoded once per message outside the measurement (the proxy does that once, however many rules).
 */
export function benchRules(progress: (line: string) => void): RulesResult {
  const cases: RulesCase[] = [];
  const messages: Array<{ msg: EdgeMessage; payload: Value }> = [];
  for (let i = 0; i < 5000; i++) {
    const device = `d${i % 50}`;
    const payload = { temp: 20 + (i % 30), humidity: 40 };
    messages.push({
      msg: {
        id: `id${i}`,
        ts: 1_700_000_000_000 + i * 10,
        deviceId: device,
        protocol: 'mqtt',
        topic: `devices/${device}/telemetry`,
        payload: Buffer.from(JSON.stringify(payload)),
        contentType: 'json',
        qos: 1,
        retain: false,
        props: {},
        hops: 0,
      },
      payload,
    });
  }
  for (const [n, share] of [
    [1, 0],
    [10, 0],
    [100, 0],
    [1000, 0],
    [1000, 0.9],
  ] as const) {
    const result = compileRuleset([{ name: 'bench.rules', text: ruleset(n, share) }], limits, engineOpts);
    if (!result.ruleset) throw new Error(result.errors[0]?.message);
    const rules = result.ruleset;
    const edge = { id: 'bench', uplinkConnected: true };
    let fired = 0;
    const run = (rounds: number): number => {
      const start = process.hrtime.bigint();
      for (let r = 0; r < rounds; r++) {
        for (const { msg, payload } of messages) {
          const ev = rules.evaluate(msg, { payload: () => payload, msgValue: () => msgValue(msg), device: null, edge });
          fired += ev.fired.length;
        }
      }
      return Number(process.hrtime.bigint() - start) / (rounds * messages.length);
    };
    run(n >= 1000 ? 1 : 4); // warm up the JIT
    fired = 0;
    const ns = run(n >= 1000 ? 2 : 20);
    const inScope = n - Math.round(n * share);
    cases.push({ rules: n, inScope, nsPerMessage: ns, fired });
    progress(`  ${n} rules, ${inScope} in scope: ${(ns / 1000).toFixed(2)} us per message`);
  }
  const t0 = process.hrtime.bigint();
  const big = compileRuleset([{ name: 'bench.rules', text: ruleset(1000, 0.9) }], limits, engineOpts);
  const compileMs1000 = Number(process.hrtime.bigint() - t0) / 1e6;
  if (!big.ruleset) throw new Error('1000-rule set did not compile');
  return { cases, compileMs1000 };
}
