// Watches the MQTT byte stream of one connection for packet boundaries, so that a packet larger
// than the proxy accepts is refused from its fixed header, before its body is buffered.
// MQTT 3.1.1 §2.2: one byte of type and flags, then the Remaining Length in 1..4 bytes.

export type GuardVerdict = { ok: true } | { ok: false; reason: 'too_large' | 'malformed'; detail: string };

const OK: GuardVerdict = { ok: true };
const PUBLISH = 3;

export class FrameGuard {
  private state: 'type' | 'length' | 'body' = 'type';
  private type = 0;
  private length = 0;
  private multiplier = 1;
  private lengthBytes = 0;
  private remaining = 0;

  /** @param maxPacketBytes the largest Remaining Length accepted for any packet */
  constructor(private readonly maxPacketBytes: number) {}

  scan(chunk: Uint8Array): GuardVerdict {
    let i = 0;
    const n = chunk.length;
    while (i < n) {
      if (this.state === 'body') {
        const skip = Math.min(this.remaining, n - i);
        i += skip;
        this.remaining -= skip;
        if (this.remaining === 0) this.state = 'type';
        continue;
      }
      const b = chunk[i++]!;
      if (this.state === 'type') {
        this.type = b >> 4;
        this.length = 0;
        this.multiplier = 1;
        this.lengthBytes = 0;
        this.state = 'length';
        continue;
      }
      // Remaining Length: 7 bits a byte, least significant first, at most 4 bytes [MQTT-2.2.3].
      this.length += (b & 0x7f) * this.multiplier;
      this.multiplier *= 128;
      this.lengthBytes++;
      if (b & 0x80) {
        if (this.lengthBytes === 4) return { ok: false, reason: 'malformed', detail: 'Remaining Length longer than 4 bytes' };
        continue;
      }
      if (this.length > this.maxPacketBytes) {
        const what = this.type === PUBLISH ? 'PUBLISH' : `packet of type ${this.type}`;
        return { ok: false, reason: 'too_large', detail: `${what} of ${this.length} bytes exceeds the limit of ${this.maxPacketBytes}` };
      }
      this.remaining = this.length;
      this.state = this.remaining === 0 ? 'type' : 'body';
    }
    return OK;
  }
}
