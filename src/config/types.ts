// The validated, frozen configuration every stage reads. Sizes are bytes, durations seconds.

import type { Priority } from '../core/priority.js';

export interface Config {
  edge: { id: string };
  dataDir: string;
  mqtt: {
    host: string;
    port: number;
    /** MQTT over TLS: only when cert and key are set; with ca, client certificates are required */
    tls: { port: number; cert: string | null; key: string | null; ca: string | null };
  };
  admin: { host: string; port: number; token: string | null; tokenFile: string | null };
  auth: { mode: 'open' | 'token' };
  /** the device registry read in token mode */
  devicesFile: string;
  routing: {
    default: 'uplink' | 'local';
    /** uplink priority by MQTT topic filter, first match wins; no match: `normal` */
    priorities: ReadonlyArray<{ readonly topic: string; readonly priority: Priority }>;
  };
  cache: { path: string; maxBytes: number; maxAgeSeconds: number };
  rules: { dir: string; maxWindowValues: number; stateTtlSeconds: number; maxFileBytes: number; maxRules: number };
  uplink: {
    url: string | null;
    clientId: string;
    username: string | null;
    password: string | null;
    protocolVersion: 4 | 5;
    topicPrefix: string;
    controlPrefix: string;
    format: 'envelope' | 'raw';
    qos: 1;
    maxInflight: number;
    /** messages a second while draining a backlog; 0 = unlimited */
    maxRate: number;
    keepalive: number;
    tls: { ca: string | null; cert: string | null; key: string | null; rejectUnauthorized: boolean };
  };
  limits: { maxPayloadBytes: number; maxTopicBytes: number; maxHops: number; maxConnections: number };
  log: { level: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' };
}

/** Where the configuration came from, for the start-up log. */
export interface LoadedConfig {
  config: Config;
  /** the file read, or null for the embedded defaults */
  file: string | null;
  /** keys left at their defaults whose defaults are meant for trials, for the start-up warning */
  trialDefaults: string[];
}
