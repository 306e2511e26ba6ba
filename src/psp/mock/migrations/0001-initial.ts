/**
 * The PSP mock's tables, in SQL that both MySQL 8.4 and MariaDB 10.11 accept. The unique keys are
 * the mock's idempotency: one payment per nonce and per token, one charge per psp_reference, one
 * outbox row per (event, delivery). One step per table (storage/migrations/steps.ts).
 */
import { sql, type Kysely } from 'kysely';
import { createTable, type MigrationStep } from '../../../storage/migrations/steps.js';

export const steps: readonly MigrationStep[] = [
  `CREATE TABLE psp_payment (
     id                BIGINT        NOT NULL AUTO_INCREMENT PRIMARY KEY,
     nonce             VARCHAR(64)   NOT NULL,
     token             VARCHAR(64)   NOT NULL,
     amount_minor      BIGINT        NOT NULL,
     currency          CHAR(3)       NOT NULL,
     status            VARCHAR(16)   NOT NULL,
     psp_reference     VARCHAR(64)   NULL,
     decline_code      VARCHAR(64)   NULL,
     notification_url  VARCHAR(2048) NOT NULL,
     created_at        DATETIME(3)   NOT NULL,
     updated_at        DATETIME(3)   NOT NULL,
     UNIQUE KEY psp_payment_nonce (nonce),
     UNIQUE KEY psp_payment_token (token),
     CONSTRAINT psp_payment_amount CHECK (amount_minor > 0 AND amount_minor <= 1000000000000),
     CONSTRAINT psp_payment_status CHECK (
       status IN ('REGISTERED', 'SUCCEEDED', 'DECLINED', 'CANCELLED'))
   ) ENGINE=InnoDB`,
  `CREATE TABLE psp_charge (
     id             BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
     psp_reference  VARCHAR(64)  NOT NULL,
     nonce          VARCHAR(64)  NOT NULL,
     amount_minor   BIGINT       NOT NULL,
     currency       CHAR(3)      NOT NULL,
     created_at     DATETIME(3)  NOT NULL,
     UNIQUE KEY psp_charge_reference (psp_reference),
     KEY psp_charge_nonce (nonce),
     KEY psp_charge_created (created_at),
     CONSTRAINT psp_charge_amount CHECK (amount_minor > 0)
   ) ENGINE=InnoDB`,
  `CREATE TABLE psp_webhook (
     id               BIGINT        NOT NULL AUTO_INCREMENT PRIMARY KEY,
     event_id         VARCHAR(64)   NOT NULL,
     delivery         INT           NOT NULL,
     nonce            VARCHAR(64)   NOT NULL,
     url              VARCHAR(2048) NOT NULL,
     body             TEXT          NOT NULL,
     attempts         INT           NOT NULL DEFAULT 0,
     next_attempt_at  DATETIME(3)   NOT NULL,
     delivered_at     DATETIME(3)   NULL,
     given_up_at      DATETIME(3)   NULL,
     last_error       VARCHAR(512)  NULL,
     created_at       DATETIME(3)   NOT NULL,
     UNIQUE KEY psp_webhook_event_delivery (event_id, delivery),
     KEY psp_webhook_pending (delivered_at, given_up_at, next_attempt_at),
     KEY psp_webhook_nonce (nonce, id)
   ) ENGINE=InnoDB`,
].map(createTable);

export async function down(db: Kysely<unknown>): Promise<void> {
  for (const table of ['psp_webhook', 'psp_charge', 'psp_payment']) {
    await sql.raw(`DROP TABLE IF EXISTS ${table}`).execute(db);
  }
}
