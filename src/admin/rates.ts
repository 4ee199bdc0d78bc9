import type { Metrics } from './metrics.js';

const WINDOW = 10;

/**
 * Messages per second in (received) and up (acknowledged by the cloud) over the last ten seconds,
 * from the counters themselves, sampled once a second: the status page, `edge-proxy status` and
 * `edge_uplink_drain_rate` all read these.
 */
export class Rates {
  private readonly received: number[] = [];
  private readonly acked: number[] = [];
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly metrics: Metrics) {
    this.timer = setInterval(() => void this.sample(), 1_000);
    this.timer.unref();
    void this.sample();
  }

  private async sample(): Promise<void> {
    this.received.push(await this.metrics.total('edge_messages_received_total'));
    this.acked.push(await this.metrics.total('edge_uplink_acked_total'));
    if (this.received.length > WINDOW + 1) this.received.shift();
    if (this.acked.length > WINDOW + 1) this.acked.shift();
  }

  private static perSecond(samples: number[]): number {
    if (samples.length < 2) return 0;
    return (samples[samples.length - 1]! - samples[0]!) / (samples.length - 1);
  }

  receivedPerSecond(): number {
    return Rates.perSecond(this.received);
  }

  ackedPerSecond(): number {
    return Rates.perSecond(this.acked);
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
