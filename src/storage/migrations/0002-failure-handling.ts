/**
 * Failure handling: the dead-letter table (commands that exhausted their retries or can never
 * succeed, kept for replay or discard), and the janitor's lease on orders (so only one janitor
 * pass acts on an order at a time, whatever the number of nodes).
 */
import { sql, type Kysely } from 'kysely';
import { AlreadyDone, createTable, type MigrationStep } from './steps.js';

export const steps: readonly MigrationStep[] = [
  createTable(`CREATE TABLE dead_letter (
     id               BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
     dedupe_key       VARCHAR(150) NOT NULL,
     stream_sequence  BIGINT       NOT NULL,
     order_id         CHAR(30)     NULL,
     subject          VARCHAR(200) NOT NULL,
     reason           VARCHAR(64)  NOT NULL,
     attempts         INT          NOT NULL,
     last_error       TEXT         NOT NULL,
     payload          TEXT         NOT NULL,
     state            VARCHAR(16)  NOT NULL DEFAULT 'OPEN',
     resolution_note  TEXT         NULL,
     created_at       DATETIME(3)  NOT NULL,
     updated_at       DATETIME(3)  NOT NULL,
     UNIQUE KEY dead_letter_dedupe (dedupe_key),
     KEY dead_letter_state (state, id),
     KEY dead_letter_order (order_id),
     CONSTRAINT dead_letter_state_known CHECK (state IN ('OPEN', 'REPLAYED', 'DISCARDED'))
   ) ENGINE=InnoDB`),
  {
    sql: `ALTER TABLE payment_order
     ADD COLUMN janitor_lease_until DATETIME(3) NULL,
     ADD COLUMN janitor_owner VARCHAR(64) NULL,
     ADD KEY payment_order_state_created (state, created_at),
     ADD KEY payment_order_janitor_owner (janitor_owner)`,
    alreadyDone: [AlreadyDone.COLUMN_EXISTS, AlreadyDone.KEY_EXISTS],
  },
];

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql.raw('DROP TABLE IF EXISTS dead_letter').execute(db);
  await sql
    .raw(
      `ALTER TABLE payment_order DROP KEY payment_order_janitor_owner,
       DROP KEY payment_order_state_created, DROP COLUMN janitor_owner, DROP COLUMN janitor_lease_until`,
    )
    .execute(db);
}
