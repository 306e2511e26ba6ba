/**
 * settle.v1.AdminService: dead letters, payment timelines and the repair of the trial balance's
 * running sums, for operators. Guarded by ADMIN_TOKEN (bearer metadata, checked exactly as the
 * admin panel checks its header, through the same bound on wrong tokens). A node without
 * ADMIN_TOKEN refuses every call with UNAUTHENTICATED, as the panel does; only
 * ADMIN_READONLY_OPEN=true (local development) opens the reads (a dry run of the repair among
 * them), never replay, discard or a repair that writes.
 */
import type * as grpc from '@grpc/grpc-js';
import {
  InvalidArgumentError,
  NotFoundError,
  ResourceExhaustedError,
  UnauthenticatedError,
  type SettleError,
} from '../../domain/errors.js';
import {
  DEAD_LETTER_STATE,
  discardDeadLetter,
  listDeadLetterPage,
  replayDeadLetter,
  type DeadLetterDeps,
  type DeadLetterRecord,
  type DeadLetterState,
} from '../../admin/dead-letters.js';
import {
  ADMIN_ACTION,
  audited,
  auditedInTransaction,
  grpcAdminActor,
  grpcAdminReason,
  requireReason,
} from '../../admin/audit.js';
import {
  bearerToken,
  CREDENTIAL_PATH,
  tokenMatches,
  lockoutMessage,
  type AdminAuthConfig,
  type WrongTokenLimit,
} from '../../admin/auth.js';
import type { ClientResolver } from '../../admin/client-address.js';
import { deadLetterAuditTarget } from '../../admin/dead-letter-source.js';
import type { Db } from '../../storage/db.js';
import {
  repairLedgerSums,
  type LedgerSumsRepair,
  type SumAmounts,
  type SumRepair,
} from '../../storage/repositories/ledger-sums.repository.js';
import { listTransitions } from '../../storage/repositories/payment-order.repository.js';
import { findPaymentVersion } from '../../storage/repositories/payment.repository.js';
import { toUnavailable } from '../../storage/transaction.js';
import {
  ORDER_ID_EXAMPLE,
  ORDER_ID_PATTERN,
  PAYMENT_ID_EXAMPLE,
  PAYMENT_ID_PATTERN,
} from '../../domain/ids.js';
import { INT64_MAX, INT64_MIN } from '../../domain/money.js';
import { isInt64Decimal } from '../../domain/int64.js';
import { decodePageToken, encodePageToken } from '../../domain/page-token.js';
import { requireId } from '../../payments/validation.js';
import {
  DeadLetterState as DeadLetterStateProto,
  type AdminServiceServer,
  type DeadLetter as DeadLetterMessage,
  type LedgerSumAmounts,
  type RepairLedgerSumsResponse,
} from '../generated/settle/v1/admin.js';
import { unary, type AdapterOptions } from '../adapters.js';

const STATE_TO_PROTO: Record<DeadLetterState, DeadLetterStateProto> = {
  OPEN: DeadLetterStateProto.DEAD_LETTER_STATE_OPEN,
  REPLAYED: DeadLetterStateProto.DEAD_LETTER_STATE_REPLAYED,
  DISCARDED: DeadLetterStateProto.DEAD_LETTER_STATE_DISCARDED,
  RESOLVED: DeadLetterStateProto.DEAD_LETTER_STATE_RESOLVED,
};

function toProto(record: DeadLetterRecord): DeadLetterMessage {
  return {
    id: record.id,
    orderId: record.orderId ?? '',
    reason: record.reason,
    attempts: record.attempts,
    lastError: record.lastError,
    payload: record.payload,
    state: STATE_TO_PROTO[record.state],
    resolutionNote: record.resolutionNote ?? '',
    streamSequence: record.streamSequence,
    createTime: record.createdAt,
    updateTime: record.updatedAt,
  };
}

