/**
 * Builds the fixture models and synthetic images once per test run (deterministic; rewritten only
 * when their bytes change) and the CLI is tested from dist/, which `npm test` compiles first.
 */
import { generateFixtures } from '../fixtures/generate.js';
import { FIXTURES_DIR } from './helpers/cli.js';

export default async function setup(): Promise<void> {
  await generateFixtures(FIXTURES_DIR);
}
