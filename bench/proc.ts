import { readFileSync } from 'node:fs';

// Linux /proc readings of another process: the proxy is measured from outside, as an operator would.
const TICKS_PER_SECOND = 100;

export interface ProcSample {
  cpuSeconds: number;
  rssBytes: number;
  writeBytes: number;
}

export function sampleProc(pid: number): ProcSample {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const rss = Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024;
  let writeBytes = 0;
  try {
    writeBytes = Number(/write_bytes: (\d+)/.exec(readFileSync(`/proc/${pid}/io`, 'utf8'))?.[1] ?? 0);
  } catch {
    // /proc/<pid>/io needs the same user or root
  }
  return { cpuSeconds: (utime + stime) / TICKS_PER_SECOND, rssBytes: rss, writeBytes };
}
