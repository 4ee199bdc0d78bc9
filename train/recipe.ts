/**
 * Everything that defines the shipped bearing model: data sets, network and training settings.
 * Changing any of it changes the committed files; `npm run train` rewrites them.
 */
import type { SetSpec } from './dataset.js';
import type { TrainOptions } from './mlp.js';

export const MODEL_NAME = 'bearing';
/** Shown in inference results and metrics; bump it with every change to the recipe. */
export const MODEL_VERSION = '1.0.0';

export const TRAINING_SET: SetSpec = { name: 'training', seed: 1, machines: 1600, windowsPerMachine: 8, strata: 'even' };
export const HELD_OUT_SET: SetSpec = { name: 'held-out', seed: 2, machines: 800, windowsPerMachine: 8, strata: 'odd' };

export const NETWORK: Omit<TrainOptions, 'onEpoch'> = {
  hidden: 16,
  epochs: 200,
  batchSize: 128,
  learningRate: 0.003,
  weightDecay: 3e-4,
  seed: 42,
};

/** Micro-batching the proxy applies to the model (the model itself takes any batch size). */
export const BATCH = { maxSize: 32, maxDelayMs: 5 };
