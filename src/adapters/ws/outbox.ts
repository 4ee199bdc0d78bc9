// What waits to be sent to a /ws reader whose socket does not take more for now. Queued one write
// per frame, as `ws` queues them, a lagging reader's backlog would be tens of thousands of small
// objects (two Buffers and a queue entry per frame), and every full garbage collection of the
// proxy would walk them all: one slow reader would lengthen every collection, and with it the
// latency tail of every other device. Here the frames are copied into 64 KiB slabs, so that a
// backlog of megabytes is a few dozen objects.
import type { Socket } from 'node:net';

const SLAB_BYTES = 64 * 1024;

type Written = (err?: Error) => void;

interface Slab {
  buf: Buffer;
  /** bytes of `buf` filled */
  used: number;
  /** called once the slab's bytes are handed to the kernel */
  written: Written[];
}

/**
 * A connection's backlog of text frames, framed here (final, unmasked, uncompressed) and written to the socket as it drains, in order, after
 * whatever `ws` already queued. Only used while the socket is not taking writes; a reader that
 * keeps up never touches it.
 */
export class Outbox {
  private readonly slabs: Slab[] = [];
  private queued = 0;
  private listening = false;

  constructor(private readonly socket: Socket) {}

  /** Bytes waiting here, not yet handed to the socket. */
  get bytes(): number {
    return this.queued;
  }

  /** True while frames must queue here to keep their order: the socket is full, or frames wait. */
  get holding(): boolean {
    return this.slabs.length > 0 || this.socket.writableNeedDrain;
  }

  /** A text frame carrying `data`, after everything queued before it. */
  push(data: Buffer, written?: Written): void {
    const head = headerBytes(data.length);
    const size = head + data.length;
    let slab = this.slabs.at(-1);
    if (!slab || slab.buf.length - slab.used < size) {
      slab = { buf: Buffer.allocUnsafe(Math.max(SLAB_BYTES, size)), used: 0, written: [] };
      this.slabs.push(slab);
    }
    writeHeader(slab.buf, slab.used, data.length);
    data.copy(slab.buf, slab.used + head);
    slab.used += size;
    if (written) slab.written.push(written);
    this.queued += size;
    if (!this.listening) {
      this.listening = true;
      this.socket.on('drain', () => this.pump(false));
      this.socket.once('close', () => this.discard());
    }
    this.pump(false);
  }

  /**
   * Hand queued slabs to the socket while it takes them; with `all`, every one, whatever it holds
   * already (before a close frame, which must follow the backlog).
   */
  pump(all: boolean): void {
    while (this.slabs.length > 0 && (all || !this.socket.writableNeedDrain) && !this.socket.destroyed) {
      const slab = this.slabs.shift()!;
      this.queued -= slab.used;
      const callbacks = slab.written;
      this.socket.write(slab.buf.subarray(0, slab.used), (err?: Error | null) => {
        for (const cb of callbacks) cb(err ?? undefined);
      });
    }
  }

  private discard(): void {
    const gone = new Error('the connection closed before the frame was sent');
    for (const slab of this.slabs.splice(0)) for (const cb of slab.written) cb(gone);
    this.queued = 0;
  }
}

// RFC 6455 section 5.2: FIN and the text opcode, then the payload length in 7 bits, or 126 and 16
// bits, or 127 and 64 bits; a server's frames are not masked.
function headerBytes(length: number): number {
  return length < 126 ? 2 : length < 0x10000 ? 4 : 10;
}

function writeHeader(buf: Buffer, at: number, length: number): void {
  buf[at] = 0x81;
  if (length < 126) buf[at + 1] = length;
  else if (length < 0x10000) {
    buf[at + 1] = 126;
    buf.writeUInt16BE(length, at + 2);
  } else {
    buf[at + 1] = 127;
    buf.writeUInt32BE(Math.floor(length / 2 ** 32), at + 2);
    buf.writeUInt32BE(length >>> 0, at + 6);
  }
}
