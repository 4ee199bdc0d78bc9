import { spawn } from 'node:child_process';
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
