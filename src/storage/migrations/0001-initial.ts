/**
 * Settle's tables. Written in the SQL both MySQL 8.4 and MariaDB 10.11 accept. Money is BIGINT
 * minor units; every input that can repeat has a unique key (idempotency key, inbox event id,
 * ledger entry per order and kind, outbox message id).
 */
import { sql, type Kysely } from 'kysely';
import { createTable, type MigrationStep } from './steps.js';

const createTables = [
  `CREATE TABLE idempotency_key (
     buyer_id      VARCHAR(64)  NOT NULL,
     request_id    CHAR(36)     NOT NULL,
     request_hash  CHAR(64)     NOT NULL,
     state         VARCHAR(16)  NOT NULL,
     payment_id    CHAR(30)     NULL,
     lease_until   DATETIME(3)  NOT NULL,
     created_at    DATETIME(3)  NOT NULL,
     PRIMARY KEY (buyer_id, request_id),
     KEY idempotency_key_created (created_at),
     CONSTRAINT idempotency_key_state CHECK (state IN ('IN_FLIGHT', 'COMPLETED'))
   ) ENGINE=InnoDB`,
  `CREATE TABLE payment (
     id                CHAR(30)     NOT NULL PRIMARY KEY,
     buyer_id          VARCHAR(64)  NOT NULL,
     request_id        CHAR(36)     NOT NULL,
     currency          CHAR(3)      NOT NULL,
     amount_minor      BIGINT       NOT NULL,
     state             VARCHAR(24)  NOT NULL,
     failure_reason    VARCHAR(64)  NULL,
     orders_total      INT          NOT NULL,
     orders_succeeded  INT          NOT NULL DEFAULT 0,
     orders_failed     INT          NOT NULL DEFAULT 0,
     version           BIGINT       NOT NULL DEFAULT 0,
     created_at        DATETIME(3)  NOT NULL,
     updated_at        DATETIME(3)  NOT NULL,
     KEY payment_buyer (buyer_id, id),
     KEY payment_state (state, id),
     CONSTRAINT payment_amount_positive CHECK (amount_minor > 0),
     CONSTRAINT payment_counts CHECK (orders_succeeded + orders_failed <= orders_total)
   ) ENGINE=InnoDB`,
  `CREATE TABLE payment_order (
     id              CHAR(30)     NOT NULL PRIMARY KEY,
     payment_id      CHAR(30)     NOT NULL,
     seq             INT          NOT NULL,
     seller_id       VARCHAR(64)  NOT NULL,
     amount_minor    BIGINT       NOT NULL,
     currency        CHAR(3)      NOT NULL,
     state           VARCHAR(16)  NOT NULL,
     version         BIGINT       NOT NULL DEFAULT 0,
     psp_token       VARCHAR(128) NULL,
     checkout_url    VARCHAR(512) NULL,
     psp_reference   VARCHAR(64)  NULL,
     failure_reason  VARCHAR(64)  NULL,
     attempts        INT          NOT NULL DEFAULT 0,
     review_reason   VARCHAR(64)  NULL,
     created_at      DATETIME(3)  NOT NULL,
     updated_at      DATETIME(3)  NOT NULL,
     UNIQUE KEY payment_order_payment_seq (payment_id, seq),
     KEY payment_order_seller (seller_id, id),
     KEY payment_order_state (state, updated_at),
     CONSTRAINT payment_order_amount CHECK (amount_minor > 0 AND amount_minor <= 1000000000000)
   ) ENGINE=InnoDB`,
  `CREATE TABLE payment_order_transition (
     id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
     order_id    CHAR(30)     NOT NULL,
     payment_id  CHAR(30)     NOT NULL,
     version     BIGINT       NOT NULL,
     from_state  VARCHAR(16)  NOT NULL,
     to_state    VARCHAR(16)  NOT NULL,
     event_type  VARCHAR(40)  NOT NULL,
     detail      TEXT         NOT NULL,
     created_at  DATETIME(3)  NOT NULL,
     UNIQUE KEY payment_order_transition_version (order_id, version),
     KEY payment_order_transition_payment (payment_id, id)
   ) ENGINE=InnoDB`,
  `CREATE TABLE ledger_transaction (
     id            CHAR(30)     NOT NULL PRIMARY KEY,
     order_id      CHAR(30)     NOT NULL,
     kind          VARCHAR(32)  NOT NULL,
     currency      CHAR(3)      NOT NULL,
     amount_minor  BIGINT       NOT NULL,
     created_at    DATETIME(3)  NOT NULL,
     UNIQUE KEY ledger_transaction_order_kind (order_id, kind),
     CONSTRAINT ledger_transaction_amount CHECK (amount_minor > 0)
   ) ENGINE=InnoDB`,
  `CREATE TABLE ledger_entry (
     id              BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
     transaction_id  CHAR(30)     NOT NULL,
     account         VARCHAR(100) NOT NULL,
     order_id        CHAR(30)     NOT NULL,
     kind            VARCHAR(32)  NOT NULL,
     currency        CHAR(3)      NOT NULL,
     debit_minor     BIGINT       NOT NULL DEFAULT 0,
     credit_minor    BIGINT       NOT NULL DEFAULT 0,
     created_at      DATETIME(3)  NOT NULL,
     UNIQUE KEY ledger_entry_order_kind (order_id, kind),
     KEY ledger_entry_account (account, id),
     KEY ledger_entry_transaction (transaction_id),
     CONSTRAINT ledger_entry_one_side CHECK (
       debit_minor >= 0 AND credit_minor >= 0 AND (debit_minor = 0 OR credit_minor = 0)
       AND debit_minor + credit_minor > 0)
   ) ENGINE=InnoDB`,
  `CREATE TABLE wallet (
     seller_id      VARCHAR(64)  NOT NULL PRIMARY KEY,
     currency       CHAR(3)      NOT NULL,
     balance_minor  BIGINT       NOT NULL DEFAULT 0,
     version        BIGINT       NOT NULL DEFAULT 0,
     updated_at     DATETIME(3)  NOT NULL
   ) ENGINE=InnoDB`,
  `CREATE TABLE outbox (
     id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
     subject     VARCHAR(200) NOT NULL,
     msg_id      VARCHAR(100) NOT NULL,
     payload     TEXT         NOT NULL,
     created_at  DATETIME(3)  NOT NULL,
     UNIQUE KEY outbox_msg_id (msg_id)
   ) ENGINE=InnoDB`,
  `CREATE TABLE inbox (
     source       VARCHAR(16)  NOT NULL,
     event_id     VARCHAR(100) NOT NULL,
     order_id     CHAR(30)     NOT NULL,
     received_at  DATETIME(3)  NOT NULL,
     PRIMARY KEY (source, event_id),
     KEY inbox_received (received_at)
   ) ENGINE=InnoDB`,
];

export const steps: readonly MigrationStep[] = createTables.map(createTable);

export async function down(db: Kysely<unknown>): Promise<void> {
  for (const table of [
    'inbox',
    'outbox',
    'wallet',
    'ledger_entry',
    'ledger_transaction',
    'payment_order_transition',
    'payment_order',
    'payment',
    'idempotency_key',
  ]) {
    await sql.raw(`DROP TABLE IF EXISTS ${table}`).execute(db);
  }
}
