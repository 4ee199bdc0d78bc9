// Secrets kept out of log lines and status answers.

/**
 * A URL with its password replaced by `***` (`mqtt://user:***@host:1883`), for log lines and the
 * status API: the uplink URL may carry the broker password. A URL that does not parse still loses
 * whatever stands between `user:` and `@`.
 */
export function redactUrl(url: string | null): string | null {
  if (!url) return null;
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return url.replace(/\/\/([^/@:]*):[^/@]*@/, '//$1:***@');
  }
}
