/**
 * Reconciliation's tables. A run is one settlement file reconciled for one day, unique by
 * (settlement_date, file_sha256), so the same file twice is one run. recon_file_row is the
 * staging table the file is loaded into (keyed by run and line) and classified set-based;
 * recon_mismatch keeps each mismatch with its evidence as JSON text; reconciliation_schedule
 * claims each day once across nodes (its primary key is the day). The extra ledger index lets a
 * run find the payments booked on its day without scanning the ledger.
 */
import { sql, type Kysely } from 'kysely';
import { AlreadyDone, createTable, type MigrationStep } from './steps.js';

const createTables = [
  `CREATE TABLE recon_run (
     id                           CHAR(30)      NOT NULL PRIMARY KEY,
     settlement_date              DATE          NOT NULL,
     file_name                    VARCHAR(255)  NOT NULL,
     file_sha256                  CHAR(64)      NOT NULL,
     state                        VARCHAR(16)   NOT NULL,
     rows_total                   BIGINT        NOT NULL DEFAULT 0,
     rows_loaded                  BIGINT        NOT NULL DEFAULT 0,
     matched_count                BIGINT        NOT NULL DEFAULT 0,
     missing_in_ledger_count      BIGINT        NOT NULL DEFAULT 0,
     missing_in_settlement_count  BIGINT        NOT NULL DEFAULT 0,
     amount_mismatch_count        BIGINT        NOT NULL DEFAULT 0,
     duplicate_count              BIGINT        NOT NULL DEFAULT 0,
     timing_count                 BIGINT        NOT NULL DEFAULT 0,
     currency                     CHAR(3)       NOT NULL DEFAULT 'USD',
     gross_minor                  BIGINT        NOT NULL DEFAULT 0,
     fee_minor                    BIGINT        NOT NULL DEFAULT 0,
     net_minor                    BIGINT        NOT NULL DEFAULT 0,
     settled_gross_minor          BIGINT        NOT NULL DEFAULT 0,
     settled_fee_minor            BIGINT        NOT NULL DEFAULT 0,
     settled_net_minor            BIGINT        NOT NULL DEFAULT 0,
     internal_check               TEXT          NULL,
     error                        VARCHAR(1024) NULL,
     attempts                     INT           NOT NULL DEFAULT 1,
     lease_owner                  VARCHAR(100)  NULL,
     lease_until                  DATETIME(3)   NOT NULL,
     created_at                   DATETIME(3)   NOT NULL,
     updated_at                   DATETIME(3)   NOT NULL,
     completed_at                 DATETIME(3)   NULL,
     UNIQUE KEY recon_run_file (settlement_date, file_sha256),
     KEY recon_run_date (settlement_date, id),
     CONSTRAINT recon_run_state CHECK (state IN ('RUNNING', 'SUCCEEDED', 'FAILED'))
   ) ENGINE=InnoDB`,
  `CREATE TABLE recon_file_row (
     run_id               CHAR(30)     NOT NULL,
     line_no              INT          NOT NULL,
     psp_reference        VARCHAR(64)  NOT NULL,
     merchant_reference   VARCHAR(64)  NOT NULL,
     type                 VARCHAR(8)   NOT NULL,
     currency             CHAR(3)      NOT NULL,
     gross_minor          BIGINT       NOT NULL,
     fee_minor            BIGINT       NOT NULL,
     net_minor            BIGINT       NOT NULL,
     batch_id             VARCHAR(64)  NOT NULL,
     created_utc          DATETIME(3)  NOT NULL,
     class                VARCHAR(24)  NULL,
     ledger_amount_minor  BIGINT       NULL,
     duplicate_of         VARCHAR(64)  NULL,
     PRIMARY KEY (run_id, line_no),
     KEY recon_file_row_merchant (merchant_reference, run_id)
   ) ENGINE=InnoDB`,
  `CREATE TABLE recon_mismatch (
     id                   BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
     run_id               CHAR(30)     NOT NULL,
     class                VARCHAR(24)  NOT NULL,
     line_no              INT          NULL,
     order_id             VARCHAR(64)  NOT NULL,
     psp_reference        VARCHAR(64)  NULL,
     file_amount_minor    BIGINT       NULL,
     ledger_amount_minor  BIGINT       NULL,
     order_state          VARCHAR(16)  NULL,
     file_row             TEXT         NULL,
     ledger_entries       TEXT         NOT NULL,
     detail               VARCHAR(255) NOT NULL,
     resolved_by_run_id   CHAR(30)     NULL,
     created_at           DATETIME(3)  NOT NULL,
     KEY recon_mismatch_run (run_id, id),
     KEY recon_mismatch_run_class (run_id, class, id),
     KEY recon_mismatch_order (order_id, class),
     KEY recon_mismatch_open (class, resolved_by_run_id),
     CONSTRAINT recon_mismatch_class CHECK (class IN ('MISSING_IN_LEDGER',
       'MISSING_IN_SETTLEMENT', 'AMOUNT_MISMATCH', 'DUPLICATE', 'TIMING'))
   ) ENGINE=InnoDB`,
  `CREATE TABLE reconciliation_schedule (
     day              DATE          NOT NULL PRIMARY KEY,
     state            VARCHAR(16)   NOT NULL,
     attempts         INT           NOT NULL DEFAULT 1,
     lease_owner      VARCHAR(100)  NULL,
     lease_until      DATETIME(3)   NOT NULL,
     next_attempt_at  DATETIME(3)   NULL,
     run_id           CHAR(30)      NULL,
     error            VARCHAR(1024) NULL,
     created_at       DATETIME(3)   NOT NULL,
     updated_at       DATETIME(3)   NOT NULL,
     CONSTRAINT reconciliation_schedule_state CHECK (
       state IN ('RUNNING', 'SUCCEEDED', 'FAILED', 'NO_FILE'))
   ) ENGINE=InnoDB`,
];

export const steps: readonly MigrationStep[] = [
  ...createTables.map(createTable),
  {
    sql: `ALTER TABLE ledger_transaction ADD KEY ledger_transaction_kind_created (kind, created_at)`,
    alreadyDone: [AlreadyDone.KEY_EXISTS],
  },
];

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql
    .raw('ALTER TABLE ledger_transaction DROP KEY ledger_transaction_kind_created')
    .execute(db);
  for (const table of [
    'reconciliation_schedule',
    'recon_mismatch',
    'recon_file_row',
    'recon_run',
  ]) {
    await sql.raw(`DROP TABLE IF EXISTS ${table}`).execute(db);
  }
}
