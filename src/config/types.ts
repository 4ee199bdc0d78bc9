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
  /** The WebSocket endpoint: GET /mqtt (MQTT over WebSocket) and GET /ws (the JSON protocol) */
  http: {
    host: string;
    port: number;
    /** https and wss when cert and key are both set */
    tls: { cert: string | null; key: string | null };
    /** permessage-deflate: memory per connection, off unless asked for */
    perMessageDeflate: boolean;
    /** a WebSocket ping each interval; a connection that misses two pongs is terminated */
    pingIntervalSeconds: number;
    /** page origins (`https://dash.example.com`) that may connect; "*" any (docs/websocket.md) */
    allowedOrigins: string[];
    /** open WebSocket connections (and upgrades in progress) from one source address */
    maxConnectionsPerAddress: number;
    /** time for a client to send its whole upgrade request */
    handshakeTimeoutSeconds: number;
    /** /ws: bytes queued for one device past which QoS 0 deliveries are dropped (closed with 1013 after 10 s over) */
    sendBufferBytes: number;
    /** /ws: this many refused frames within errorWindowSeconds close the connection (1008) */
    maxErrors: number;
    errorWindowSeconds: number;
  };
  /** CoAP over UDP (docs/coap.md): an IPv4 socket on host and, unless host6 is null, an IPv6-only one on host6 */
  coap: { host: string; host6: string | null; port: number };
  admin: {
    host: string;
    port: number;
    token: string | null;
    tokenFile: string | null;
    /** how often nodejs_eventloop_lag_* samples the event loop: finer shows shorter stalls, and costs a wake-up each time */
    loopMonitorMs: number;
  };
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
  /** `<name>.onnx` + `<name>.yaml` pairs, loaded at start and whenever they change (docs/inference.md) */
  models: { dir: string };
  inference: {
    /** ONNX Runtime threads for one model run */
    threads: number;
    /** inputs waiting per model; past it the oldest is shed */
    queueSize: number;
    /** all per-device windows of window-fed models together; past it the least recently fed goes */
    windowBytes: number;
  };
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
