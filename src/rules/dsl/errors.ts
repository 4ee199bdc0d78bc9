// Compile errors of the rule language: each with a stable code, a place, and a code frame.

export const RULE_ERROR_CODES = [
  'E_RULE_SYNTAX', 'E_RULE_UNKNOWN_FUNCTION', 'E_RULE_UNKNOWN_ACTION', 'E_RULE_ARITY', 'E_RULE_ARG',
  'E_RULE_UNKNOWN_ROOT', 'E_RULE_DUPLICATE', 'E_RULE_TOO_LARGE', 'E_RULE_FILE_NAME',
] as const;

export type RuleErrorCode = (typeof RULE_ERROR_CODES)[number];

export interface RuleError {
  file: string;
  line: number;
  col: number;
  code: RuleErrorCode;
  message: string;
}

/** The order errors are listed in: by file name, then line, then column. */
export function byPlace(a: RuleError, b: RuleError): number {
  return a.file < b.file ? -1 : a.file > b.file ? 1 : a.line - b.line || a.col - b.col;
}

/**
 * `file:line:col: code: message`, then the source line and a caret under the column. `lines` is
 * the source already split, so that many errors in one file cost one split. A long line is cut to
 * the part around the column.
 */
export function formatRuleError(e: RuleError, lines: readonly string[] | undefined): string {
  const head = `${e.file}:${e.line}:${e.col}: ${e.code}: ${e.message}`;
  const line = lines?.[e.line - 1];
  if (line === undefined) return head;
  let text = line.replace(/\t/g, ' ').replace(/\r$/, '');
  let col = e.col;
  if (text.length > FRAME_WIDTH) {
    const from = Math.max(0, Math.min(col - 1 - FRAME_WIDTH / 2, text.length - FRAME_WIDTH));
    text = (from > 0 ? '…' : '') + text.slice(from, from + FRAME_WIDTH) + (from + FRAME_WIDTH < text.length ? '…' : '');
    col = col - from + (from > 0 ? 1 : 0);
  }
  return `${head}\n  ${text}\n  ${' '.repeat(Math.max(0, col - 1))}^`;
}

const FRAME_WIDTH = 160;

/** The closest of `candidates` to `word`, when it is close enough to be a likely typo. */
export function didYouMean(word: string, candidates: readonly string[]): string | null {
  let best: string | null = null;
  let bestDistance = Infinity;
  for (const c of candidates) {
    const d = editDistance(word.toLowerCase(), c.toLowerCase());
    if (d < bestDistance) {
      bestDistance = d;
      best = c;
    }
  }
  return best !== null && bestDistance <= Math.max(1, Math.floor(word.length / 3)) ? best : null;
}

/** Edits between two words, a swap of two neighbouring letters counting as one ("lgo" is one from "log"). */
function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, d[i - 2]![j - 2]! + 1);
      d[i]![j] = v;
    }
  }
  return d[a.length]![b.length]!;
}
