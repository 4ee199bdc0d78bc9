// Does a model's yaml fit its ONNX file? Pure: the spec and what ONNX Runtime reports about the
// file's inputs and outputs in, every mismatch (naming the file and the tensor) out.

import type { ModelSpec } from './model-spec.js';
import type { TensorInfo } from './worker-protocol.js';

const show = (shape: ReadonlyArray<number | string>): string =>
  shape.length === 0 ? '(unknown)' : `[${shape.map((d) => (d === '' ? '?' : d)).join(',')}]`;

/** A dimension the file fixes to this number, or says nothing definite about (symbolic, unnamed). */
const fits = (d: number | string | undefined, n: number): boolean => typeof d !== 'number' || d === n || d < 0;

export interface ModelFit {
  problems: string[];
  /** the batch dimension is fixed at 1: every input runs alone */
  batchOfOne: boolean;
}

export function checkModelFit(
  spec: ModelSpec,
  onnxFile: string,
  yamlFile: string,
  inputs: readonly TensorInfo[],
  outputs: readonly TensorInfo[],
): ModelFit {
  const problems: string[] = [];
  let batchOfOne = false;
  const names = (list: readonly TensorInfo[]): string => list.map((t) => t.name).join(', ') || '(none)';
  const input = inputs.find((t) => t.name === spec.input.tensor);
  if (!input) problems.push(`${yamlFile}: input tensor "${spec.input.tensor}" is not in ${onnxFile} (its inputs: ${names(inputs)})`);
  else {
    if (inputs.length > 1)
      problems.push(
        `${onnxFile}: the model has ${inputs.length} inputs (${names(inputs)}); a model here takes one, "${spec.input.tensor}"`,
      );
    if (input.type !== 'float32') problems.push(`${onnxFile}: input "${input.name}" is ${input.type ?? 'not a tensor'}, not float32`);
    const s = input.shape;
    if (s.length !== 0 && s.length !== 2)
      problems.push(`${onnxFile}: input "${input.name}" has shape ${show(s)}; a model here takes [batch, ${spec.input.length}]`);
    else if (s.length === 2) {
      if (!fits(s[1], spec.input.length))
        problems.push(`${onnxFile}: input "${input.name}" has shape ${show(s)} but ${yamlFile} says input.length ${spec.input.length}`);
      if (typeof s[0] === 'number' && s[0] > 0) {
        if (s[0] === 1) batchOfOne = true;
        else problems.push(`${onnxFile}: input "${input.name}" has a fixed batch of ${s[0]}; the batch must be dynamic or 1`);
      }
    }
  }
  const output = outputs.find((t) => t.name === spec.output.tensor);
  if (!output) problems.push(`${yamlFile}: output tensor "${spec.output.tensor}" is not in ${onnxFile} (its outputs: ${names(outputs)})`);
  else {
    if (output.type !== 'float32') problems.push(`${onnxFile}: output "${output.name}" is ${output.type ?? 'not a tensor'}, not float32`);
    const want = spec.output.threshold === null ? spec.output.labels.length : 1;
    const what =
      spec.output.threshold === null ? `one score per label (${spec.output.labels.length})` : 'one score (output.threshold is set)';
    const s = output.shape;
    if (s.length !== 0 && (s.length !== 2 || !fits(s[1], want)))
      problems.push(`${onnxFile}: output "${output.name}" has shape ${show(s)}; ${yamlFile} expects [batch, ${want}], ${what}`);
  }
  return { problems, batchOfOne };
}
