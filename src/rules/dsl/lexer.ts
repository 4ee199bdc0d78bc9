import type { Pos } from './ast.js';
import type { RuleError } from './errors.js';

type TokenKind = 'ident' | 'number' | 'duration' | 'string' | 'punct' | 'eof';

export interface Token {
  kind: TokenKind;
  /** the identifier, the punctuation, or the decoded string */
  text: string;
  /** numbers: the value; durations: milliseconds */
  value: number;
  pos: Pos;
}

const MAX_ERRORS_PER_FILE = 50;
const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
// Longest first, so that `<=` is one token, not `<` then `=`.
const PUNCT = [
  '==',
  '!=',
  '<=',
  '>=',
  '&&',
  '||',
  '(',
  ')',
  '[',
  ']',
  '{',
  '}',
  ',',
  '.',
  ':',
  '=',
  '<',
  '>',
  '+',
  '-',
  '*',
  '/',
  '%',
  '!',
];

const isDigit = (c: string): boolean => c >= '0' && c <= '9';
const isIdentStart = (c: string): boolean => (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c === '_';
const isIdentPart = (c: string): boolean => isIdentStart(c) || isDigit(c);

/**
 * The tokens of a rules file one at a time, as the parser asks for them, so that a file can be
 * read a rule at a time. After the end, every call answers the `eof` token.
 */
export function lexer(source: string, file: string, errors: RuleError[]): () => Token {
  let i = 0;
  let line = 1;
  let lineStart = 0;
  const pos = (at: number): Pos => ({ line, col: at - lineStart + 1 });
  let failures = 0;
  const fail = (at: number, message: string): void => {
    // A file of junk would otherwise make one error per character.
    if (++failures <= MAX_ERRORS_PER_FILE) errors.push({ file, ...pos(at), code: 'E_RULE_SYNTAX', message });
    else if (failures === MAX_ERRORS_PER_FILE + 1)
      errors.push({
        file,
        ...pos(at),
        code: 'E_RULE_SYNTAX',
        message: `more than ${MAX_ERRORS_PER_FILE} errors in this file; the rest are not listed`,
      });
  };
  return (): Token => {
    while (i < source.length) {
      const c = source[i]!;
      if (c === '\n') {
        i++;
        line++;
        lineStart = i;
        continue;
      }
      if (c === ' ' || c === '\t' || c === '\r') {
        i++;
        continue;
      }
      if (c === '#') {
        while (i < source.length && source[i] !== '\n') i++;
        continue;
      }
      const start = i;
      if (isDigit(c)) {
        while (isDigit(source[i] ?? '')) i++;
        if (source[i] === '.' && isDigit(source[i + 1] ?? '')) {
          i++;
          while (isDigit(source[i] ?? '')) i++;
        }
        if (
          (source[i] === 'e' || source[i] === 'E') &&
          (isDigit(source[i + 1] ?? '') || ((source[i + 1] === '+' || source[i + 1] === '-') && isDigit(source[i + 2] ?? '')))
        ) {
          i += 2;
          while (isDigit(source[i] ?? '')) i++;
        }
        const value = Number(source.slice(start, i));
        if (isIdentStart(source[i] ?? '')) {
          const unitStart = i;
          while (isIdentPart(source[i] ?? '')) i++;
          const unit = source.slice(unitStart, i);
          if (Object.hasOwn(UNITS, unit)) {
            return { kind: 'duration', text: source.slice(start, i), value: value * UNITS[unit]!, pos: pos(start) };
          } else {
            fail(unitStart, `"${source.slice(start, i)}" is not a number or a duration (units: ms, s, m, h, d)`);
          }
          continue;
        }
        return { kind: 'number', text: source.slice(start, i), value, pos: pos(start) };
      }
      if (isIdentStart(c)) {
        while (isIdentPart(source[i] ?? '')) i++;
        return { kind: 'ident', text: source.slice(start, i), value: 0, pos: pos(start) };
      }
      if (c === '"') {
        i++;
        let text = '';
        let closed = false;
        while (i < source.length) {
          const ch = source[i]!;
          if (ch === '"') {
            i++;
            closed = true;
            break;
          }
          if (ch === '\n') break;
          if (ch === '\\') {
            const esc = source[i + 1];
            const simple: Record<string, string> = { '"': '"', '\\': '\\', n: '\n', r: '\r', t: '\t' };
            if (esc !== undefined && Object.hasOwn(simple, esc)) {
              text += simple[esc];
              i += 2;
              continue;
            }
            if (esc === 'u' && source[i + 2] === '{') {
              const close = source.indexOf('}', i + 3);
              const hex = close > 0 ? source.slice(i + 3, close) : '';
              const cp = /^[0-9A-Fa-f]{1,6}$/.test(hex) ? parseInt(hex, 16) : NaN;
              if (Number.isInteger(cp) && cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff)) {
                text += String.fromCodePoint(cp);
                i = close + 1;
                continue;
              }
              fail(i, 'a \\u{...} escape needs 1 to 6 hex digits naming a Unicode code point');
              i += 2;
              continue;
            }
            fail(i, `unknown escape "\\${esc ?? ''}" in a string (use \\" \\\\ \\n \\r \\t or \\u{hex})`);
            i += 2;
            continue;
          }
          text += ch;
          i++;
        }
        if (!closed) fail(start, 'a string is not closed before the end of the line');
        return { kind: 'string', text, value: 0, pos: pos(start) };
      }
      const punct = PUNCT.find((p) => source.startsWith(p, i));
      if (punct) {
        i += punct.length;
        return { kind: 'punct', text: punct, value: 0, pos: pos(start) };
      }
      fail(i, `unexpected character "${c}"`);
      i++;
    }
    return { kind: 'eof', text: '', value: 0, pos: pos(i) };
  };
}