function stateFromProto(state: DeadLetterStateProto): DeadLetterState | undefined {
  switch (state) {
    case DeadLetterStateProto.DEAD_LETTER_STATE_UNSPECIFIED:
      return undefined;
    case DeadLetterStateProto.DEAD_LETTER_STATE_OPEN:
      return DEAD_LETTER_STATE.open;
    case DeadLetterStateProto.DEAD_LETTER_STATE_REPLAYED:
      return DEAD_LETTER_STATE.replayed;
    case DeadLetterStateProto.DEAD_LETTER_STATE_DISCARDED:
      return DEAD_LETTER_STATE.discarded;
    case DeadLetterStateProto.DEAD_LETTER_STATE_RESOLVED:
      return DEAD_LETTER_STATE.resolved;
    default:
      throw new InvalidArgumentError('state', `unknown dead-letter state ${String(state)}`);
  }
}

/** The admin_audit target of a repair of the running sums: their one checkpoint. */
export const LEDGER_SUMS_AUDIT_TARGET = 'ledger-sums:checkpoint';

/**
 * Repaired pairs, and currencies, an audit row lists at most: at their longest (accounts of 100
 * characters, sums of 38 digits before and after) 20 of each take some 13,000 characters, under
 * admin_audit's 16 KiB of detail, past which insertAudit keeps only `{truncated: true}` and the
 * counts and checkpoint would be lost with the lists.
 */
const AUDITED_PAIRS_MAX = 20;
const AUDITED_CURRENCIES_MAX = 20;

/** `value`, or undefined when it does not fit the response's int64 (a sum is DECIMAL(38,0)). */
function int64OrUnset(value: bigint): bigint | undefined {
  return value >= INT64_MIN && value <= INT64_MAX ? value : undefined;
}

function amountsToProto(amounts: SumAmounts | undefined): LedgerSumAmounts | undefined {
  if (amounts === undefined) return undefined;
  return {
    debitMinor: int64OrUnset(amounts.debitMinor),
    creditMinor: int64OrUnset(amounts.creditMinor),
  };
}

function repairToProto(repair: LedgerSumsRepair): RepairLedgerSumsResponse {
  return {
    checkpointEntryId: repair.uptoId.toString(),
    accountsChecked: BigInt(repair.accountsChecked),
    accountSumsRepaired: BigInt(repair.pairsRepaired),
    accountSumRepairs: repair.pairs.map((pair) => ({
      account: pair.account,
      currencyCode: pair.currency,
      before: amountsToProto(pair.before),
      after: amountsToProto(pair.after),
    })),
    currencySumRepairs: repair.currencies.map((sums) => ({
      currencyCode: sums.currency,
      before: amountsToProto(sums.before),
      after: amountsToProto(sums.after),
    })),
    dryRun: repair.dryRun,
    currencySumsRepaired: BigInt(repair.currenciesRepaired),
  };
}

/** What a repair's audit row keeps: the counts, and the first values it overwrote. */
function repairAuditDetail(repair: LedgerSumsRepair): Record<string, unknown> {
  const values = (sums: SumRepair) => ({ before: sums.before ?? null, after: sums.after ?? null });
  return {
    checkpointEntryId: repair.uptoId,
    accountsChecked: repair.accountsChecked,
    pairsRepaired: repair.pairsRepaired,
    pairs: repair.pairs
      .slice(0, AUDITED_PAIRS_MAX)
      .map((pair) => ({ account: pair.account, currency: pair.currency, ...values(pair) })),
    currenciesRepaired: repair.currenciesRepaired,
    currencies: repair.currencies
      .slice(0, AUDITED_CURRENCIES_MAX)
      .map((sums) => ({ currency: sums.currency, ...values(sums) })),
  };
}

/**
 * What admission reads of a call: its credential, and who sends it (`getPeer()`, and its
 * `x-forwarded-for` metadata when the peer is a trusted proxy).
 */
type AdminCall = Pick<grpc.ServerUnaryCall<unknown, unknown>, 'metadata' | 'getPeer'>;

type Admission =
  | Readonly<{ ok: true }>
  /** `wrongToken`: it presented a wrong token (counted by the bound; audited on an action). */
  | Readonly<{ ok: false; error: SettleError; wrongToken: boolean }>;

/** How AdminService admits a call: the same settings and bound as the admin panel's. */
export type AdminGuard = Readonly<{
  access: AdminAuthConfig;
  /** The node's bound on wrong admin tokens, shared with the admin panel. */
  wrongTokens: WrongTokenLimit;
  /** Who sends a call (TRUSTED_PROXIES), resolved as the panel resolves it. */
  clients: ClientResolver;
}>;

