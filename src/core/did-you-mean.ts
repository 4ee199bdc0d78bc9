// "Did you mean": the known name an unknown one is likely a typo of. Both tolerances below measure
// the same distance and pick the same way (the first of the closest names); they differ in what
// they forgive, and the messages of the configuration and of the rule language depend on each.

/**
 * For names people write in YAML (configuration keys, environment variables): case, `_` and `-` do
 * not count (`topic_prefix` means topicPrefix), a name that starts with the other, both at least
 * 4 letters long, counts as half an edit (`keepaliveSeconds` means keepalive), and a word of up to
 * 4, up to 8, or more letters may be 1, 2 or 3 edits away.
 */
export function closestName(unknown: string, known: readonly string[]): string | undefined {
  const wanted = normaliseName(unknown);
  const limit = wanted.length <= 4 ? 1 : wanted.length <= 8 ? 2 : 3;
  return closest(known, limit, (name) => {
    const candidate = normaliseName(name);
    const extended = wanted.length >= 4 && (candidate.startsWith(wanted) || wanted.startsWith(candidate));
    return extended ? 0.5 : editDistance(wanted, candidate);
  });
}

/**
 * For identifiers in rules source (roots, functions, actions, arguments): case does not count,
 * and a word may be one edit away for every 3 of its letters, at least one.
 */
export function closestIdentifier(word: string, names: readonly string[]): string | undefined {
  const wanted = word.toLowerCase();
  return closest(names, Math.max(1, Math.floor(word.length / 3)), (name) => editDistance(wanted, name.toLowerCase()));
}

/** The first of `names` at the least distance, if that distance is at most `limit`. */
function closest(names: readonly string[], limit: number, distanceTo: (name: string) => number): string | undefined {
  let best: { name: string; distance: number } | undefined;
  for (const name of names) {
    const distance = distanceTo(name);
    if (distance <= limit && (!best || distance < best.distance)) best = { name, distance };
  }
  return best?.name;
}

// `topic_prefix`, `TopicPrefix` and `topicprefix` are all someone meaning topicPrefix.
function normaliseName(name: string): string {
  return name.toLowerCase().replace(/[_-]/g, '');
}

/**
 * Optimal string alignment distance: Levenshtein (insert, delete, replace one letter) plus swapping
 * two neighbours as one edit (`prot` -> `port`, `lgo` -> `log`).
 */
function editDistance(a: string, b: string): number {
  // Three rows of the table: i - 2 (for swaps), i - 1, and i.
  let before: number[] = [];
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min(previous[j]! + 1, row[j - 1]! + 1, previous[j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d = Math.min(d, before[j - 2]! + 1);
      row.push(d);
    }
    before = previous;
    previous = row;
  }
  return previous[b.length]!;
}
