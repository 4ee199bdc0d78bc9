// The rule language's syntax tree. Every node keeps where it came from, so that each error and
// each runtime fault can point at its line and column.

export interface Pos {
  line: number;
  col: number;
}

export type Expr =
  | { kind: 'literal'; value: null | boolean | number | string; pos: Pos; duration?: boolean }
  | { kind: 'name'; name: string; pos: Pos }
  | { kind: 'member'; object: Expr; name: string; pos: Pos }
  | { kind: 'index'; object: Expr; index: Expr; pos: Pos }
  | { kind: 'unary'; op: '-' | 'not'; operand: Expr; pos: Pos }
  | { kind: 'binary'; op: BinaryOp; left: Expr; right: Expr; pos: Pos }
  | { kind: 'call'; name: string; args: Arg[]; pos: Pos }
  | { kind: 'list'; items: Expr[]; pos: Pos }
  | { kind: 'object'; entries: Array<{ key: string; value: Expr; pos: Pos }>; pos: Pos };

export type BinaryOp = 'or' | 'and' | '==' | '!=' | '<' | '<=' | '>' | '>=' | 'matches' | 'in' | 'contains' | '+' | '-' | '*' | '/' | '%';

export interface Arg {
  /** the name of a named argument (`priority = "high"`), absent for a positional one */
  name?: string;
  value: Expr;
  pos: Pos;
}

export interface Action {
  name: string;
  args: Arg[];
  pos: Pos;
}

export interface Rule {
  name: string;
  file: string;
  /** place in the file, from 0: the third key of the firing order */
  index: number;
  priority: number;
  throttleMs: number | null;
  disabled: boolean;
  when: Expr;
  then: Action[];
  pos: Pos;
}