/**
 * Whether the call may `kind` (read or act), by the admin panel's rules (admin/auth.ts): the token
 * from ADMIN_TOKEN, and without one nobody; with ADMIN_READONLY_OPEN (local development) the reads
 * are open to anyone, the actions (replay, discard, a repair of the running sums) still need it.
 * The token is compared through the node's bound on wrong tokens as it applies to the calling
 * client (its peer address, or the address a trusted proxy forwarded): once the client's bound or
 * the node's is reached, RESOURCE_EXHAUSTED, the right token included, until its window ends.
 */
function admitAdmin(call: AdminCall, guard: AdminGuard, kind: 'read' | 'act'): Admission {
  const { access, wrongTokens, clients } = guard;
  if (kind === 'read' && access.readonlyOpen) return { ok: true };
  if (access.token === undefined) {
    return {
      ok: false,
      wrongToken: false,
      error: new UnauthenticatedError(
        'AdminService is closed on this node: it has no ADMIN_TOKEN. Start it with ADMIN_TOKEN ' +
          '(16 characters or more) and call with the metadata "authorization: Bearer <ADMIN_TOKEN>"',
      ),
    };
  }
  const missing = new UnauthenticatedError(
    'AdminService needs the metadata "authorization: Bearer <ADMIN_TOKEN>"',
  );
  const presented = bearerToken(call.metadata.get('authorization')[0]);
  if (presented === undefined) return { ok: false, wrongToken: false, error: missing };
  const client = wrongTokens.forClient(
    clients.ofGrpc(call.getPeer(), call.metadata.get('x-forwarded-for')).key,
  );
  const check = client.check(CREDENTIAL_PATH.grpc, () =>
    tokenMatches(access, presented) ? true : undefined,
  );
  switch (check.outcome) {
    case 'match':
      return { ok: true };
    case 'wrong':
      return { ok: false, wrongToken: true, error: missing };
    case 'limited':
      return {
        ok: false,
        wrongToken: false,
        error: new ResourceExhaustedError(lockoutMessage(check), { retryDelayMs: check.waitMs }),
      };
  }
}

/** Throws the refusal of admitAdmin, if any. */
export function requireAdmin(call: AdminCall, guard: AdminGuard, kind: 'read' | 'act'): void {
  const admission = admitAdmin(call, guard, kind);
  if (!admission.ok) throw admission.error;
}

export type AdminDeps = DeadLetterDeps &
  AdminGuard &
  Readonly<{
    /**
     * The pool with the bulk statement deadline (MYSQL_BULK_STATEMENT_TIMEOUT_MS), for the
     * repair of the running sums: a full scan of the ledger, as reconciliation's checks are.
     */
    bulkDb: Db;
  }>;

