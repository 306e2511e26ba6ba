/**
 * Entry point of the `settle` command (npm run settle -- …, or the package's `settle` bin): runs
 * the CLI on this process's arguments and environment and exits with its code.
 */
import { runCli } from './settle.js';

// A reader that has gone (`settle … | head -1`) wants no more output: stop quietly, as the
// shell's own tools do, rather than die of the unhandled EPIPE with a stack trace and exit 1.
// Quietly but for the interrupt note, which still goes to stderr: `ledger --follow | head -1`
// must say where to go on from, as it does on every other way out.
// The write that meets the closed pipe marks stdout errored at once, but its 'error' comes a tick
// later, after a loop over a page already read has written (and the tail counted) every entry
// left on it; so each write is checked as it is made, and the note names the entry after the
// last one written.
function stopOnClosedPipe(): never {
  if (interruptNote !== undefined) process.stderr.write(noteText(interruptNote));
  process.exit(process.exitCode ?? 0);
}
process.stdout.on('error', (error: NodeJS.ErrnoException) => {
  if (error.code !== 'EPIPE') throw error;
  stopOnClosedPipe();
});

// Over TLS, grpc-js sends the address's host as the server name, an IP for --addr
// 127.0.0.1:50051, and Node then warns once that RFC 6066 forbids one there (DEP0123): a line
// on stderr about a library's choice, in the middle of the command's own output, that the
// operator can do nothing about. The certificate is still checked against that IP.
const emitWarning = process.emitWarning.bind(process);
process.emitWarning = (...args: unknown[]): void => {
  if (args.includes('DEP0123')) return;
  Reflect.apply(emitWarning, process, args);
};

let interruptNote: string | (() => string) | undefined;
const noteText = (note: string | (() => string)) => (typeof note === 'string' ? note : note());
/**
 * Prints the note (as it reads when the signal comes), then dies of SIGINT as if unhandled: a
 * shell running the command in a script sees the interrupt and stops there too, which an exit
 * code would not tell it.
 */
function onSigint(): void {
  if (interruptNote !== undefined) process.stderr.write(noteText(interruptNote));
  process.off('SIGINT', onSigint);
  process.kill(process.pid, 'SIGINT');
}

process.exitCode = await runCli(process.argv.slice(2), process.env, {
  out: (text) => {
    process.stdout.write(text);
    const errored: NodeJS.ErrnoException | null = process.stdout.errored;
    if (errored?.code === 'EPIPE') {
      stopOnClosedPipe();
    }
  },
  err: (text) => process.stderr.write(text),
  onInterrupt: (note) => {
    interruptNote = note;
    process.off('SIGINT', onSigint);
    if (note !== undefined) process.on('SIGINT', onSigint);
  },
});
