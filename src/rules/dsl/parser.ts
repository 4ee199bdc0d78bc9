import type { Action, Arg, BinaryOp, Expr, Pos, Rule } from './ast.js';
import type { RuleError, RuleErrorCode } from './errors.js';
import { lexer, type Token } from './lexer.js';

const KEYWORDS = new Set([
  'rule',
  'when',
  'then',
  'end',
  'priority',
  'throttle',
  'disabled',
  'and',
  'or',
  'not',
  'in',
  'contains',
  'matches',
  'true',
  'false',
  'null',
]);
const COMPARISONS: Record<string, BinaryOp> = {
  '==': '==',
  '!=': '!=',
  '<': '<',
  '<=': '<=',
  '>': '>',
  '>=': '>=',
  matches: 'matches',
  in: 'in',
  contains: 'contains',
};
// Parentheses make no node, but they do make the parser recurse: a bound that no sane rule reaches
// keeps a hostile file from exhausting the stack before the depth check sees it.
const MAX_NESTING = 512;

class SyntaxProblem extends Error {
  constructor(
    readonly pos: Pos,
    message: string,
    readonly code: RuleErrorCode = 'E_RULE_SYNTAX',
  ) {
    super(message);
  }
}

function describe(t: Token): string {
  if (t.kind === 'eof') return 'the end of the file';
  if (t.kind === 'string') return `the string "${t.text}"`;
  return `"${t.text}"`;
}

/**
 * Parses one rules file a rule at a time: each rule is yielded as soon as it is read, and the file
 * is tokenized only as far as the parser has come, so that a caller can give the event loop back
 * between two rules however large the file.
 */