export function adminHandlers(deps: AdminDeps, options: AdapterOptions): AdminServiceServer {
  const guard = <T>(work: () => Promise<T>) =>
    work().catch((error: unknown) => {
      throw toUnavailable(error);
    });
  /**
   * As requireAdmin for an action; a wrong token is audited as the action FAILED (bounded: once
   * the bound is reached, tokens are no longer compared, so none is known to be wrong).
   */
  const requireActor = async (
    call: AdminCall,
    what: { action: string; target: string },
  ): Promise<void> => {
    const admission = admitAdmin(call, deps, 'act');
    if (admission.ok) return;
    if (admission.wrongToken) {
      await audited(
        deps,
        {
          actor: grpcAdminActor(call.metadata),
          reason: 'wrong token',
          action: what.action,
          target: what.target,
          via: 'grpc',
        },
        () => Promise.reject(admission.error),
      ).catch(() => undefined);
    }
    throw admission.error;
  };
  return {
    listDeadLetters: unary(async (request, call) => {
      requireAdmin(call, deps, 'read');
      if (request.pageSize < 0) throw new InvalidArgumentError('page_size', 'must not be negative');
      if (request.orderId !== '') {
        requireId('order_id', request.orderId, ORDER_ID_PATTERN, ORDER_ID_EXAMPLE);
      }
      const limit = Math.min(request.pageSize === 0 ? 20 : request.pageSize, 100);
      const state = stateFromProto(request.state);
      const filter = { state, orderId: request.orderId };
      const beforeId = decodePageToken(
        'ListDeadLetters',
        request.pageToken,
        filter,
        isInt64Decimal,
      );
      const page = await guard(() =>
        listDeadLetterPage(
          deps.db,
          {
            ...(state !== undefined ? { state } : {}),
            ...(request.orderId !== '' ? { orderId: request.orderId } : {}),
            ...(beforeId !== undefined ? { beforeId } : {}),
            limit,
          },
          'page_token',
        ),
      );
      return {
        deadLetters: page.entries.map(toProto),
        nextPageToken:
          page.nextBeforeId !== undefined
            ? encodePageToken('ListDeadLetters', page.nextBeforeId, filter)
            : '',
      };
    }, options),
    replayDeadLetter: unary(async (request, call) => {
      await requireActor(call, {
        action: ADMIN_ACTION.replayDeadLetter,
        target: deadLetterAuditTarget(request.id),
      });
      if (request.id === '') throw new InvalidArgumentError('id', 'id is required');
      const actor = grpcAdminActor(call.metadata);
      const { result } = await audited(
        deps,
        {
          actor,
          reason:
            request.reason !== '' ? requireReason(request.reason) : grpcAdminReason(call.metadata),
          action: ADMIN_ACTION.replayDeadLetter,
          target: deadLetterAuditTarget(request.id),
          via: 'grpc',
        },
        () => guard(() => replayDeadLetter(deps, request.id, actor)),
        (record) => ({ orderId: record.orderId, state: record.state }),
      );
      return { deadLetter: toProto(result) };
    }, options),
    discardDeadLetter: unary(async (request, call) => {
      await requireActor(call, {
        action: ADMIN_ACTION.discardDeadLetter,
        target: deadLetterAuditTarget(request.id),
      });
      if (request.id === '') throw new InvalidArgumentError('id', 'id is required');
      const actor = grpcAdminActor(call.metadata);
      const reason = requireReason(request.reason);
      const { result } = await audited(
        deps,
        {
          actor,
          reason,
          action: ADMIN_ACTION.discardDeadLetter,
          target: deadLetterAuditTarget(request.id),
          via: 'grpc',
        },
        () => guard(() => discardDeadLetter(deps, request.id, reason, actor)),
        (record) => ({ orderId: record.orderId, state: record.state }),
      );
      return { deadLetter: toProto(result) };
    }, options),
    repairLedgerSums: unary(async (request, call, { signal }) => {
      // A dry run only reads, as the other reads do; a repair writes the sums, and is audited.
      if (request.dryRun) requireAdmin(call, deps, 'read');
      else {
        await requireActor(call, {
          action: ADMIN_ACTION.repairLedgerSums,
          target: LEDGER_SUMS_AUDIT_TARGET,
        });
      }
      const reason = requireReason(request.reason);
      if (request.dryRun) {
        return repairToProto(
          await guard(() => repairLedgerSums(deps.bulkDb, { dryRun: true, signal })),
        );
      }
      // The OK row commits with the repair: the values it overwrote are kept exactly when it
      // happened, even for a caller whose deadline passed during the commit.
      const { result } = await auditedInTransaction(
        deps,
        {
          actor: grpcAdminActor(call.metadata),
          reason,
          action: ADMIN_ACTION.repairLedgerSums,
          target: LEDGER_SUMS_AUDIT_TARGET,
          via: 'grpc',
        },
        (auditOk) =>
          guard(() =>
            repairLedgerSums(deps.bulkDb, { dryRun: false, signal, beforeCommit: auditOk }),
          ),
        repairAuditDetail,
      );
      return repairToProto(result);
    }, options),
    getPaymentTimeline: unary(async (request, call) => {
      requireAdmin(call, deps, 'read');
      requireId('payment_id', request.paymentId, PAYMENT_ID_PATTERN, PAYMENT_ID_EXAMPLE);
      if ((await guard(() => findPaymentVersion(deps.db, request.paymentId))) === undefined) {
        throw new NotFoundError('payment', request.paymentId);
      }
      const rows = await guard(() => listTransitions(deps.db, request.paymentId));
      return {
        entries: rows.map((row) => ({
          orderId: row.orderId,
          version: row.version,
          fromState: row.fromState,
          toState: row.toState,
          eventType: row.eventType,
          detail: row.detail,
          createTime: row.createdAt,
        })),
      };
    }, options),
  };
}
