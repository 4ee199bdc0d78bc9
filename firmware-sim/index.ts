/** Public in-process API of the device simulator (for tests and benchmarks). */
export * from './fleet.js';
export * from './device.js';
export * from './sensors.js';
export * from './credentials.js';
export * from './vibration.js';
