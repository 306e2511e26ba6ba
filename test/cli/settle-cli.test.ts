/**
 * Goal: the `settle` command does what an operator needs from a terminal, against a real node:
 * create/get/list/watch payments, wallet and trial balance (a page at a time), a payment's
 * timeline, list and replay dead letters and repair the running sums (audited with the operator's
 * name and reason), tables by default and JSON with --json, and exit codes that tell usage errors
 * (2) from server errors (1).
 * Method: the CLI runs as a child process (`node bin/settle.js`, the package's bin, and once
 * through `npm run settle`) against a startStack() node on MariaDB and NATS; its stdout, stderr
 * and exit code are checked, and the database is checked for the audit row. Over TLS, a second
 * node on the same stack serves gRPC with TLS and requires client certificates, against
 * throwaway certificates made with openssl.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { sql } from 'kysely';
import { startSettle, type SettleNode } from '../../src/app.js';
import { loadConfig } from '../../src/config.js';
import { createConnection } from 'mysql2/promise';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseMysqlUrl, serverAddress } from '../../src/storage/db.js';
import { postLedgerTransaction } from '../../src/storage/repositories/ledger.repository.js';
import { inTransaction, type Trx } from '../../src/storage/transaction.js';
import {
  CARD,
  freePort,
  payOnHostedPage,
  startStack,
  waitFor,
  type Stack,
} from '../support/harness.js';
import { ADMIN_TOKEN, auditRows, deadLetteredPayment } from '../admin/admin-support.js';
import { paymentBooking } from '../support/ledger.js';
import { makeTestCertificates, type TestCertificates } from '../support/certificates.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
let stack: Stack;
let settlementDir: string;

beforeAll(async () => {
  settlementDir = await mkdtemp(path.join(tmpdir(), 'settle-cli-'));
  stack = await startStack({
    env: {
      ADMIN_TOKEN,
      RETRY_BACKOFF_MS: '100,100',
      SETTLEMENT_DIR: settlementDir,
      // `settle reconcile run` settles a fixed day of 2024: keep it inside the window.
      RECONCILIATION_KEEP_DAYS: '36500',
    },
  });
});
afterAll(async () => {
  await stack?.stop();
  if (settlementDir !== undefined) await rm(settlementDir, { recursive: true, force: true });
});

type Run = { code: number; stdout: string; stderr: string };

function settle(args: string[], env: Record<string, string> = {}, viaNpm = false): Promise<Run> {
  const [command, argv] = viaNpm
    ? ['npm', ['run', '-s', 'settle', '--', ...args]]
    : [process.execPath, [path.join(ROOT, 'bin/settle.js'), ...args]];
  return new Promise((resolve) => {
    execFile(
      command,
      argv,
      {
        cwd: ROOT,
        timeout: 30_000,
        env: {
          PATH: process.env.PATH ?? '',
          HOME: process.env.HOME ?? '/tmp',
          SETTLE_ADDR: `127.0.0.1:${stack.settle.grpcPort}`,
          SETTLE_ACTOR: 'cli-tester',
          ...env,
        },
      },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

describe('settle CLI', () => {
  let paymentId = '';
  let checkoutUrls: string[] = [];

  it('creates a payment (--json) and shows it as a table', async () => {
    const created = await settle([
      'payment',
      'create',
      '--buyer',
      'buyer-cli',
      '--order',
      'seller-cli-a=1999',
      '--order',
      'seller-cli-b=500',
      '--json',
    ]);
    expect(created.stderr).toBe('');
    expect(created.code).toBe(0);
    const payment = JSON.parse(created.stdout) as {
      paymentId: string;
      amountMinor: string;
      orders: Array<{ checkoutUrl: string }>;
    };
    paymentId = payment.paymentId;
    expect(payment.amountMinor).toBe('2499');
    checkoutUrls = payment.orders.map((order) => order.checkoutUrl);
    expect(checkoutUrls.every((url) => url.startsWith('http'))).toBe(true);

    const shown = await settle(['payment', 'get', paymentId]);
    expect(shown.code).toBe(0);
    expect(shown.stdout).toContain(`payment ${paymentId}  EXECUTING  24.99 USD  buyer buyer-cli`);
    expect(shown.stdout).toMatch(/ORDER\s+SELLER\s+AMOUNT\s+STATE\s+CHECKOUT/);
    expect(shown.stdout).toMatch(/seller-cli-a\s+19\.99 USD\s+EXECUTING\s+http/);

    const listed = await settle(['payments', 'list', '--buyer', 'buyer-cli'], {}, true);
    expect(listed.code).toBe(0);
    expect(listed.stdout).toMatch(
      new RegExp(`${paymentId}\\s+\\S+ \\S+\\s+buyer-cli\\s+EXECUTING\\s+24\\.99 USD\\s+2`),
    );
  });

  it('watches the payment to the end while the buyer pays', async () => {
    const watching = settle(['payment', 'watch', paymentId]);
    for (const url of checkoutUrls)
      expect((await payOnHostedPage(url, CARD.success)).status).toBe(200);
    const watched = await watching;
    expect(watched.code).toBe(0);
    const lines = watched.stdout.trim().split('\n');
    expect(lines[lines.length - 1]).toMatch(
      /SUCCEEDED {2}seller-cli-a=SUCCEEDED seller-cli-b=SUCCEEDED$/,
    );
    // A paid order's hosted page takes no card: no link is printed for it.
    const shown = await settle(['payment', 'get', paymentId]);
    expect(shown.stdout).toMatch(/seller-cli-a\s+19\.99 USD\s+SUCCEEDED\s+-\n/);
    expect(shown.stdout).not.toContain('http');
  });

  it('prints a wallet, the trial balance and the payment timeline', async () => {
    const wallet = await settle(['wallet', 'seller-cli-a']);
    expect(wallet.stdout).toMatch(/seller-cli-a\s+19\.99 USD/);
    const balance = await settle(['trial-balance']);
    expect(balance.code).toBe(0);
    expect(balance.stdout).toMatch(/psp_receivable\s+24\.99 USD\s+0\.00 USD\s+24\.99 USD/);
    expect(balance.stdout).toContain('balanced: yes');
    const json = JSON.parse((await settle(['trial-balance', '--json'])).stdout) as {
      balanced: boolean;
    };
    expect(json.balanced).toBe(true);
    // A page at a time: one account per page, the totals on each, and the command for the next.
    const first = await settle(['trial-balance', '--page-size', '1']);
    expect(first.code).toBe(0);
    const accountRows = (stdout: string) =>
      stdout.split('\n').filter((line) => /^(psp_receivable|seller_payable:)/.test(line));
    expect(accountRows(first.stdout)).toHaveLength(1);
    expect(first.stdout).toMatch(/TOTAL USD\s+\S+ USD\s+\S+ USD\s+0\.00 USD/);
    const next = /next page: --page-token (\S+)/.exec(first.stdout)?.[1] ?? '';
    expect(next).not.toBe('');
    const second = await settle(['trial-balance', '--page-size', '1', '--page-token', next]);
    expect(second.code).toBe(0);
    expect(accountRows(second.stdout)).toHaveLength(1);
    expect(accountRows(second.stdout)).not.toEqual(accountRows(first.stdout));
    const bad = await settle(['trial-balance', '--page-token', 'not-a-token']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain(
      'page_token: invalid or from a request with other filters; start again without page_token',
    );

    const timeline = await settle(['payment', 'timeline', paymentId], { ADMIN_TOKEN });
    expect(timeline.code).toBe(0);
    expect(timeline.stdout).toMatch(/NOT_STARTED\s+EXECUTING\s+ExecuteOrder/);
    expect(timeline.stdout).toMatch(/EXECUTING\s+SUCCEEDED\s+PspSucceeded/);
  });

  it('lists and replays a dead letter through AdminService, audited with name and reason', async () => {
    const { orderId, deadLetterId } = await deadLetteredPayment(stack, 'buyer-cli-dlq');
    const refused = await settle(['dlq', 'list']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('UNAUTHENTICATED');

    const listed = await settle(['dlq', 'list', '--json'], { ADMIN_TOKEN });
    expect(listed.code).toBe(0);
    const letters = (
      JSON.parse(listed.stdout) as { deadLetters: Array<{ id: string; orderId: string }> }
    ).deadLetters;
    expect(letters).toContainEqual(expect.objectContaining({ id: deadLetterId, orderId }));
    // The proto's full name is taken as payment list --state takes it; UNSPECIFIED, which
    // listed every state, is refused (ALL says that).
    const full = await settle(['dlq', 'list', '--state', 'DEAD_LETTER_STATE_OPEN', '--json'], {
      ADMIN_TOKEN,
    });
    expect(full.code, full.stderr).toBe(0);
    expect(JSON.parse(full.stdout)).toEqual(JSON.parse(listed.stdout));
    for (const state of ['UNSPECIFIED', 'DEAD_LETTER_STATE_UNSPECIFIED']) {
      const unspecified = await settle(['dlq', 'list', '--state', state], { ADMIN_TOKEN });
      expect(unspecified.code, state).toBe(2);
      expect(unspecified.stderr, state).toMatch(
        /^settle: --state must be OPEN, REPLAYED, DISCARDED, RESOLVED or ALL\n/,
      );
    }

    const noReason = await settle(['dlq', 'replay', deadLetterId], { ADMIN_TOKEN });
    expect(noReason.code).toBe(2);
    expect(noReason.stderr).toContain('needs --reason');

    const replayed = await settle(
      ['dlq', 'replay', deadLetterId, '--reason', 'PSP is back: INC-7 ✓'],
      {
        ADMIN_TOKEN,
      },
    );
    expect(replayed.stderr).toBe('');
    expect(replayed.code).toBe(0);
    expect(replayed.stdout).toMatch(
      new RegExp(`${deadLetterId}\\s+\\S+ \\S+\\s+REPLAYED\\s+${orderId}`),
    );
    const [audit] = await auditRows(stack, `dead-letter:${deadLetterId}`);
    expect(audit).toMatchObject({
      actor: 'grpc:cli-tester',
      action: 'REPLAY_DEAD_LETTER',
      reason: 'PSP is back: INC-7 ✓',
      outcome: 'OK',
    });
  });

  it('repairs the running sums through AdminService, a dry run first, audited with name and reason', async () => {
    // A sums row of an account without entries: a repair deletes it, whatever the passes add.
    await sql`INSERT INTO ledger_account_sum VALUES ('seller_payable:cli-ghost', 'USD', 0, 1234)`.execute(
      stack.settle.db,
    );
    const reason = 'INC-9: a row inserted by hand';
    const refused = await settle(['ledger-sums', 'repair', '--reason', reason]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('UNAUTHENTICATED');
    const noReason = await settle(['ledger-sums', 'repair', '--dry-run'], { ADMIN_TOKEN });
    expect(noReason.code).toBe(2);
    expect(noReason.stderr).toContain('ledger-sums repair needs --reason');
    const wrongCommand = await settle(
      ['ledger-sums', 'repair', '--reason', reason, '--page-size', '1'],
      {
        ADMIN_TOKEN,
      },
    );
    expect(wrongCommand.code).toBe(2);
    expect(wrongCommand.stderr).toContain('ledger-sums repair does not take --page-size');

    const dry = await settle(['ledger-sums', 'repair', '--reason', reason, '--dry-run'], {
      ADMIN_TOKEN,
    });
    expect(dry.stderr).toBe('');
    expect(dry.code).toBe(0);
    expect(dry.stdout).toMatch(
      /^ACCOUNT\s+DEBITS BEFORE\s+CREDITS BEFORE\s+DEBITS AFTER\s+CREDITS AFTER\n/,
    );
    expect(dry.stdout).toMatch(/\nseller_payable:cli-ghost\s+0\.00 USD\s+12\.34 USD\s+-\s+-\n/);
    expect(dry.stdout).toMatch(
      /\ndry run, nothing written: 1 \(account, currency\) sum of \d+ accounts and 0 currency sums differ from the entries up to \d+; run it again without --dry-run to repair them\n$/,
    );
    expect(await auditRows(stack, 'ledger-sums:checkpoint')).toEqual([]);

    const repaired = await settle(['ledger-sums', 'repair', '--reason', reason, '--json'], {
      ADMIN_TOKEN,
    });
    expect(repaired.stderr).toBe('');
    expect(repaired.code).toBe(0);
    expect(JSON.parse(repaired.stdout)).toMatchObject({
      accountSumsRepaired: '1',
      accountSumRepairs: [
        {
          account: 'seller_payable:cli-ghost',
          currencyCode: 'USD',
          before: { debitMinor: '0', creditMinor: '1234' },
        },
      ],
    });
    // proto3 JSON leaves out a false dry_run, as it does every default.
    expect(repaired.stdout).not.toContain('dryRun');
    const [audit, ...more] = await auditRows(stack, 'ledger-sums:checkpoint');
    expect(more).toEqual([]);
    expect(audit).toMatchObject({
      actor: 'grpc:cli-tester',
      action: 'REPAIR_LEDGER_SUMS',
      reason,
      outcome: 'OK',
    });
    const again = await settle(['ledger-sums', 'repair', '--reason', reason], { ADMIN_TOKEN });
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(
      /^the running sums of \d+ accounts equal the entries up to \d+: nothing to repair\n$/,
    );
  });

  it('reconciles a settlement file and lists the report and its mismatches', async () => {
    await writeFile(
      path.join(settlementDir, 'settlement-2024-05-01.csv'),
      'psp_reference,merchant_reference,type,currency,gross,fee,net,batch_id,created_utc\n' +
        'psp_cli_1,ord_NOT_SETTLES_ORDER_0000000000,payment,USD,12.00,0.65,11.35,b,2024-05-01T09:00:00.000Z\n',
    );
    const run = await settle(['reconcile', 'run', '--date', '2024-05-01']);
    expect(run.code, run.stderr).toBe(0);
    const reportId = /rcn_[0-9A-Z]{26}/.exec(run.stdout)?.[0] ?? '';
    // The fees the ledger booked for the rows it agrees on (0 here), not the file's 0.65.
    expect(run.stdout).toMatch(/ TIMING +FEES_BOOKED +CHECK\n/);
    expect(run.stdout).toMatch(
      new RegExp(
        `${reportId}\\s+2024-05-01\\s+SUCCEEDED\\s+1/1\\s+0\\s+1\\s+0\\s+0\\s+0\\s+0\\s+0\\.00 USD\\s+ok`,
      ),
    );
    const listed = await settle(['reconcile', 'list', '--date', '2024-05-01', '--json']);
    expect(JSON.parse(listed.stdout)).toMatchObject({
      reports: [{ reportId, state: 'REPORT_STATE_SUCCEEDED' }],
    });
    const mismatches = await settle([
      'reconcile',
      'mismatches',
      reportId,
      '--class',
      'missing_in_ledger',
    ]);
    expect(mismatches.code, mismatches.stderr).toBe(0);
    expect(mismatches.stdout).toMatch(
      /\d+\s+MISSING_IN_LEDGER\s+2\s+ord_NOT_SETTLES_ORDER_0000000000\s+12\.00\s+no payment order with this id/,
    );
    const badClass = await settle(['reconcile', 'mismatches', reportId, '--class', 'bogus']);
    expect(badClass.code).toBe(2);
  });

  it('gives up a reconcile run still RUNNING at --timeout-ms with exit 1, saying how to see it later', async () => {
    await writeFile(
      path.join(settlementDir, 'settlement-2024-05-02.csv'),
      'psp_reference,merchant_reference,type,currency,gross,fee,net,batch_id,created_utc\n' +
        'psp_cli_2,ord_NOT_SETTLES_ORDER_0000000001,payment,USD,12.00,0.65,11.35,b,2024-05-02T09:00:00.000Z\n',
    );
    // Another run holds the classification lock: this one loads its file and stays RUNNING.
    // RunReconciliation itself answers after RECONCILIATION_WAIT_MS (2 s), within the 4 s.
    const target = parseMysqlUrl(stack.env.MYSQL_URL ?? '');
    const holder = await createConnection({ ...serverAddress(target), database: target.database });
    let reportId = '';
    try {
      await holder.query("SELECT GET_LOCK(CONCAT('settle.recon.', MD5(DATABASE())), 0)");
      const startedMs = Date.now();
      const run = await settle([
        'reconcile',
        'run',
        '--date',
        '2024-05-02',
        '--timeout-ms',
        '4000',
      ]);
      expect(Date.now() - startedMs).toBeLessThan(10_000);
      expect(run.code, run.stderr).toBe(1);
      reportId = /rcn_[0-9A-Z]{26}/.exec(run.stderr)?.[0] ?? '';
      expect(run.stderr).toBe(
        `settle: report ${reportId} is still RUNNING after 4000 ms; the run goes on without ` +
          `this command: see it later with settle reconcile report ${reportId}\n`,
      );
      // A deadline shorter than the server's own wait cuts the first call: no report id yet.
      const cut = await settle(['reconcile', 'run', '--date', '2024-05-02', '--timeout-ms', '500']);
      expect(cut.code, cut.stderr).toBe(1);
      expect(cut.stderr).toBe(
        'settle: RunReconciliation did not answer within 500 ms; the run may go on without ' +
          'this command: see it with settle reconcile list --date 2024-05-02 (the same file ' +
          'run again gets the same report)\n',
      );
    } finally {
      await holder.query("SELECT RELEASE_LOCK(CONCAT('settle.recon.', MD5(DATABASE())))");
      await holder.end();
    }
    // It did go on: once the lock is free, the report the message names finishes.
    await waitFor(
      async () => {
        const report = await settle(['reconcile', 'report', reportId, '--json']);
        return report.stdout.includes('REPORT_STATE_SUCCEEDED') ? true : undefined;
      },
      { what: 'the report to succeed', timeoutMs: 20_000 },
    );
  });

  it('exits 2 on usage errors and 1 with the gRPC code on server errors', async () => {
    const usage = await settle(['payment', 'create', '--buyer', 'b', '--order', 'seller=12.50']);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain("--order 'seller=12.50' must look like seller-id=1999");
    const unknown = await settle(['--bogus']);
    expect(unknown.code).toBe(2);
    // A bad global option is a usage error too, told in one line, not a stack trace.
    const timeout = await settle(['--timeout-ms', 'abc', 'trial-balance']);
    expect(timeout.code).toBe(2);
    expect(timeout.stderr).toMatch(/^settle: --timeout-ms must be a whole number/);
    expect(timeout.stderr).not.toContain('    at ');
    // A TLS server name the client refuses is named as such, not blamed on the API token.
    const serverName = await settle([
      '--tls',
      '--tls-server-name',
      'node.example/x',
      'trial-balance',
    ]);
    expect(serverName.code).toBe(2);
    expect(serverName.stderr).toBe(
      'settle: --tls-server-name (or SETTLE_TLS_SERVER_NAME) must be a host name or address\n',
    );
    const invalid = await settle(['payment', 'get', 'pay_nope']);
    expect(invalid.code).toBe(1);
    expect(invalid.stderr).toMatch(/^settle: INVALID_ARGUMENT: payment_id/);
    const reconcile = await settle(['reconcile', 'run']);
    expect(reconcile.code).toBe(2);
    expect(reconcile.stderr).toContain('reconcile run needs --date YYYY-MM-DD or --file');
    const missing = await settle(['reconcile', 'run', '--date', '2001-01-01']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toBe(
      "settle: NOT_FOUND: settlement file 'settlement-2001-01-01.csv' not found\n",
    );
    const help = await settle(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('Usage: settle');
    expect(help.stdout).toContain('ledger-sums repair --reason "<why>" [--dry-run]');
    expect(help.stdout).toContain('[--resume-token T | --from-now]');
    // --file alone is refused unless the file's name carries its day.
    expect(help.stdout).toContain('with --date too unless its name');
  });

  it('refuses an admin token no header can carry as a usage error, never printing it', async () => {
    for (const token of [
      'rev-admin-token-0123456789\n',
      'rev-admin-tøken-0123456789',
      ' rev-admin-token-0123456789',
    ]) {
      for (const args of [
        ['dlq', 'list', '--token', token],
        ['dlq', 'list'],
      ]) {
        const run = await settle(args, { ADMIN_TOKEN: token });
        expect(run.code, run.stderr).toBe(2);
        expect(run.stderr).toMatch(
          /^settle: the admin token \(--token or ADMIN_TOKEN\) must be printable ASCII, with no space at either end\n/,
        );
        expect(run.stderr).not.toContain('rev-admin-t');
      }
    }
  });

  it('refuses arguments and options the command does not take, and sends nothing', async () => {
    // Each would otherwise run as if the word were not there: a list unfiltered, a payment made.
    const cases: Array<[string[], RegExp]> = [
      [['payment', 'list', '--date', '2024-05-01'], /^settle: payment list does not take --date/],
      [['reconcile', 'list', '--state', 'FAILED'], /^settle: reconcile list does not take --state/],
      [['wallet', 'seller-a', '--currency', 'EUR'], /^settle: wallet does not take --currency/],
      [['payment', 'get', 'pay_a', 'pay_b'], /^settle: payment get takes <payment_id>, not 2/],
      [
        ['payment', 'create', '--buyer', 'buyer-cli-extra', '--order', 's=100', 'oops'],
        /^settle: payment create takes no arguments, not 1 \('oops'\)/,
      ],
      [['ledger', '--order', 'ord_a', '--order', 'ord_b'], /^settle: ledger takes --order once/],
      [['trial-balance', 'extra'], /^settle: trial-balance takes no arguments, not 1/],
    ];
    for (const [args, message] of cases) {
      const run = await settle(args);
      expect(run.code, args.join(' ')).toBe(2);
      expect(run.stderr, args.join(' ')).toMatch(message);
    }
    const listed = await settle(['payment', 'list', '--buyer', 'buyer-cli-extra', '--json']);
    expect(JSON.parse(listed.stdout)).toEqual({ payments: [], nextPageToken: '' });
  });

  it('refuses an amount past int64 as a usage error, before sending', async () => {
    const run = await settle([
      'payment',
      'create',
      '--buyer',
      'b',
      '--order',
      's=9999999999999999999',
    ]);
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/^settle: --order 's=9999999999999999999': the amount does not fit/);
  });

  it('after a create whose answer was lost, tells the request id that gets the same payment', async () => {
    const buyer = 'buyer-cli-lost';
    const order = ['payment', 'create', '--buyer', buyer, '--order', 'seller-cli-a=700'];
    // The payment table held locked keeps the sent create from answering: a 1 s deadline passes
    // before the answer, and the payment may or may not be made once the lock goes.
    const target = parseMysqlUrl(stack.env.MYSQL_URL ?? '');
    const holder = await createConnection({ ...serverAddress(target), database: target.database });
    let lost: Run;
    try {
      await holder.query('LOCK TABLES payment WRITE');
      lost = await settle([...order, '--timeout-ms', '1000']);
    } finally {
      await holder.end();
    }
    expect(lost.code).toBe(1);
    expect(lost.stderr).toMatch(/^settle: DEADLINE_EXCEEDED: /);
    const requestId = /run it again with --request-id ([0-9a-f-]{36})/.exec(lost.stderr)?.[1];
    expect(requestId, lost.stderr).toBeDefined();
    const again = await settle([...order, '--request-id', requestId ?? '', '--json']);
    expect(again.code, again.stderr).toBe(0);
    const listed = await settle(['payment', 'list', '--buyer', buyer, '--json']);
    const { payments } = JSON.parse(listed.stdout) as { payments: Array<{ requestId: string }> };
    expect(payments.map((p) => p.requestId)).toEqual([requestId]);
    // A refusal made nothing: no hint to retry it.
    const refused = await settle([...order, '--currency', 'EUR']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).not.toContain('--request-id');
    // Nor does a deadline that passed before the call was sent (grpc-js "waiting for name
    // resolution"), and no node is said to be missing: it was only short.
    const unsent = await settle([
      'payment',
      'create',
      '--buyer',
      'buyer-cli-unsent',
      '--order',
      'seller-cli-a=700',
      '--timeout-ms',
      '1',
    ]);
    expect(unsent.code).toBe(1);
    // Still resolving the name or picking a connection, as timing has it: nothing was sent, so
    // no "may have been created" advice follows.
    expect(unsent.stderr).toMatch(
      /^settle: DEADLINE_EXCEEDED: .*waiting for (name resolution|metadata filters|LB pick)\n$/i,
    );
    const none = await settle(['payment', 'list', '--buyer', 'buyer-cli-unsent', '--json']);
    expect(JSON.parse(none.stdout)).toEqual({ payments: [], nextPageToken: '' });
  });

  it('names the address it could not reach and how to pick another', async () => {
    const addr = `127.0.0.1:${await freePort()}`;
    const run = await settle(['wallet', 'seller-a'], { SETTLE_ADDR: addr });
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/^settle: UNAVAILABLE: /);
    expect(run.stderr).toContain(
      `no Settle node answers at ${addr}: start one, or give its address with --addr or SETTLE_ADDR`,
    );
    expect(run.stderr).not.toContain('    at ');
    // Nothing reached a node, so there is no payment to get back with the request id.
    const create = await settle(['payment', 'create', '--buyer', 'b', '--order', 's=100'], {
      SETTLE_ADDR: addr,
    });
    expect(create.code).toBe(1);
    expect(create.stderr).toContain(`no Settle node answers at ${addr}`);
    expect(create.stderr).not.toContain('--request-id');
  });

  it('ends a watch at --timeout-ms when one is given', async () => {
    const created = await settle([
      'payment',
      'create',
      '--buyer',
      'buyer-cli-watch',
      '--order',
      'seller-cli-a=300',
      '--json',
    ]);
    const { paymentId: id } = JSON.parse(created.stdout) as { paymentId: string };
    const started = Date.now();
    // Nobody pays: the payment stays EXECUTING, and the watch must end at its deadline.
    const watched = await settle(['payment', 'watch', id, '--timeout-ms', '1500']);
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(watched.code).toBe(1);
    expect(watched.stdout).toMatch(/EXECUTING {2}seller-cli-a=EXECUTING\n$/);
    // What to do, not grpc-js's "Deadline exceeded after 1.502s,name resolution: …".
    expect(watched.stderr).toBe(
      `settle: DEADLINE_EXCEEDED: ${id} was still EXECUTING at the deadline (--timeout-ms); ` +
        `watch it again: settle payment watch ${id}\n`,
    );
  });

  describe('when the server ends a watch before the payment is terminal', () => {
    // A node whose watches end after 1.5 s instead of an hour, with OK, terminal or not.
    let capped: Stack;
    let addr: Record<string, string>;
    beforeAll(async () => {
      capped = await startStack({ overrides: { watchDurationMsMax: 1_500 } });
      addr = { SETTLE_ADDR: `127.0.0.1:${capped.settle.grpcPort}` };
    });
    afterAll(async () => capped?.stop());

    async function create(buyer: string, seller: string) {
      const created = await settle(
        ['payment', 'create', '--buyer', buyer, '--order', `${seller}=300`, '--json'],
        addr,
      );
      expect(created.code, created.stderr).toBe(0);
      return JSON.parse(created.stdout) as {
        paymentId: string;
        orders: Array<{ checkoutUrl: string }>;
      };
    }

    it('watches again, printing each state once, until the buyer pays', async () => {
      const { paymentId: id, orders } = await create('buyer-cli-rewatch', 'seller-cli-r');
      const watching = settle(['payment', 'watch', id], addr);
      // Past the first watch's end: the payment is paid during the second.
      await new Promise((resolve) => setTimeout(resolve, 2_500));
      expect((await payOnHostedPage(orders[0]?.checkoutUrl ?? '', CARD.success)).status).toBe(200);
      const watched = await watching;
      expect(watched.code, watched.stderr).toBe(0);
      const lines = watched.stdout.trim().split('\n');
      expect(lines[0]).toMatch(/ EXECUTING {2}seller-cli-r=EXECUTING$/);
      // The second watch starts with the state the first ended on; it is not printed again.
      expect(lines.filter((line, i) => i > 0 && line === lines[i - 1])).toEqual([]);
      expect(lines[lines.length - 1]).toMatch(/SUCCEEDED {2}seller-cli-r=SUCCEEDED$/);
    });

    it('exits 1 with the last state at --timeout-ms, having printed it once', async () => {
      const { paymentId: id } = await create('buyer-cli-cap', 'seller-cli-c');
      const started = Date.now();
      // Nobody pays; the server ends the first watch at 1.5 s, the deadline falls at 3 s.
      const watched = await settle(['payment', 'watch', id, '--timeout-ms', '3000'], addr);
      expect(Date.now() - started).toBeLessThan(15_000);
      expect(watched.code).toBe(1);
      expect(watched.stdout).toMatch(/^\S+ \S+ {2}EXECUTING {2}seller-cli-c=EXECUTING\n$/);
      expect(watched.stderr).toBe(
        `settle: DEADLINE_EXCEEDED: ${id} was still EXECUTING at the deadline (--timeout-ms); ` +
          `watch it again: settle payment watch ${id}\n`,
      );
    });
  });

  it('refuses an address it cannot call as a usage error, without a stack trace', async () => {
    const port = stack.settle.grpcPort;
    const cases: Array<[string, string]> = [
      // An unset variable in `--addr "$ADDR"`: grpc-js threw from the channel's constructor.
      ['', "settle: --addr is empty: give the node's host:port, e.g. 127.0.0.1:50051"],
      // grpc-js would call port 443, where no Settle node listens.
      ['localhost', "settle: --addr 'localhost' has no port: e.g. localhost:50051"],
      [
        `http://127.0.0.1:${port}`,
        `settle: --addr 'http://127.0.0.1:${port}' is a URL: give host:port, e.g. 127.0.0.1:${port}`,
      ],
      // grpc-js waited out the deadline on it, after a Node deprecation warning.
      [`:${port}`, `settle: --addr ':${port}' has no host: e.g. 127.0.0.1:${port}`],
      ['127.0.0.1:99999', "settle: --addr '127.0.0.1:99999': the port must be from 1 to 65535"],
      ['127.0.0.1:0', "settle: --addr '127.0.0.1:0': the port must be from 1 to 65535"],
    ];
    for (const [addr, message] of cases) {
      const run = await settle(['--addr', addr, 'wallet', 'seller-a']);
      expect(run.code, addr).toBe(2);
      expect(run.stderr.split('\n')[0], addr).toBe(message);
      expect(run.stderr, addr).not.toContain('    at ');
    }
  });
  it('ends quietly when its reader has closed the pipe (settle … | head -1)', async () => {
    for (const args of [['--help'], ['trial-balance'], ['payment', 'list', '--json']]) {
      const child = spawn(process.execPath, [path.join(ROOT, 'bin/settle.js'), ...args], {
        cwd: ROOT,
        env: { PATH: process.env.PATH ?? '', SETTLE_ADDR: `127.0.0.1:${stack.settle.grpcPort}` },
      });
      // As a `head` that has read its lines and exited: each write now fails with EPIPE.
      child.stdout.destroy();
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
      expect(stderr, args.join(' ')).toBe('');
      expect(code, args.join(' ')).toBe(0);
    }
  });
  describe('ledger --follow', () => {
    const seller = 'seller-cli-follow';
    const account = `seller_payable:${seller}`;

    /** Creates a payment to `seller` and pays it: its booking credits the seller `amountMinor`. */
    async function pay(amountMinor: number): Promise<void> {
      const created = await settle([
        'payment',
        'create',
        '--buyer',
        'buyer-cli-follow',
        '--order',
        `${seller}=${amountMinor}`,
        '--json',
      ]);
      expect(created.code, created.stderr).toBe(0);
      const { orders } = JSON.parse(created.stdout) as { orders: Array<{ checkoutUrl: string }> };
      expect((await payOnHostedPage(orders[0]?.checkoutUrl ?? '', CARD.success)).status).toBe(200);
    }

    /** The CLI as a child process whose output can be read while it runs. */
    function follow(args: string[]) {
      const child = spawn(process.execPath, [path.join(ROOT, 'bin/settle.js'), ...args], {
        cwd: ROOT,
        env: { PATH: process.env.PATH ?? '', SETTLE_ADDR: `127.0.0.1:${stack.settle.grpcPort}` },
      });
      const run = { stdout: '', stderr: '' };
      child.stdout.on('data', (chunk: Buffer) => (run.stdout += chunk.toString()));
      child.stderr.on('data', (chunk: Buffer) => (run.stderr += chunk.toString()));
      const closed = new Promise<[number | null, string | null]>((resolve) =>
        child.on('close', (code, signal) => resolve([code, signal])),
      );
      return { child, run, closed };
    }

    const rowOf = (amount: string) =>
      new RegExp(`^\\d+ +\\S+ \\S+ +${account} +ord_\\w+ +PAYMENT_PAYABLE +${amount} USD$`);
    const tokenIn = (stderr: string) => /--resume-token (\S+)\n$/.exec(stderr)?.[1] ?? '';

    it('prints entries as they settle, and goes on from the token it printed, none twice', async () => {
      // Until --max-entries: started first, it sees the bookings made after it.
      const first = follow(['ledger', '--follow', '--account', account, '--max-entries', '2']);
      await waitFor(() => Promise.resolve(first.run.stdout.startsWith('ENTRY ')), {
        what: 'the header',
      });
      await pay(101);
      await pay(102);
      expect(await first.closed, first.run.stderr).toEqual([0, null]);
      const lines = first.run.stdout.trimEnd().split('\n');
      expect(lines[0]).toMatch(/^ENTRY +TIME \(UTC\) +ACCOUNT +ORDER +KIND +DEBIT +CREDIT$/);
      expect(lines.slice(1)).toHaveLength(2);
      expect(lines[1]).toMatch(rowOf('1\\.01'));
      expect(lines[2]).toMatch(rowOf('1\\.02'));
      expect(first.run.stderr).toMatch(
        /^settle: --max-entries 2 ended the follow after 2 entries; continue with --resume-token \S+\n$/,
      );

      // Until Ctrl-C, as JSON lines: from the token, only what settled since.
      await pay(103);
      const second = follow([
        'ledger',
        '--follow',
        '--account',
        account,
        '--resume-token',
        tokenIn(first.run.stderr),
        '--json',
      ]);
      await waitFor(() => Promise.resolve(second.run.stdout.endsWith('\n')), { what: 'a line' });
      // Polling the head once more prints nothing twice.
      await new Promise((resolve) => setTimeout(resolve, 1_500));
      second.child.kill('SIGINT');
      expect(await second.closed).toEqual([null, 'SIGINT']);
      const printed = second.run.stdout
        .trimEnd()
        .split('\n')
        .map((line) => JSON.parse(line) as { entryId: string; creditMinor: string });
      expect(printed.map((e) => e.creditMinor)).toEqual(['103']);
      expect(second.run.stderr).toMatch(
        /^settle: interrupted; continue with --resume-token \S+\n$/,
      );

      // Until --timeout-ms (exit 0): nothing settled since the last one printed.
      const third = await settle([
        'ledger',
        '--follow',
        '--account',
        account,
        '--resume-token',
        tokenIn(second.run.stderr),
        '--timeout-ms',
        '1500',
      ]);
      expect(third.code, third.stderr).toBe(0);
      expect(third.stdout.trimEnd().split('\n')).toHaveLength(1);
      expect(third.stderr).toMatch(
        /^settle: --timeout-ms 1500 ended the follow after 0 entries; continue with --resume-token \S+\n$/,
      );

      // The follows together printed the account's entries, in order (read from the table: a
      // listing page can end early at the horizon, a gap another test's booking left).
      const entries = await sql<{ id: string }>`
        SELECT id FROM ledger_entry WHERE account = ${account} ORDER BY id`.execute(
        stack.settle.db,
      );
      const followed = [
        ...lines.slice(1).map((line) => line.split(' ')[0]),
        ...printed.map((e) => e.entryId),
      ];
      expect(followed).toEqual(entries.rows.map((row) => String(row.id)));
    });

    it('prints only what settles from then on with --from-now', async () => {
      const fresh = 'seller-cli-from-now';
      const book = (amountMinor: bigint) =>
        inTransaction(stack.settle.db, (trx) =>
          postLedgerTransaction(trx, paymentBooking(fresh, amountMinor)),
        );
      await book(104n);
      const run = follow([
        'ledger',
        '--follow',
        '--from-now',
        '--account',
        `seller_payable:${fresh}`,
        '--max-entries',
        '1',
      ]);
      await waitFor(() => Promise.resolve(run.run.stdout.startsWith('ENTRY ')), {
        what: 'the header',
      });
      // The header comes before the follow has read the head: a booking made at once can still
      // land before it, and is then rightly not printed. Book until one is.
      const printed = () => run.run.stdout.includes('PAYMENT_PAYABLE');
      for (let amountMinor = 201n; amountMinor <= 210n && !printed(); amountMinor += 1n) {
        await book(amountMinor);
        await waitFor(() => Promise.resolve(printed()), { timeoutMs: 2_000 }).catch(() => false);
      }
      expect(await run.closed, run.run.stderr).toEqual([0, null]);
      const rows = run.run.stdout.trimEnd().split('\n').slice(1);
      expect(rows).toHaveLength(1);
      expect(rows[0]).toMatch(/ PAYMENT_PAYABLE +2\.\d\d USD$/);
      expect(run.run.stderr).toMatch(
        /^settle: --max-entries 1 ended the follow after 1 entry; continue with --resume-token \S+\n$/,
      );
    });

    it('on Ctrl-C of an idle --from-now follow, tells the token of the head it read', async () => {
      const idle = `seller-cli-idle-${Date.now()}`;
      const args = ['ledger', '--follow', '--account', `seller_payable:${idle}`];
      const run = follow([...args, '--from-now']);
      await waitFor(() => Promise.resolve(run.run.stdout.startsWith('ENTRY ')), {
        what: 'the header',
      });
      // Past the first poll, which read the head: nothing settled on the account since.
      await new Promise((resolve) => setTimeout(resolve, 2_500));
      run.child.kill('SIGINT');
      expect(await run.closed).toEqual([null, 'SIGINT']);
      // It said "nothing was read: start again with --from-now", which skips what settles
      // between the Ctrl-C and the new start.
      expect(run.run.stderr).toMatch(/^settle: interrupted; continue with --resume-token \S+\n$/);
      await inTransaction(stack.settle.db, (trx) =>
        postLedgerTransaction(trx, paymentBooking(idle, 301n)),
      );
      const resumed = await settle([
        ...args,
        '--resume-token',
        tokenIn(run.run.stderr),
        '--max-entries',
        '1',
        '--timeout-ms',
        '10000',
      ]);
      expect(resumed.code, resumed.stderr).toBe(0);
      expect(resumed.stdout.trimEnd().split('\n').slice(1)).toEqual([
        expect.stringMatching(/ PAYMENT_PAYABLE +3\.01 USD$/),
      ]);
    });

    it('says where to go on from when its reader has closed the pipe (| head -1)', async () => {
      const piped = `seller-cli-piped-${Date.now()}`;
      // Three entries of the account, which the follow reads in one page.
      for (const amount of [91_401n, 91_402n, 91_403n]) {
        await inTransaction(stack.settle.db, (trx) =>
          postLedgerTransaction(trx, paymentBooking(piped, amount)),
        );
      }
      const account = `seller_payable:${piped}`;
      const run = follow(['ledger', '--follow', '--account', account, '--json']);
      // As a `head` that has read its lines and exited: the first entry's write fails with EPIPE.
      run.child.stdout.destroy();
      expect(await run.closed, run.run.stderr).toEqual([0, null]);
      // It ended without a word: the entries after what the reader saw were lost track of.
      expect(run.run.stderr).toMatch(/^settle: interrupted; continue with --resume-token \S+\n$/);
      // The token is after the entry whose write failed, not after the page: the two entries
      // the loop would have written into the closed pipe come next.
      const token = /--resume-token (\S+)/.exec(run.run.stderr)?.[1] ?? '';
      const resumed = await settle([
        'ledger',
        '--follow',
        '--account',
        account,
        '--resume-token',
        token,
        '--max-entries',
        '2',
        '--json',
      ]);
      expect(resumed.code, resumed.stderr).toBe(0);
      expect(resumed.stdout).toContain('"91402"');
      expect(resumed.stdout).toContain('"91403"');
    });

    it('exits 1 at --timeout-ms when no node answered, having said it retried', async () => {
      const run = await settle(['ledger', '--follow', '--timeout-ms', '1500'], {
        SETTLE_ADDR: `127.0.0.1:${await freePort()}`,
      });
      expect(run.code).toBe(1);
      expect(run.stderr).toMatch(
        /^settle: UNAVAILABLE: .*; asking again in \d+(\.\d)? s\nno Settle node answers at /,
      );
      expect(run.stderr).toMatch(
        /--timeout-ms 1500 ended the follow after 0 entries while the node was not answering; nothing was read: start again without --resume-token\n$/,
      );
    });

    it('says the node refused a resume token, not to go on with it', async () => {
      const run = await settle([
        'ledger',
        '--follow',
        '--resume-token',
        'abc',
        '--timeout-ms',
        '5000',
      ]);
      expect(run.code).toBe(1);
      expect(run.stderr).toContain('settle: INVALID_ARGUMENT: page_token:');
      expect(run.stderr).toContain('the node refused --resume-token; start again without it');
      expect(run.stderr).not.toContain('continue with --resume-token abc');
    });

    it('tells where later entries are when a listing page stops at the horizon', async () => {
      // A booking held open below a committed one: the page ends before it, with no next page.
      const held = `seller-cli-held-${Date.now()}`;
      let release: () => void = () => {};
      const released = new Promise<void>((resolve) => (release = resolve));
      let posted: () => void = () => {};
      const isPosted = new Promise<void>((resolve) => (posted = resolve));
      const posting = (trx: Trx) => postLedgerTransaction(trx, paymentBooking(held, 5n));
      const open = stack.settle.db.transaction().execute(async (trx) => {
        await posting(trx);
        posted();
        await released;
      });
      try {
        await isPosted;
        await inTransaction(stack.settle.db, (trx) => posting(trx));
        const run = await settle(['ledger', '--account', `seller_payable:${held}`]);
        expect(run.code, run.stderr).toBe(0);
        expect(run.stdout).not.toContain('next page:');
        expect(run.stdout).toMatch(
          /stopped at the settled horizon \(a booking below later entries is still open\); later entries: --page-token \S+, or ledger --follow\n$/,
        );
      } finally {
        release();
        await open;
      }
    });

    it('refuses options that do not go together, and sends nothing', async () => {
      for (const [args, message] of [
        [['ledger', '--max-entries', '2'], '--max-entries needs --follow'],
        [['ledger', '--resume-token', 'abc'], '--resume-token needs --follow'],
        [['ledger', '--from-now'], '--from-now needs --follow'],
        [
          ['ledger', '--follow', '--from-now', '--resume-token', 'abc'],
          '--from-now and --resume-token both say where the follow starts: give one of them',
        ],
        [['ledger', '--follow', '--page-token', 'abc'], 'ledger --follow starts at --resume-token'],
        [['ledger', '--follow', '--resume-token', 'abc.x1'], "--resume-token 'abc.x1' is refused"],
        [['ledger', '--follow', '--max-entries', '0'], '--max-entries must be a whole number'],
        [['payment', 'list', '--follow'], 'payment list does not take --follow'],
      ] as const) {
        const run = await settle([...args]);
        expect(run.code, args.join(' ')).toBe(2);
        expect(run.stderr, args.join(' ')).toContain(`settle: ${message}`);
      }
    });
  });

  it('on Ctrl-C during a create, tells the request id that gets the payment made', async () => {
    const buyer = 'buyer-cli-interrupted';
    const order = ['payment', 'create', '--buyer', buyer, '--order', 'seller-cli-a=800'];
    // A slow PSP keeps the create waiting for its registration after the payment is written.
    stack.psp.setBehavior({ latencyMs: 3_000 });
    try {
      const child = spawn(process.execPath, [path.join(ROOT, 'bin/settle.js'), ...order], {
        cwd: ROOT,
        env: { PATH: process.env.PATH ?? '', SETTLE_ADDR: `127.0.0.1:${stack.settle.grpcPort}` },
      });
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      const closed = new Promise<[number | null, string | null]>((resolve) =>
        child.on('close', (code, signal) => resolve([code, signal])),
      );
      await waitFor(
        () =>
          stack.settle.db
            .selectFrom('payment')
            .select('id')
            .where('buyer_id', '=', buyer)
            .executeTakeFirst(),
        { what: 'the payment row' },
      );
      child.kill('SIGINT');
      // It still dies of the signal, so a shell script running it stops too.
      expect(await closed).toEqual([null, 'SIGINT']);
      const requestId = /run it again with --request-id ([0-9a-f-]{36})/.exec(stderr)?.[1];
      expect(requestId, stderr).toBeDefined();
      stack.psp.setBehavior({ latencyMs: 0 });
      const again = await settle([...order, '--request-id', requestId ?? '']);
      expect(again.code, again.stderr).toBe(0);
      const listed = await settle(['payment', 'list', '--buyer', buyer, '--json']);
      const { payments } = JSON.parse(listed.stdout) as { payments: Array<{ requestId: string }> };
      expect(payments.map((p) => p.requestId)).toEqual([requestId]);
    } finally {
      stack.psp.setBehavior({ latencyMs: 0 });
    }
  });
});

