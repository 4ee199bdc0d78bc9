// The rules analyzer thread (see analyzer.ts): parses and checks a ruleset, answers plain data.
import { parentPort } from 'node:worker_threads';
import { analyzeRuleset, type RuleFile, type RuleLimits } from './loader.js';

parentPort?.on('message', (req: { id: number; files: RuleFile[]; limits: RuleLimits }) => {
  try {
    parentPort!.postMessage({ id: req.id, analysis: analyzeRuleset(req.files, req.limits) });
  } catch (err) {
    parentPort!.postMessage({ id: req.id, failure: (err as Error).message });
  }
});
