/** True for an address only this machine reaches: a listener there needs no authentication to be safe. */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.');
}
