// Compile errors of the rule language: each with a stable code, a place, and a code frame.

export type RuleErrorCode =
  | 'E_RULE_SYNTAX'
  | 'E_RULE_UNKNOWN_FUNCTION'
  | 'E_RULE_UNKNOWN_ACTION'
  | 'E_RULE_ARITY'
  | 'E_RULE_ARG'
  | 'E_RULE_UNKNOWN_ROOT'
  | 'E_RULE_DUPLICATE'
  | 'E_RULE_TOO_LARGE'
  | 'E_RULE_FILE_NAME';

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
