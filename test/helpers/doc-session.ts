// One bash session for the examples of one document (test/docs.test.ts): blocks run one after the
// other in the same shell, so that a variable one sets (TOKEN=...) is there for the next.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** What one block did. */
export interface ShellRun {
  /** the status of its first failing command, else 0; null when it did not finish in time */
  status: number | null;
  /** the line of the script its first failing command was on (from 1), else 0 */
  failedLine: number;
  /** stdout and stderr, interleaved */
  output: string;
}

// A test that times out skips its teardown: no shell (nor what it started) may outlive the test process.
const sessions = new Set<ChildProcess>();
process.once('exit', () => {
  for (const s of sessions) killGroup(s, 'SIGKILL');
});

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  try {
    if (child.pid !== undefined) process.kill(-child.pid, signal);
  } catch {
    // already gone
  }
}

// Runs a script file in the shell itself (not a subshell: its variables stay), its stdin closed, and
// reports the first failing command's status and line. The ERR trap sees what `set -e` would stop on.
const PRELUDE = `set -o pipefail
__doc_run() {
  __st=0; __ln=0
  trap '__e=$?; if [ "$__st" -eq 0 ]; then __st=$__e; __ln=$LINENO; fi' ERR
  source "$1" > "$2" 2>&1 < /dev/null
  trap - ERR
  echo "__doc_done $3 $__st $__ln"
}
`;

export class BashSession {
  private readonly child: ChildProcess;
  private stdout = '';
  private stderr = '';
  private n = 0;
  private waiting: (() => void) | null = null;
  readonly exited: Promise<void>;

  /** A shell in `cwd` with `env`; `scratch` holds the scripts and their output. */
  constructor(
    cwd: string,
    env: NodeJS.ProcessEnv,
    private readonly scratch: string,
  ) {
    // Its own process group: whatever a block leaves running (a background mosquitto_sub, the
    // simulator) is stopped with the shell.
    this.child = spawn('bash', ['--noprofile', '--norc'], { cwd, env, detached: true, stdio: ['pipe', 'pipe', 'pipe'] });
    sessions.add(this.child);
    this.exited = new Promise((resolve) =>
      this.child.once('exit', () => {
        sessions.delete(this.child);
        this.waiting?.();
        resolve();
      }),
    );
    this.child.stdout!.on('data', (d: Buffer) => {
      this.stdout += d.toString();
      this.waiting?.();
    });
    this.child.stderr!.on('data', (d: Buffer) => {
      this.stderr += d.toString();
    });
    this.child.stdin!.write(PRELUDE);
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Runs `script` in the session and waits for it, at most `timeoutMs`; past that the session is stopped. */
  async run(script: string, timeoutMs: number): Promise<ShellRun> {
    const id = ++this.n;
    const file = join(this.scratch, `block-${id}.sh`);
    const out = join(this.scratch, `block-${id}.out`);
    writeFileSync(file, script);
    writeFileSync(out, '');
    if (!this.alive) return { status: null, failedLine: 0, output: `the shell had ended: ${this.stderr}` };
    this.child.stdin!.write(`__doc_run '${file}' '${out}' ${id}\n`);
    const done = new RegExp(`^__doc_done ${id} (\\d+) (\\d+)$`, 'm');
    const deadline = Date.now() + timeoutMs;
    let m = done.exec(this.stdout);
    while (!m && this.alive && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(0, deadline - Date.now()));
        this.waiting = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.waiting = null;
      m = done.exec(this.stdout);
    }
    const output = readFileSync(out, 'utf8');
    if (!m) {
      await this.close();
      return { status: null, failedLine: 0, output: `${output}\n[not finished after ${timeoutMs} ms: the session was stopped]` };
    }
    return { status: Number(m[1]), failedLine: Number(m[2]), output };
  }

  /** Stops the shell and everything it started. */
  async close(): Promise<void> {
    if (!this.alive) return;
    killGroup(this.child, 'SIGTERM');
    const timer = setTimeout(() => killGroup(this.child, 'SIGKILL'), 3_000);
    await this.exited;
    clearTimeout(timer);
    // what ignored SIGTERM, or outlived the shell in its group
    killGroup(this.child, 'SIGKILL');
  }
}
