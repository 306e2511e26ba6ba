/**
 * settle.v1.AdminService: dead letters and payment timelines for operators. Guarded by
 * ADMIN_TOKEN (bearer metadata, checked exactly as the admin panel checks its header). A node
 * without ADMIN_TOKEN refuses every call with UNAUTHENTICATED, as the panel does; only
 * ADMIN_READONLY_OPEN=true (local development) opens the reads, never replay or discard.
 */
import type * as grpc from '@grpc/grpc-js';
import { InvalidArgumentError, NotFoundError, UnauthenticatedError } from '../../domain/errors.js';
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
  grpcAdminActor,
  grpcAdminReason,
  requireReason,
} from '../../admin/audit.js';
import { bearerToken, tokenMatches, type AdminAuthConfig } from '../../admin/auth.js';
import { deadLetterAuditTarget } from '../../admin/dead-letter-source.js';
import { listTransitions } from '../../storage/repositories/payment-order.repository.js';
import { findPaymentVersion } from '../../storage/repositories/payment.repository.js';
import { toUnavailable } from '../../storage/transaction.js';
import { PAYMENT_ID_EXAMPLE, PAYMENT_ID_PATTERN } from '../../domain/ids.js';
import { decodePageToken, encodePageToken } from '../../domain/page-token.js';
import { requireId } from '../../payments/validation.js';
import {
  DeadLetterState as DeadLetterStateProto,
  type AdminServiceServer,
  type DeadLetter as DeadLetterMessage,
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

/**
 * Throws UnauthenticatedError unless the call may `kind` (read or act), by the admin panel's rules
 * (admin/auth.ts): the token from ADMIN_TOKEN, and without one nobody; with ADMIN_READONLY_OPEN
 * (local development) the reads are open to anyone, the actions (replay, discard) still need it.
 */
export function requireAdmin(
  metadata: grpc.Metadata,
  access: AdminAuthConfig,
  kind: 'read' | 'act',
): void {
  if (kind === 'read' && access.readonlyOpen) return;
  if (access.token === undefined) {
    throw new UnauthenticatedError(
      'AdminService is closed on this node: it has no ADMIN_TOKEN. Start it with ADMIN_TOKEN ' +
        '(16 characters or more) and call with the metadata "authorization: Bearer <ADMIN_TOKEN>"',
    );
  }
  const presented = bearerToken(metadata.get('authorization')[0]);
  if (presented === undefined || !tokenMatches(access, presented)) {
    throw new UnauthenticatedError(
      'AdminService needs the metadata "authorization: Bearer <ADMIN_TOKEN>"',
    );
  }
}

export function adminHandlers(
  deps: DeadLetterDeps & { access: AdminAuthConfig },
  options: AdapterOptions,
): AdminServiceServer {
  const guard = <T>(work: () => Promise<T>) =>
    work().catch((error: unknown) => {
      throw toUnavailable(error);
    });
  return {
    listDeadLetters: unary(async (request, call) => {
      requireAdmin(call.metadata, deps.access, 'read');
      if (request.pageSize < 0) throw new InvalidArgumentError('page_size', 'must not be negative');
      const limit = Math.min(request.pageSize === 0 ? 20 : request.pageSize, 100);
      const state = stateFromProto(request.state);
      const filter = { state, orderId: request.orderId };
      const beforeId = decodePageToken(request.pageToken, filter, /^\d{1,19}$/);
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
          page.nextBeforeId !== undefined ? encodePageToken(page.nextBeforeId, filter) : '',
      };
    }, options),
    replayDeadLetter: unary(async (request, call) => {
      requireAdmin(call.metadata, deps.access, 'act');
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
      requireAdmin(call.metadata, deps.access, 'act');
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
    getPaymentTimeline: unary(async (request, call) => {
      requireAdmin(call.metadata, deps.access, 'read');
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
