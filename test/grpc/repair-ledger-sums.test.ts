/**
 * Goal: AdminService/RepairLedgerSums mends the running sums for an operator, as safely as the
 * dead-letter actions: a repair needs ADMIN_TOKEN even with ADMIN_READONLY_OPEN (which opens the
 * dry run, a read), a reason of 3-500 characters, and is audited (OK with what it changed, in
 * the repair's own transaction; FAILED with why); a dry run answers the same repairs and writes
 * nothing, not even an audit row. Its failures are statuses a person can act on: UNAVAILABLE
 * saying another repair holds the checkpoint, UNAVAILABLE with the repair rolled back when its
 * audit row cannot be written, and a sum past int64 left unset in the answer rather than an
 * INTERNAL after the commit. Method: the real AdminService handlers on a server on 127.0.0.1:0,
 * called through the generated client, over a fresh MariaDB database whose ledger is booked
 * through the ledger repository, summed by passes, and whose sums are then damaged by hand; a
 * trigger refuses the OK audit row.
 */
import * as grpc from '@grpc/grpc-js';
import { sql } from 'kysely';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { WrongTokenLimit, type AdminAuthConfig } from '../../src/admin/auth.js';
import { ClientResolver } from '../../src/admin/client-address.js';
import {
  AdminServiceClient,
  AdminServiceService,
  type RepairLedgerSumsRequest,
  type RepairLedgerSumsResponse,
} from '../../src/grpc/generated/settle/v1/admin.js';
import { adminHandlers, LEDGER_SUMS_AUDIT_TARGET } from '../../src/grpc/handlers/admin.handlers.js';
import type { Db } from '../../src/storage/db.js';
import {
  ledgerSumsCheckpoint,
  ledgerSumsDrift,
  type LedgerSumsOptions,
} from '../../src/storage/repositories/ledger-sums.repository.js';
import { openTestDatabase } from '../support/harness.js';
import { book, catchUpLedgerSums, NO_LEDGER_SUMS_DRIFT } from '../support/ledger.js';
import { callUnary, startServer, stopServer, type UnaryOutcome } from './harness.js';

const TOKEN = 'repair-ledger-sums-admin-token';

const OPTIONS: LedgerSumsOptions = {
  horizon: { reservationSettleMs: 300, markIntervalMs: 50, gapCheckIdsMax: 20_000 },
  entriesPerPassMax: 50_000,
};

let db: Db;
let close: () => Promise<void>;

beforeAll(async () => {
  // A lock wait of 1 s: the test of a held checkpoint answers within the client's 5 s deadline.
  ({ db, close } = await openTestDatabase('settle_repair_sums_t', {
    poolSize: 6,
    lockWaitTimeoutS: 1,
  }));
});
afterAll(async () => {
  await close?.();
});
afterEach(async () => {
  for (const table of [
    'ledger_entry',
    'ledger_transaction',
    'ledger_entry_mark',
    'ledger_account_sum',
    'ledger_currency_sum',
    'admin_audit',
  ]) {
    await sql`TRUNCATE TABLE ${sql.table(table)}`.execute(db);
  }
  await sql`UPDATE ledger_sum_checkpoint SET upto_id = 0, advanced_at = '1970-01-01 00:00:01'`.execute(
    db,
  );
});

/** Runs `use` against AdminService with `access`, on a server of its own. */
async function withAdmin<T>(
  access: AdminAuthConfig,
  use: (repair: (request: RepairLedgerSumsRequest, token?: string) => Promise<string>) => T,
): Promise<Awaited<T>> {
  const running = await startServer((server) =>
    server.addService(
      AdminServiceService,
      adminHandlers(
        {
          db,
          bulkDb: db,
          wakeRelay: () => {},
          now: () => new Date(),
          access,
          wrongTokens: new WrongTokenLimit(),
          clients: new ClientResolver(),
        },
        { log: () => {} },
      ),
    ),
  );
  const client = new AdminServiceClient(running.address, grpc.credentials.createInsecure());
  const repair = async (request: RepairLedgerSumsRequest, token?: string) => {
    const metadata = new grpc.Metadata();
    if (token !== undefined) metadata.set('authorization', `Bearer ${token}`);
    metadata.set('x-admin-actor', 'ops-tester');
    return outcomeText(await callUnary(client.repairLedgerSums.bind(client), request, metadata));
  };
  try {
    return await use(repair);
  } finally {
    client.close();
    stopServer(running);
  }
}

