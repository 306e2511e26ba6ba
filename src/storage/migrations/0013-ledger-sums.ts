/**
 * Running sums of the ledger (storage/repositories/ledger-sums.repository.ts), so that the trial
 * balance reads them and only the entries after them instead of the whole of `ledger_entry`:
 * - `ledger_sum_checkpoint`, one row: every entry with an id up to `upto_id` is counted in the
 *   sums, and no entry at most `upto_id` can still commit (the ledger's settled horizon);
 * - `ledger_account_sum`: debits and credits per (account, currency) of those entries;
 * - `ledger_currency_sum`: the same per currency, so the totals read a row per currency.
 * The sums are DECIMAL: a sum of BIGINT amounts over a ledger's life can pass BIGINT's range
 * (GetTrialBalance then answers FAILED_PRECONDITION for it, as before). The checkpoint row is
 * written by the last step; `INSERT IGNORE` makes a second run of it do nothing. SQL that MySQL
 * 8.4 and MariaDB 10.11 accept.
 */
import { sql, type Kysely } from 'kysely';
import { createTable, type MigrationStep } from './steps.js';

export const steps: readonly MigrationStep[] = [
  createTable(
    `CREATE TABLE ledger_sum_checkpoint (
        id           TINYINT      NOT NULL PRIMARY KEY,
        upto_id      BIGINT       NOT NULL,
        advanced_at  DATETIME(3)  NOT NULL,
        CONSTRAINT ledger_sum_checkpoint_one_row CHECK (id = 1)
      ) ENGINE=InnoDB`,
  ),
  createTable(
    `CREATE TABLE ledger_account_sum (
        account       VARCHAR(100)   NOT NULL,
        currency      CHAR(3)        NOT NULL,
        debit_minor   DECIMAL(38,0)  NOT NULL,
        credit_minor  DECIMAL(38,0)  NOT NULL,
        PRIMARY KEY (account, currency)
      ) ENGINE=InnoDB`,
  ),
  createTable(
    `CREATE TABLE ledger_currency_sum (
        currency      CHAR(3)        NOT NULL PRIMARY KEY,
        debit_minor   DECIMAL(38,0)  NOT NULL,
        credit_minor  DECIMAL(38,0)  NOT NULL
      ) ENGINE=InnoDB`,
  ),
  {
    sql: `INSERT IGNORE INTO ledger_sum_checkpoint (id, upto_id, advanced_at)
          VALUES (1, 0, '1970-01-01 00:00:01')`,
    alreadyDone: [],
  },
];

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql.raw('DROP TABLE ledger_currency_sum').execute(db);
  await sql.raw('DROP TABLE ledger_account_sum').execute(db);
  await sql.raw('DROP TABLE ledger_sum_checkpoint').execute(db);
}
