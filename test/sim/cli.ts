/**
 * npm run sim -- [--seeds N] [--from S] [--seed X] [--steps K] [--trace]
 * Runs the fault simulator over many seeds (or one); a failing seed prints itself, its
 * violations and the end of its trace, and can be replayed exactly with --seed X --trace.
 */
import { parseArgs } from 'node:util';
import { simulate } from './simulator.js';

const { values } = parseArgs({
  options: {
    seeds: { type: 'string', default: '1000' },
    from: { type: 'string', default: '1' },
    seed: { type: 'string' },
    steps: { type: 'string', default: '300' },
    trace: { type: 'boolean', default: false },
  },
});
const steps = Number(values.steps);
const seeds = values.seed !== undefined ? [Number(values.seed)] : Array.from({ length: Number(values.seeds) }, (_, i) => Number(values.from) + i);
const started = Date.now();
let failed = 0;
const coverage = new Map<string, number>();
for (const seed of seeds) {
  const result = await simulate({ seed, steps });
  for (const c of result.coverage) coverage.set(c, (coverage.get(c) ?? 0) + 1);
  if (values.trace) process.stdout.write(`${result.trace.join('\n')}\n`);
  if (!result.ok) {
    failed++;
    process.stdout.write(`FAIL ${result.summary}\n  ${result.violations.slice(0, 10).join('\n  ')}\n`);
    if (!values.trace) process.stdout.write(`  trace (last 40 of ${result.trace.length}):\n    ${result.trace.slice(-40).join('\n    ')}\n`);
    process.stdout.write(`  replay: npm run sim -- --seed ${seed} --steps ${steps} --trace\n`);
  } else if (seeds.length === 1) {
    process.stdout.write(`ok ${result.summary}\n`);
  }
}
const seconds = ((Date.now() - started) / 1000).toFixed(1);
if (seeds.length > 1) {
  process.stdout.write(`coverage (seeds that went through each):\n`);
  for (const [c, n] of [...coverage].sort()) process.stdout.write(`  ${c.padEnd(36)} ${n}\n`);
}
process.stdout.write(`${seeds.length - failed}/${seeds.length} seeds held the guarantee (${seconds} s)\n`);
process.exit(failed === 0 ? 0 : 1);
