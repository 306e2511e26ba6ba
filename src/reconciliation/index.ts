/** Public API of the reconciliation module: what src/app.ts, the handlers and the tests need. */
export { compare, RECONCILIATION_CLASS, type ReconciliationClass } from './compare.js';
export {
  purgeExpiredStaging,
  ReconciliationService,
  resolveSettlementFile,
  type ReconciliationEvent,
  type ReconciliationOptions,
  type RunPhase,
  type RunSource,
} from './reconciliation.service.js';
export {
  failedInternalChecks,
  listMismatches,
  listRuns,
  type InternalCheck,
  type Mismatch,
  type Run,
} from './reconciliation.repository.js';
export { RUN_STATE, SCHEDULE_STATE } from './reconciliation.table.js';
export {
  listScheduledDays,
  ReconciliationSchedule,
  type ScheduledDay,
  type ScheduleOutcome,
} from './schedule.js';
export {
  MalformedSettlementFileError,
  SETTLEMENT_HEADER,
  readSettlementFile,
  scanSettlementFile,
  type SettlementRow,
} from './settlement-file.js';
