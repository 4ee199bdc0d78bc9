// Small ONNX models for tests, written with the trainer's own ONNX writer: each computes the mean of
// its input row, so a test chooses the label by the numbers it sends.
import { writeFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { GraphBuilder, type Dim } from '../../train/onnx-graph.js';

export interface TestModelOptions {
  length: number;
  /** two scores [healthy, fault] with fault when the mean > -bias (softmax), or one score (sigmoid of the mean) */
  output?: 'scores' | 'score';
  /** added to the fault logit: +100 makes every answer fault, -100 healthy */
  bias?: number;
  inputName?: string;
  outputName?: string;
  /** the input's declared shape; default ['batch', length] */
  inputDims?: Dim[];
}

export function meanModel(opts: TestModelOptions): Uint8Array {
  const g = new GraphBuilder();
  const input = opts.inputName ?? 'input';
  const output = opts.outputName ?? (opts.output === 'score' ? 'score' : 'probabilities');
  const mean = g.op('ReduceMean', [input], { axes: [1], keepdims: 1 });
  if (opts.output === 'score') {
    g.op('Sigmoid', [mean], {}, output);
    return g.encode({
      name: 'mean',
      docString: '',
      inputs: [{ name: input, dims: opts.inputDims ?? ['batch', opts.length] }],
      outputs: [{ name: output, dims: ['batch', 1] }],
    });
  }
  const healthy = g.op('Neg', [mean]);
  const fault = g.op('Add', [mean, g.floats('bias', [1], [opts.bias ?? 0])]);
  const logits = g.op('Concat', [healthy, fault], { axis: 1 });
  g.op('Softmax', [logits], { axis: 1 }, output);
  return g.encode({
    name: 'mean',
    docString: '',
    inputs: [{ name: input, dims: opts.inputDims ?? ['batch', opts.length] }],
    outputs: [{ name: output, dims: ['batch', 2] }],
  });
}

/** The yaml of a meanModel: `from` payload.values unless a window is given. */
export function meanModelYaml(
  name: string,
  opts: {
    length: number;
    version?: string;
    from?: string;
    output?: 'scores' | 'score';
    window?: { size: number; stride: number };
    batch?: { maxSize: number; maxDelayMs: number };
    tensor?: string;
  },
): string {
  return stringify({
    name,
    version: opts.version ?? '1',
    input: {
      tensor: opts.tensor ?? 'input',
      ...(opts.window
        ? { window: { field: 'payload.v', size: opts.window.size, stride: opts.window.stride } }
        : { from: opts.from ?? 'payload.values', length: opts.length }),
    },
    output:
      opts.output === 'score'
        ? { tensor: 'score', labels: ['healthy', 'fault'], threshold: 0.5 }
        : { tensor: 'probabilities', labels: ['healthy', 'fault'] },
    batch: opts.batch ?? { maxSize: 32, maxDelayMs: 5 },
  });
}

/** Written whole and renamed, as an operator's careful copy would be. */
export function writeModel(dir: string, name: string, onnx: Uint8Array, yaml: string): void {
  writeFileSync(join(dir, `.${name}.onnx.tmp`), onnx);
  renameSync(join(dir, `.${name}.onnx.tmp`), join(dir, `${name}.onnx`));
  writeFileSync(join(dir, `.${name}.yaml.tmp`), yaml);
  renameSync(join(dir, `.${name}.yaml.tmp`), join(dir, `${name}.yaml`));
}
