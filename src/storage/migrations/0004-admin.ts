/**
 * The operator surface's tables: `admin_audit` records every admin action (who, what, on which
 * target, why, when, and how it ended). An index on inbox.order_id lets the admin panel show the
 * webhooks of one order without scanning the inbox. SQL that MySQL 8.4 and MariaDB 10.11 accept.
 */
import { sql, type Kysely } from 'kysely';
import { AlreadyDone, createTable, type MigrationStep } from './steps.js';

export const steps: readonly MigrationStep[] = [
  createTable(`CREATE TABLE admin_audit (
     id          BIGINT        NOT NULL AUTO_INCREMENT PRIMARY KEY,
     actor       VARCHAR(64)   NOT NULL,
     action      VARCHAR(40)   NOT NULL,
     target      VARCHAR(128)  NOT NULL,
     reason      VARCHAR(500)  NOT NULL,
     outcome     VARCHAR(16)   NOT NULL,
     detail      TEXT          NOT NULL,
     created_at  DATETIME(3)   NOT NULL,
     KEY admin_audit_target (target, id),
     KEY admin_audit_created (created_at),
     CONSTRAINT admin_audit_outcome CHECK (outcome IN ('OK', 'FAILED'))
   ) ENGINE=InnoDB`),
  { sql: `CREATE INDEX inbox_order ON inbox (order_id)`, alreadyDone: [AlreadyDone.KEY_EXISTS] },
];

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql.raw('DROP INDEX inbox_order ON inbox').execute(db);
  await sql.raw('DROP TABLE IF EXISTS admin_audit').execute(db);
}
