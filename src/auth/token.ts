// Device tokens: `<deviceId>.<secret>`, the secret 32 random bytes in base64url. The token names its
// device, so a lookup needs no scan, and the secret's 256 bits of entropy make a plain SHA-256 a safe
// thing to store: there is nothing to guess, so no slow password hash is needed.

import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { EdgeError } from '../core/errors.js';
import { isValidDeviceId } from '../core/message.js';

const SECRET_BYTES = 32;
const SHA256_HEX = /^[0-9a-fA-F]{64}$/;

export function makeToken(deviceId: string): string {
  // A token for an id deviceIdOfToken cannot read back would never authenticate.
  if (!isValidDeviceId(deviceId)) throw new EdgeError('E_REGISTRY', `cannot make a token for \`${deviceId}\`: not a valid device id`);
  return `${deviceId}.${randomBytes(SECRET_BYTES).toString('base64url')}`;
}

/** SHA-256 of the whole token, lowercase hex: what the registry stores. */
export function hashToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/** Constant time in the token's content; false for anything malformed, never throws. */
export function tokenMatchesHash(token: string, sha256Hex: string): boolean {
  if (typeof token !== 'string' || typeof sha256Hex !== 'string' || !SHA256_HEX.test(sha256Hex)) return false;
  const presented = createHash('sha256').update(token, 'utf8').digest();
  return timingSafeEqual(presented, Buffer.from(sha256Hex, 'hex'));
}

/** The device a token names: the part before its last `.` (the secret has none), when that is a valid device id. */
export function deviceIdOfToken(token: string): string | null {
  if (typeof token !== 'string') return null;
  const dot = token.lastIndexOf('.');
  if (dot <= 0) return null;
  const id = token.slice(0, dot);
  return isValidDeviceId(id) ? id : null;
}