/** OK and the response as JSON (bigints as strings), or the status code and message. */
function outcomeText(outcome: UnaryOutcome<RepairLedgerSumsResponse>): string {
  if (!outcome.ok) return `${grpc.status[outcome.error.code]} ${outcome.error.details}`;
  return `OK ${JSON.stringify(outcome.response, (_key, value: unknown) =>
    typeof value === 'bigint' ? value.toString() : value,
  )}`;
}

/** Ten bookings to two sellers, summed; then psp_receivable's debits raised by 5 by hand. */
async function damagedSums(): Promise<string> {
  for (let i = 0; i < 10; i += 1) await book(db, `s${i % 2}`, BigInt(i + 1));
  await catchUpLedgerSums(db, OPTIONS);
  await sql`UPDATE ledger_account_sum SET debit_minor = debit_minor + 5
            WHERE account = 'psp_receivable'`.execute(db);
  return (await ledgerSumsCheckpoint(db)).uptoId.toString();
}

/** The response to a repair of damagedSums() (JSON as outcomeText writes it). */
function repairedResponse(checkpoint: string, dryRun: boolean): string {
  return `OK ${JSON.stringify({
    checkpointEntryId: checkpoint,
    accountsChecked: '3',
    accountSumsRepaired: '1',
    accountSumRepairs: [
      {
        account: 'psp_receivable',
        currencyCode: 'USD',
        before: { debitMinor: '60', creditMinor: '0' },
        after: { debitMinor: '55', creditMinor: '0' },
      },
    ],
    currencySumRepairs: [],
    dryRun,
    currencySumsRepaired: '0',
  })}`;
}

async function sumsRows(): Promise<string[]> {
  const { rows } = await sql<{ account: string; d: string; c: string }>`
    SELECT account, debit_minor AS d, credit_minor AS c FROM ledger_account_sum
    ORDER BY account`.execute(db);
  return rows.map((row) => `${row.account}/${row.d}/${row.c}`);
}

async function auditRows() {
  const { rows } = await sql<{
    actor: string;
    action: string;
    target: string;
    reason: string;
    outcome: string;
    detail: string;
  }>`SELECT actor, action, target, reason, outcome, detail FROM admin_audit ORDER BY id`.execute(
    db,
  );
  return rows;
}

const WITH_TOKEN: AdminAuthConfig = { token: TOKEN, readonlyOpen: false };
const REASON = 'INC-7: psp_receivable edited by hand';

