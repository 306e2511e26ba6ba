/**
 * Entry point of the `settle` command (npm run settle -- …, or the package's `settle` bin): runs
 * the CLI on this process's arguments and environment and exits with its code.
 */
import { runCli } from './settle.js';

process.exitCode = await runCli(process.argv.slice(2), process.env, {
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
});