describe('settle CLI over TLS', () => {
  let certs: TestCertificates;
  /** Serves gRPC with TLS and requires a client certificate signed by certs.caCert. */
  let node: SettleNode;
  let addr = '';

  beforeAll(async () => {
    certs = await makeTestCertificates();
    const [grpcPort, httpPort] = await Promise.all([freePort(), freePort()]);
    node = await startSettle(
      loadConfig({
        ...stack.env,
        SETTLE_GRPC_ADDR: `127.0.0.1:${grpcPort}`,
        SETTLE_HTTP_ADDR: `127.0.0.1:${httpPort}`,
        GRPC_TLS_CERT_FILE: certs.serverCert,
        GRPC_TLS_KEY_FILE: certs.serverKey,
        GRPC_TLS_CLIENT_CA_FILE: certs.caCert,
      }),
      { nodeName: 'test-node-cli-tls' },
    );
    addr = `127.0.0.1:${node.grpcPort}`;
  });
  afterAll(async () => {
    await node?.stop();
    await certs?.remove();
  });

  it('calls a node that requires client certificates with --tls-ca, --tls-cert and --tls-key', async () => {
    const run = await settle(
      [
        'payment',
        'list',
        '--tls-ca',
        certs.caCert,
        '--tls-cert',
        certs.clientCert,
        '--tls-key',
        certs.clientKey,
      ],
      { SETTLE_ADDR: addr },
    );
    // Nothing on stderr: not even Node's warning about an IP as the TLS server name.
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/^PAYMENT\s+CREATED \(UTC\)/);
  });

  it('takes the same from SETTLE_TLS_CA, SETTLE_TLS_CERT and SETTLE_TLS_KEY', async () => {
    const run = await settle(['wallet', 'seller-nobody'], {
      SETTLE_ADDR: addr,
      SETTLE_TLS_CA: certs.caCert,
      SETTLE_TLS_CERT: certs.clientCert,
      SETTLE_TLS_KEY: certs.clientKey,
    });
    // An answer from the node: the call got through.
    expect(run.stderr).toMatch(/^settle: NOT_FOUND: /);
    expect(run.code).toBe(1);
  });

  it('says what failed in the handshake and which option to give, without a stack trace', async () => {
    const noCertificate = await settle(['wallet', 'seller-a'], {
      SETTLE_ADDR: addr,
      SETTLE_TLS_CA: certs.caCert,
    });
    expect(noCertificate.code).toBe(1);
    expect(noCertificate.stderr).toBe(
      `settle: UNAVAILABLE: No connection established: the TLS handshake with ${addr} failed: ` +
        'the node requires a client certificate and this client gave none: give one signed by ' +
        "the node's client CA, with its key (tlsv13 alert certificate required)\n" +
        "give a certificate the node's client CA signed, and its key, with --tls-cert and " +
        '--tls-key (or SETTLE_TLS_CERT and SETTLE_TLS_KEY)\n',
    );
    const untrusted = await settle(['wallet', 'seller-a', '--tls-ca', certs.otherCaCert], {
      SETTLE_ADDR: addr,
    });
    expect(untrusted.code).toBe(1);
    expect(untrusted.stderr).toContain(
      "the node's certificate is not signed by a CA this client trusts",
    );
    expect(untrusted.stderr).toContain(
      "give the CA that signed the node's certificate with --tls-ca (or SETTLE_TLS_CA)",
    );
    const plaintext = await settle(['wallet', 'seller-a'], { SETTLE_ADDR: addr });
    expect(plaintext.code).toBe(1);
    expect(plaintext.stderr).toMatch(/^settle: UNAVAILABLE: No connection established/);
    expect(plaintext.stderr).toContain(
      `the node at ${addr} closed the connection before answering: if it serves TLS, give the ` +
        'CA that signed its certificate with --tls-ca (or SETTLE_TLS_CA), or --tls',
    );
    for (const run of [noCertificate, untrusted, plaintext]) {
      expect(run.stderr).not.toContain('    at ');
    }
  });

  it('refuses TLS files it cannot use as usage errors, naming the option and the file', async () => {
    const missing = path.join(certs.dir, 'missing.pem');
    const unreadable = await settle(['wallet', 'seller-a', '--tls-ca', missing]);
    expect(unreadable.code).toBe(2);
    expect(unreadable.stderr).toMatch(
      new RegExp(`^settle: --tls-ca: cannot read ${missing} \\(no such file\\)\n`),
    );
    const notACa = await settle(['wallet', 'seller-a'], { SETTLE_TLS_CA: certs.clientKey });
    expect(notACa.code).toBe(2);
    expect(notACa.stderr).toContain(
      `settle: SETTLE_TLS_CA: ${certs.clientKey} holds a private key, not a certificate`,
    );
    const alone = await settle(['wallet', 'seller-a', '--tls-cert', certs.clientCert]);
    expect(alone.code).toBe(2);
    expect(alone.stderr).toContain(
      'settle: --tls-cert needs --tls-key too: a client certificate goes with its key',
    );
  });
});