describe('AdminService/RepairLedgerSums', () => {
  it('refuses a call without the token, and opens only the dry run with ADMIN_READONLY_OPEN', async () => {
    const checkpoint = await damagedSums();
    const damaged = await sumsRows();
    const refused =
      'UNAUTHENTICATED AdminService needs the metadata "authorization: Bearer <ADMIN_TOKEN>"';
    await withAdmin(WITH_TOKEN, async (repair) => {
      expect(await repair({ reason: REASON, dryRun: false })).toBe(refused);
      expect(await repair({ reason: REASON, dryRun: true })).toBe(refused);
      expect(await repair({ reason: REASON, dryRun: false }, 'not-the-token')).toBe(refused);
    });
    await withAdmin({ token: TOKEN, readonlyOpen: true }, async (repair) => {
      expect(await repair({ reason: REASON, dryRun: false })).toBe(refused);
      expect(await repair({ reason: REASON, dryRun: true })).toBe(
        repairedResponse(checkpoint, true),
      );
    });
    expect(await sumsRows()).toEqual(damaged);
    // Only the wrong token is audited (a failed attempt at the action), as for dead letters.
    expect(await auditRows()).toMatchObject([
      {
        action: 'REPAIR_LEDGER_SUMS',
        target: LEDGER_SUMS_AUDIT_TARGET,
        reason: 'wrong token',
        outcome: 'FAILED',
      },
    ]);
  });

  it('refuses a call without a reason, and writes nothing', async () => {
    await damagedSums();
    const damaged = await sumsRows();
    await withAdmin(WITH_TOKEN, async (repair) => {
      for (const reason of ['', '  ', 'ok', 'x'.repeat(501)]) {
        expect(await repair({ reason, dryRun: false }, TOKEN)).toBe(
          'INVALID_ARGUMENT reason: say why in 3-500 characters; it goes into the audit trail',
        );
      }
      expect(await repair({ reason: '', dryRun: true }, TOKEN)).toMatch(/^INVALID_ARGUMENT reason/);
    });
    expect(await sumsRows()).toEqual(damaged);
    expect(await auditRows()).toEqual([]);
  });

  it('answers a dry run without writing, then repairs, audited with what it changed', async () => {
    const checkpoint = await damagedSums();
    const damaged = await sumsRows();
    await withAdmin(WITH_TOKEN, async (repair) => {
      expect(await repair({ reason: REASON, dryRun: true }, TOKEN)).toBe(
        repairedResponse(checkpoint, true),
      );
      expect(await sumsRows()).toEqual(damaged);
      expect(await auditRows()).toEqual([]);

      expect(await repair({ reason: REASON, dryRun: false }, TOKEN)).toBe(
        repairedResponse(checkpoint, false),
      );
      expect(await ledgerSumsDrift(db, { listedMax: 100 })).toEqual(NO_LEDGER_SUMS_DRIFT);
      const [audit, ...more] = await auditRows();
      expect(more).toEqual([]);
      expect(audit).toMatchObject({
        actor: 'grpc:ops-tester',
        action: 'REPAIR_LEDGER_SUMS',
        target: LEDGER_SUMS_AUDIT_TARGET,
        reason: REASON,
        outcome: 'OK',
      });
      expect(JSON.parse(audit?.detail ?? '{}')).toEqual({
        via: 'grpc',
        checkpointEntryId: checkpoint,
        accountsChecked: 3,
        pairsRepaired: 1,
        pairs: [
          {
            account: 'psp_receivable',
            currency: 'USD',
            before: { debitMinor: '60', creditMinor: '0' },
            after: { debitMinor: '55', creditMinor: '0' },
          },
        ],
        currenciesRepaired: 0,
        currencies: [],
      });
      // Nothing left: a second repair says so.
      expect(await repair({ reason: REASON, dryRun: false }, TOKEN)).toMatch(
        /"accountSumsRepaired":"0","accountSumRepairs":\[\],"currencySumRepairs":\[\]/,
      );
    });
  });

  it('lists the first 100 currencies, counts them all, and keeps the first repairs in the audit row', async () => {
    const checkpoint = await damagedSums();
    // Rows without entries, their sums as long as they get: 105 currencies and 30 pairs of
    // 100-character accounts, all deleted by the repair.
    const longest = `-${'9'.repeat(38)}`;
    // Three characters each, in the order the answer lists them: X00 … X09, X0A … X2W.
    const code = (i: number) => `X${i.toString(36).toUpperCase().padStart(2, '0')}`;
    for (let i = 0; i < 105; i += 1) {
      await sql`INSERT INTO ledger_currency_sum VALUES (${code(i)},
                ${longest}, ${longest})`.execute(db);
    }
    for (let i = 0; i < 30; i += 1) {
      const account = `seller_payable:${String(i).padStart(2, '0')}`.padEnd(100, 'x');
      await sql`INSERT INTO ledger_account_sum VALUES (${account}, 'USD', ${longest}, ${longest})`.execute(
        db,
      );
    }
    const listed = Array.from({ length: 100 }, (_, i) => code(i));
    await withAdmin(WITH_TOKEN, async (repair) => {
      for (const dryRun of [true, false]) {
        const answer = JSON.parse(
          (await repair({ reason: REASON, dryRun }, TOKEN)).replace(/^OK /, ''),
        ) as { currencySumsRepaired: string; currencySumRepairs: Array<{ currencyCode: string }> };
        expect(answer.currencySumsRepaired).toBe('105');
        expect(answer.currencySumRepairs.map(({ currencyCode }) => currencyCode)).toEqual(listed);
      }
    });
    expect(await ledgerSumsDrift(db, { listedMax: 100 })).toEqual(NO_LEDGER_SUMS_DRIFT);
    const [audit] = await auditRows();
    const detail = JSON.parse(audit?.detail ?? '{}') as Record<string, unknown>;
    const removed = { before: { debitMinor: longest, creditMinor: longest }, after: null };
    expect(detail).toMatchObject({
      checkpointEntryId: checkpoint,
      accountsChecked: 33,
      pairsRepaired: 31,
      currenciesRepaired: 105,
      currencies: Array.from({ length: 20 }, (_, i) => ({
        currency: code(i),
        ...removed,
      })),
    });
    expect(detail.pairs).toHaveLength(20);
  });

  it('rolls the repair back when its audit row cannot be written, UNAVAILABLE and audited FAILED', async () => {
    await damagedSums();
    const damaged = await sumsRows();
    // The OK row is written in the repair's transaction: refused, it takes the repair with it.
    await sql`CREATE TRIGGER admin_audit_refuse_ok BEFORE INSERT ON admin_audit FOR EACH ROW
              IF NEW.outcome = 'OK' THEN
                SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by the test';
              END IF`.execute(db);
    let outcome: string;
    try {
      outcome = await withAdmin(WITH_TOKEN, (repair) =>
        repair({ reason: REASON, dryRun: false }, TOKEN),
      );
    } finally {
      await sql`DROP TRIGGER admin_audit_refuse_ok`.execute(db);
    }
    expect(await sumsRows()).toEqual(damaged);
    const refused =
      'the audit row of REPAIR_LEDGER_SUMS could not be written, so the action was rolled back ' +
      'and nothing of it was done; retry later';
    expect(outcome).toBe(`UNAVAILABLE ${refused}`);
    const [audit, ...more] = await auditRows();
    expect(more).toEqual([]);
    expect(audit).toMatchObject({
      action: 'REPAIR_LEDGER_SUMS',
      reason: REASON,
      outcome: 'FAILED',
    });
    expect(JSON.parse(audit?.detail ?? '{}')).toEqual({ via: 'grpc', error: refused });
  });

  it('is UNAVAILABLE, saying why, while another repair holds the checkpoint, and audited FAILED', async () => {
    await damagedSums();
    const damaged = await sumsRows();
    await withAdmin(WITH_TOKEN, async (repair) => {
      await db.transaction().execute(async (holder) => {
        await sql`SELECT upto_id FROM ledger_sum_checkpoint WHERE id = 1 FOR UPDATE`.execute(
          holder,
        );
        expect(await repair({ reason: REASON, dryRun: false }, TOKEN)).toMatch(
          /^UNAVAILABLE the running sums are being written by someone else \(another RepairLedgerSums, most likely\): .* retry once that repair has ended$/,
        );
        // A dry run locks nothing, and answers meanwhile.
        expect(await repair({ reason: REASON, dryRun: true }, TOKEN)).toMatch(/^OK /);
      });
    });
    expect(await sumsRows()).toEqual(damaged);
    expect(await auditRows()).toMatchObject([
      { action: 'REPAIR_LEDGER_SUMS', reason: REASON, outcome: 'FAILED' },
    ]);
  });

  it('answers a sum past int64 as unset rather than failing after the commit', async () => {
    const checkpoint = await damagedSums();
    await sql`UPDATE ledger_account_sum SET debit_minor = 100000000000000000000
              WHERE account = 'psp_receivable'`.execute(db);
    await withAdmin(WITH_TOKEN, async (repair) => {
      expect(await repair({ reason: REASON, dryRun: false }, TOKEN)).toBe(
        repairedResponse(checkpoint, false).replace('"debitMinor":"60",', ''),
      );
    });
    expect(await ledgerSumsDrift(db, { listedMax: 100 })).toEqual(NO_LEDGER_SUMS_DRIFT);
  });
});
