/**
 * Settlement-file discrepancies the test driver asks for. The file writer applies them when it
 * renders a day's file; the charges themselves stay untouched, so the PSP's own record of what it
 * charged never changes. One adjustment per (charge, kind); asking again replaces its amount.
 */
import { sql, type Kysely } from 'kysely';
import { createTable, type MigrationStep } from '../../../storage/migrations/steps.js';

export const steps: readonly MigrationStep[] = [
  createTable(
    `CREATE TABLE psp_settlement_adjustment (
         id             BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
         psp_reference  VARCHAR(64)  NOT NULL,
         kind           VARCHAR(16)  NOT NULL,
         amount_minor   BIGINT       NULL,
         created_at     DATETIME(3)  NOT NULL,
         UNIQUE KEY psp_settlement_adjustment_charge_kind (psp_reference, kind),
         CONSTRAINT psp_settlement_adjustment_kind CHECK (
           kind IN ('UNSETTLED', 'AMOUNT', 'DUPLICATE', 'LATE'))
       ) ENGINE=InnoDB`,
  ),
];

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql.raw('DROP TABLE IF EXISTS psp_settlement_adjustment').execute(db);
}
