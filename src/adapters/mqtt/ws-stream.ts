// One WebSocket connection as the byte stream aedes reads MQTT from and writes MQTT to (MQTT 3.1.1
// §6: binary frames; a frame may hold several packets or part of one). Not ws's createWebSocketStream:
// that sends one frame per write, and mqtt-packet writes a PUBLISH in five or more pieces; here the
// pieces aedes writes in one tick (mqtt-packet corks the stream around each packet) leave as one frame.
import { Duplex } from 'node:stream';
import { WebSocket, type RawData } from 'ws';
import { EdgeError } from '../../core/errors.js';

/** A close code and reason (at most 123 bytes) for the closing handshake. */
export interface WebSocketClose {
  code: number;
  reason: string;
}

/** Close codes of RFC 6455 §7.4.1, and the 4xxx ones the proxy shares with /ws. */
export const CLOSE = {
  normal: 1000,
  goingAway: 1001,
  protocolError: 1002,
  unsupportedData: 1003,
  policyViolation: 1008,
  tooLarge: 1009,
  tryAgainLater: 1013,
  auth: 4401,
  access: 4403,
} as const;

/**
 * The close that says why a stream was destroyed with `err`. aedes destroys its connection before
 * it reports the error, so the reason is read from the error itself; an error that is not the
 * proxy's own is aedes's (a malformed packet, a missed keepalive): an MQTT protocol violation.
 */
export function closeFor(err: Error | null): WebSocketClose {
  if (!err) return { code: CLOSE.normal, reason: '' };
  if (!(err instanceof EdgeError)) return { code: CLOSE.protocolError, reason: closeReason(err.message) };
  const code =
    err.code === 'E_TOO_LARGE'
      ? CLOSE.tooLarge
      : err.code === 'E_MALFORMED'
        ? CLOSE.protocolError
        : err.code === 'E_ACL'
          ? CLOSE.policyViolation
          : err.code === 'E_AUTH'
            ? CLOSE.auth
            : err.code === 'E_STOPPING'
              ? CLOSE.goingAway
              : err.retryable
                ? CLOSE.tryAgainLater
                : CLOSE.policyViolation;
  return { code, reason: closeReason(err.message) };
}

/** A close reason must fit 123 bytes of UTF-8: ASCII only, cut. */
export function closeReason(text: string): string {
  return text.replace(/[^\x20-\x7e]/g, '?').slice(0, 123);
}

export class WebSocketStream extends Duplex {
  /** set by the adapter before it ends the connection, to say why in the close frame */
  closing: WebSocketClose | null = null;

  constructor(private readonly ws: WebSocket) {
    super({ allowHalfOpen: false });
    ws.binaryType = 'nodebuffer';
    ws.on('message', (data: RawData, isBinary: boolean) => this.received(data, isBinary));
    // The peer went away, or ws closed it after a framing error: the end of the stream for aedes,
    // after what it sent before (a DISCONNECT read after its close would publish its will).
    ws.once('close', () => this.push(null));
    // ws answers its own framing errors (1009 too large, 1002 protocol) with a close frame; the
    // error reaches aedes, and the adapter counts it, as an EdgeError of the catalogue.
    ws.on('error', (err: Error & { code?: string }) => {
      if (this.destroyed) return;
      const tooLarge = err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH' || err.code === 'WS_ERR_UNSUPPORTED_DATA_PAYLOAD_LENGTH';
      this.destroy(
        new EdgeError(tooLarge ? 'E_TOO_LARGE' : 'E_MALFORMED', `WebSocket framing: ${err.message}`, {
          cause: err,
        }),
      );
    });
  }

  private received(data: RawData, isBinary: boolean): void {
    if (this.destroyed) return;
    if (!isBinary) {
      // [MQTT-6.0.0-1]: MQTT travels in binary frames; any other frame closes the connection.
      this.closing = { code: CLOSE.unsupportedData, reason: 'MQTT over WebSocket needs binary frames' };
      this.destroy(new EdgeError('E_MALFORMED', 'a WebSocket text frame: MQTT over WebSocket is sent in binary frames'));
      return;
    }
    const chunk = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
    // Reads pause while aedes has not taken what came before, as a TCP socket's do.
    if (!this.push(chunk)) this.ws.pause();
  }

  override _read(): void {
    this.ws.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, done: (err?: Error | null) => void): void {
    this.send(chunk, done);
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, done: (err?: Error | null) => void): void {
    this.send(chunks.length === 1 ? chunks[0]!.chunk : Buffer.concat(chunks.map((c) => c.chunk)), done);
  }

  /**
   * One frame; done once ws handed it to the socket, so that a slow reader's backlog shows in the
   * stream's writableLength and aedes waits for 'drain' as it does on a TCP socket.
   */
  private send(data: Buffer, done: (err?: Error | null) => void): void {
    // A connection that is closing: its end reaches aedes through the readable side.
    if (this.ws.readyState !== WebSocket.OPEN) return done();
    this.ws.send(data, { binary: true }, () => done());
  }

  override _final(done: (err?: Error | null) => void): void {
    this.closeSocket(null);
    done();
  }

  override _destroy(err: Error | null, done: (err?: Error | null) => void): void {
    this.closeSocket(err);
    done(err);
  }

  private closeSocket(err: Error | null): void {
    if (this.ws.readyState !== WebSocket.OPEN) return;
    const { code, reason } = this.closing ?? closeFor(err);
    this.ws.close(code, reason);
  }

  /** Drop the connection without a closing handshake (the proxy stops and the peer did not answer). */
  terminate(): void {
    this.ws.terminate();
  }

  get socketClosed(): boolean {
    return this.ws.readyState === WebSocket.CLOSED;
  }
}