export function* parseRulesStepwise(source: string, file: string, errors: RuleError[]): Generator<Rule, void, undefined> {
  const nextToken = lexer(source, file, errors);
  // Only the tokens from the one before the current on are kept: the parser never looks further
  // back, and a large file's tokens then never pile up in the heap.
  let window: Token[] = [];
  let base = 0;
  const tokenAt = (k: number): Token => {
    while (base + window.length <= k && window[window.length - 1]?.kind !== 'eof') window.push(nextToken());
    return window[Math.min(k - base, window.length - 1)]!;
  };
  const forget = (): void => {
    if (at - 1 - base < 256) return;
    window = window.slice(at - 1 - base);
    base = at - 1;
  };
  let at = 0;
  let nesting = 0;

  const peek = (ahead = 0): Token => tokenAt(at + ahead);
  const next = (): Token => tokenAt(at++);
  const isWord = (t: Token, word: string): boolean => t.kind === 'ident' && t.text === word;
  const isPunct = (t: Token, p: string): boolean => t.kind === 'punct' && t.text === p;
  const expectPunct = (p: string, what: string): Token => {
    const t = next();
    if (!isPunct(t, p)) throw new SyntaxProblem(t.pos, `expected "${p}" ${what}, found ${describe(t)}`);
    return t;
  };
  const expectWord = (word: string, what: string): Token => {
    const t = next();
    if (!isWord(t, word)) throw new SyntaxProblem(t.pos, `expected "${word}" ${what}, found ${describe(t)}`);
    return t;
  };

  function parseRule(index: number): Rule {
    const start = expectWord('rule', 'to start a rule');
    const nameTok = next();
    if (nameTok.kind !== 'ident' && nameTok.kind !== 'string')
      throw new SyntaxProblem(nameTok.pos, `expected the rule's name after "rule", found ${describe(nameTok)}`);
    let priority = 0;
    let throttleMs: number | null = null;
    let disabled = false;
    for (;;) {
      const t = peek();
      if (isWord(t, 'priority')) {
        next();
        const negative = isPunct(peek(), '-') ? (next(), true) : false;
        const n = next();
        if (n.kind !== 'number' || !Number.isInteger(n.value) || n.text.includes('.') || /e/i.test(n.text))
          throw new SyntaxProblem(n.pos, `expected a whole number after "priority", found ${describe(n)}`);
        priority = negative ? -n.value : n.value;
      } else if (isWord(t, 'throttle')) {
        next();
        const d = next();
        if (d.kind !== 'duration')
          throw new SyntaxProblem(d.pos, `expected a duration after "throttle" (such as 10m or 30s), found ${describe(d)}`);
        throttleMs = d.value;
      } else if (isWord(t, 'disabled')) {
        next();
        disabled = true;
      } else break;
    }
    expectWord('when', `after the name and options of rule "${nameTok.text}"`);
    const when = parseExpr();
    expectWord('then', 'after the condition');
    const then: Action[] = [parseAction()];
    for (;;) {
      if (isPunct(peek(), ',')) next();
      if (isWord(peek(), 'end')) {
        next();
        break;
      }
      if (peek().kind === 'eof') throw new SyntaxProblem(peek().pos, `rule "${nameTok.text}" has no "end"`);
      then.push(parseAction());
    }
    return { name: nameTok.text, file, index, priority, throttleMs, disabled, when, then, pos: start.pos };
  }

  function parseAction(): Action {
    const t = next();
    if (t.kind !== 'ident' || KEYWORDS.has(t.text))
      throw new SyntaxProblem(t.pos, `expected an action such as uplink(...), found ${describe(t)}`);
    expectPunct('(', `after the action "${t.text}"`);
    return { name: t.text, args: parseArgs(), pos: t.pos };
  }

  /** Arguments up to and including the closing parenthesis. */
  function parseArgs(): Arg[] {
    const args: Arg[] = [];
    if (isPunct(peek(), ')')) {
      next();
      return args;
    }
    for (;;) {
      const t = peek();
      if (t.kind === 'ident' && isPunct(peek(1), '=')) {
        next();
        next();
        args.push({ name: t.text, value: parseExpr(), pos: t.pos });
      } else {
        args.push({ value: parseExpr(), pos: t.pos });
      }
      const sep = next();
      if (isPunct(sep, ')')) return args;
      if (!isPunct(sep, ',')) throw new SyntaxProblem(sep.pos, `expected "," or ")" in the arguments, found ${describe(sep)}`);
    }
  }

  function nested<T>(pos: Pos, parse: () => T): T {
    if (++nesting > MAX_NESTING) throw new SyntaxProblem(pos, `expressions nested deeper than ${MAX_NESTING} levels`, 'E_RULE_TOO_LARGE');
    try {
      return parse();
    } finally {
      nesting--;
    }
  }

  function parseExpr(): Expr {
    return nested(peek().pos, parseOr);
  }

  function parseOr(): Expr {
    let left = parseAnd();
    while (isWord(peek(), 'or') || isPunct(peek(), '||')) {
      const op = next();
      left = { kind: 'binary', op: 'or', left, right: parseAnd(), pos: op.pos };
    }
    return left;
  }

  function parseAnd(): Expr {
    let left = parseNot();
    while (isWord(peek(), 'and') || isPunct(peek(), '&&')) {
      const op = next();
      left = { kind: 'binary', op: 'and', left, right: parseNot(), pos: op.pos };
    }
    return left;
  }

  function parseNot(): Expr {
    const t = peek();
    if (isWord(t, 'not') || isPunct(t, '!')) {
      next();
      return nested(t.pos, () => ({ kind: 'unary', op: 'not', operand: parseNot(), pos: t.pos }));
    }
    return parseCmp();
  }

  function parseCmp(): Expr {
    const left = parseSum();
    const t = peek();
    const op = (t.kind === 'punct' || t.kind === 'ident') && Object.hasOwn(COMPARISONS, t.text) ? COMPARISONS[t.text] : undefined;
    if (!op) return left;
    next();
    return { kind: 'binary', op, left, right: parseSum(), pos: t.pos };
  }

  function parseSum(): Expr {
    let left = parseProd();
    while (isPunct(peek(), '+') || isPunct(peek(), '-')) {
      const op = next();
      left = { kind: 'binary', op: op.text as '+' | '-', left, right: parseProd(), pos: op.pos };
    }
    return left;
  }

  function parseProd(): Expr {
    let left = parseUnary();
    while (isPunct(peek(), '*') || isPunct(peek(), '/') || isPunct(peek(), '%')) {
      const op = next();
      left = { kind: 'binary', op: op.text as '*' | '/' | '%', left, right: parseUnary(), pos: op.pos };
    }
    return left;
  }

  function parseUnary(): Expr {
    const t = peek();
    if (isPunct(t, '-')) {
      next();
      return nested(t.pos, () => ({ kind: 'unary', op: '-', operand: parseUnary(), pos: t.pos }));
    }
    return parsePostfix();
  }

  function parsePostfix(): Expr {
    let expr = parsePrimary();
    for (;;) {
      const t = peek();
      if (isPunct(t, '.')) {
        next();
        const name = next();
        // After a dot any word is a plain name: payload.end, msg.in
        if (name.kind !== 'ident') throw new SyntaxProblem(name.pos, `expected a field name after ".", found ${describe(name)}`);
        expr = { kind: 'member', object: expr, name: name.text, pos: name.pos };
      } else if (isPunct(t, '[')) {
        next();
        const index = parseExpr();
        expectPunct(']', 'to close the index');
        expr = { kind: 'index', object: expr, index, pos: t.pos };
      } else return expr;
    }
  }

  function parsePrimary(): Expr {
    const t = next();
    switch (t.kind) {
      case 'number':
        return { kind: 'literal', value: t.value, pos: t.pos };
      case 'duration':
        return { kind: 'literal', value: t.value, duration: true, pos: t.pos };
      case 'string':
        return { kind: 'literal', value: t.text, pos: t.pos };
      case 'ident': {
        if (t.text === 'true' || t.text === 'false') return { kind: 'literal', value: t.text === 'true', pos: t.pos };
        if (t.text === 'null') return { kind: 'literal', value: null, pos: t.pos };
        if (KEYWORDS.has(t.text)) throw new SyntaxProblem(t.pos, `unexpected keyword "${t.text}" where a value was expected`);
        if (isPunct(peek(), '(')) {
          next();
          return { kind: 'call', name: t.text, args: parseArgs(), pos: t.pos };
        }
        return { kind: 'name', name: t.text, pos: t.pos };
      }
      case 'punct': {
        if (t.text === '(') {
          const inner = parseExpr();
          expectPunct(')', 'to close the parenthesis');
          return inner;
        }
        if (t.text === '[') {
          const items: Expr[] = [];
          if (isPunct(peek(), ']')) {
            next();
            return { kind: 'list', items, pos: t.pos };
          }
          for (;;) {
            items.push(parseExpr());
            const sep = next();
            if (isPunct(sep, ']')) return { kind: 'list', items, pos: t.pos };
            if (!isPunct(sep, ',')) throw new SyntaxProblem(sep.pos, `expected "," or "]" in the list, found ${describe(sep)}`);
          }
        }
        if (t.text === '{') {
          const entries: Array<{ key: string; value: Expr; pos: Pos }> = [];
          if (isPunct(peek(), '}')) {
            next();
            return { kind: 'object', entries, pos: t.pos };
          }
          for (;;) {
            const key = next();
            if (key.kind !== 'ident' && key.kind !== 'string')
              throw new SyntaxProblem(key.pos, `expected a key (a name or a string) in the object, found ${describe(key)}`);
            expectPunct(':', `after the key "${key.text}"`);
            entries.push({ key: key.text, value: parseExpr(), pos: key.pos });
            const sep = next();
            if (isPunct(sep, '}')) return { kind: 'object', entries, pos: t.pos };
            if (!isPunct(sep, ',')) throw new SyntaxProblem(sep.pos, `expected "," or "}" in the object, found ${describe(sep)}`);
          }
        }
        throw new SyntaxProblem(t.pos, `unexpected ${describe(t)} where a value was expected`);
      }
      default:
        throw new SyntaxProblem(t.pos, `unexpected ${describe(t)} where a value was expected`);
    }
  }

  let index = 0;
  while (peek().kind !== 'eof') {
    const before = at;
    let rule: Rule;
    try {
      if (!isWord(peek(), 'rule')) throw new SyntaxProblem(peek().pos, `expected "rule", found ${describe(peek())}`);
      rule = parseRule(index++);
    } catch (err) {
      if (!(err instanceof SyntaxProblem)) throw err;
      errors.push({ file, line: err.pos.line, col: err.pos.col, code: err.code, message: err.message });
      // Resume at the next "rule" that starts a line's first token, or the end.
      if (at === before) at++;
      while (peek().kind !== 'eof' && !(isWord(peek(), 'rule') && (at === 0 || tokenAt(at - 1).pos.line < peek().pos.line))) at++;
      forget();
      continue;
    }
    forget();
    yield rule;
  }
}
