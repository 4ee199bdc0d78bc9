import type { ModelView } from '../inference/service.js';

/** The body of GET /api/v1/status, read by the status page and `edge-proxy status`. */
export interface ProxyStatus {
  version: string;
  edgeId: string;
  uptimeSeconds: number;
  ports: Record<string, number>;
  auth: { mode: 'open' | 'token'; devices: number | null };
  /** connected devices by protocol */
  devices: Record<string, number>;
  rates: { receivedPerSecond: number; ackedPerSecond: number };
  rules: { version: number; sha256: string; rules: number } | null;
  /** every model of the models directory: loaded, or why not */
  models: ModelView[];
  cache: {
    path: string;
    messages: number;
    byPriority: Record<string, number>;
    bytes: number;
    oldestAgeSeconds: number;
    writable: boolean;
    drainRate: number;
    timeToDrainSeconds: number | null;
  };
  uplink: { url: string | null; connected: boolean; inflight: number };
}
