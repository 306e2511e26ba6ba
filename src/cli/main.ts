/**
 * Entry point of the `settle` command (npm run settle -- …, or the package's `settle` bin): runs
 * the CLI on this process's arguments and environment and exits with its code.
 */
import { runCli } from './settle.js';

// A reader that has gone (`settle … | head -1`) wants no more output: stop quietly, as the
// shell's own tools do, rather than die of the unhandled EPIPE with a stack trace and exit 1.
process.stdout.on('error', (error: NodeJS.ErrnoException) => {
  if (error.code !== 'EPIPE') throw error;
  process.exit(process.exitCode ?? 0);
});

process.exitCode = await runCli(process.argv.slice(2), process.env, {
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
});
