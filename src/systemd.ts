import { spawn } from 'node:child_process';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { Logger } from 'pino';

/**
 * Tell systemd we are ready (Type=notify). Plain Node cannot write to the NOTIFY_SOCKET
 * datagram socket, so this goes through systemd-notify, which needs NotifyAccess=all.
 */
export function notifySystemd(state: string, log: Logger): void {
  if (!process.env.NOTIFY_SOCKET) return;
  const child = spawn('systemd-notify', [state], { stdio: 'ignore' });
  child.on('error', (err) => log.warn({ err: err.message }, 'systemd-notify is not available; systemd will not see the service as ready'));
}

/**
 * Feed systemd's watchdog (WatchdogSec=) at half its period, but only while the event loop is
 * healthy: a loop stuck for longer than the period stops the feeding and systemd restarts us.
 * Returns a function that stops it.
 */
export function startWatchdog(log: Logger): () => void {
  const usec = Number(process.env.WATCHDOG_USEC ?? 0);
  if (!process.env.NOTIFY_SOCKET || !(usec > 0)) return () => {};
  const periodMs = usec / 1000;
  const delay = monitorEventLoopDelay({ resolution: 20 });
  delay.enable();
  const timer = setInterval(() => {
    const worstMs = delay.max / 1e6;
    delay.reset();
    if (worstMs < periodMs / 2) notifySystemd('WATCHDOG=1', log);
    else log.warn({ eventLoopDelayMs: Math.round(worstMs) }, 'event loop stalled; not feeding the systemd watchdog');
  }, periodMs / 2);
  timer.unref();
  return () => {
    clearInterval(timer);
    delay.disable();
  };
}
