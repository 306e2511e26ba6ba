/**
 * POST /webhooks/psp: the PSP's signed payment results. The signature is checked on the raw body's
 * bytes (HMAC-SHA256 over "timestamp.body", bounded clock skew) before anything is decoded or
 * parsed; a signed body that is not UTF-8 is then refused.
 *
 * The fast way: the order's actor on this node applies the event at once, and the event id goes
 * into the inbox in the same transaction as the transition. Any other outcome (no change, a
 * duplicate, an unknown order, an illegal event, a busy or slow actor) takes the durable way:
 * ONE transaction records the event id in the inbox (a duplicate ends there with 200) and writes
 * the PspResult command to the outbox, which JetStream carries to the order's actor with retries
 * and a dead-letter queue. A fast attempt that ran out of time may still commit: the durable way
 * then finds the inbox row it wrote, and the answer says the event was applied, not repeated
 * (FastApply). An order Settle does not know ends there, dead-lettered for review:
 * a signed charge is never dropped, and a 404 would only have the PSP retry it for days. Both ways
 * answer 200 only after a commit. A signed event of a type Settle does not handle is answered 200
 * (`ignored`) with nothing written, so the PSP stops sending it. Answers: 200 accepted, duplicate
 * or ignored, 400
 * unsigned/forged/stale/malformed, 404 a nonce that is not a Settle order id (meant for someone
 * else), 413 too large, 503 when the database is down (the PSP retries). Error answers carry the
 * REST twin's body (router.ts errorResponse) and the exchange's x-request-id.
 */
import { ORDER_ID_PATTERN } from '../domain/ids.js';
import {
  NotFoundError,
  ResourceExhaustedError,
  UnauthenticatedError,
  UnavailableError,
  type SettleError,
} from '../domain/errors.js';
import type { Names } from '../messaging/subjects.js';
import { pspWebhookEventSchema, unhandledEventType, verifyWebhook } from '../psp/webhook.js';
import type { Db } from '../storage/db.js';
import { toUnavailable } from '../storage/transaction.js';
import { firstDuplicateKey } from './strict-json.js';
import { recordWebhookEvent, type Recorded, type WebhookEvent } from './webhook-inbox.js';
import { errorResponse, HttpInputError, json, type Route } from './router.js';

export const WEBHOOK_PATH = '/webhooks/psp';

/**
 * Why the route refused a webhook: a closed set, so it can label a metric. A refused signature is
 * one of them, whatever verifyWebhook's SIGNATURE_REJECTION was.
 */
export const WEBHOOK_REJECTION = {
  signatureRejected: 'SIGNATURE_REJECTED',
  notUtf8: 'NOT_UTF8',
  malformedJson: 'MALFORMED_JSON',
  notAPspEvent: 'NOT_A_PSP_EVENT',
  unknownOrderId: 'UNKNOWN_ORDER_ID',
  /** Answered 503, for the PSP to retry: MySQL unreachable, or too many webhooks being recorded. */
  unavailable: 'UNAVAILABLE',
} as const;
export type WebhookRejection = (typeof WEBHOOK_REJECTION)[keyof typeof WEBHOOK_REJECTION];

/**
 * How an accepted webhook went, decided here once: it labels a metric and the log line, and the
 * answer's `duplicate` is true for `duplicate` alone. `applied`: the fast way committed within
 * its wait; `applied_late`: the fast way committed after it, and the durable way found the inbox
 * row it wrote (FastApply), so a first delivery is not taken for a repeat; `queued`: recorded for
 * the durable way; `duplicate`: the event was already recorded.
 */
export const WEBHOOK_WAY = {
  applied: 'applied',
  appliedLate: 'applied_late',
  queued: 'queued',
  duplicate: 'duplicate',
} as const;
export type WebhookWay = (typeof WEBHOOK_WAY)[keyof typeof WEBHOOK_WAY];
const WEBHOOK_BODY_BYTES_MAX = 64 * 1024;
/** Refuses bytes that are not UTF-8 rather than replacing them, so the text is what was signed. */
const UTF8 = new TextDecoder('utf-8', { fatal: true });

/**
 * The fast way's attempt at one event. `applied`: the event changed its order and its inbox row
 * committed with the transition within the wait; the durable way is skipped. Otherwise the event
 * goes the durable way, which may find the event already recorded because this very attempt,
 * too slow for its wait, wrote the inbox row and committed before or while the durable way
 * looked (its INSERT waits on the row's lock until then). `appliedLate` tells that apart from a
 * real duplicate: true once the attempt committed the transition with this event's inbox row
 * after all. It waits a bounded time for the attempt (false past it) and never rejects.
 */
export type FastApply = Readonly<
  { applied: true } | { applied: false; appliedLate: () => Promise<boolean> }
>;

/**
 * A signature refused: UNAUTHENTICATED, but answered 400 rather than 401, as the PSP's contract
 * and Stripe's receivers do (a 401 would ask for credentials this endpoint does not take).
 */
class SignatureRejectedError extends UnauthenticatedError {
  readonly reason = 'SIGNATURE_REJECTED';
  readonly httpStatus = 400;
}

export type WebhookRouteDeps = Readonly<{
  db: Db;
  names: Names;
  secret: string;
  /** Accepted beside `secret` during a rotation (PSP_WEBHOOK_SECRET_PREVIOUS). */
  previousSecret?: string | undefined;
  toleranceS: number;
  wakeRelay: () => void;
  now: () => Date;
  /**
   * A webhook refused, nothing written (4xx, or 503 for the PSP to retry): `rejection` names why,
   * `message` says it as the answer does.
   */
  onRejected?: (rejected: {
    rejection: WebhookRejection;
    message: string;
    requestId: string;
  }) => void;
  /** A signed event of a type Settle does not handle: answered 200, nothing written. */
  onIgnored?: (event: { type: string; requestId: string }) => void;
  /** `ms`: from the request's arrival to its answer, the commit included. */
  onAccepted?: (event: {
    eventId: string;
    /** The exchange's x-request-id (or the one the router made), as every request line has. */
    requestId: string;
    orderId: string;
    way: WebhookWay;
    /** Recorded for an order that does not exist: it will be dead-lettered for review. */
    unknownOrder: boolean;
    ms: number;
  }) => void;
  /** Records the event (group commit, see webhook-inbox.ts); one transaction each when unset. */
  record?: (event: WebhookEvent) => Promise<Recorded>;
  /** The fast way (see FastApply); never rejects. Unset: always the durable way. */
  apply?: (event: WebhookEvent) => Promise<FastApply>;
}>;

export function webhookRoute(deps: WebhookRouteDeps): Route {
  return {
    method: 'POST',
    path: WEBHOOK_PATH,
    handle: async (request) => {
      const reject = (rejection: WebhookRejection, error: SettleError) => {
        deps.onRejected?.({
          rejection,
          message: `${error.code}: ${error.message}`,
          requestId: request.requestId,
        });
        return errorResponse(error, request.requestId);
      };
      const started = performance.now();
      const raw = await request.body(WEBHOOK_BODY_BYTES_MAX);
      const header = request.headers['psp-signature'];
      const verdict = verifyWebhook({
        secret: deps.secret,
        previousSecret: deps.previousSecret,
        rawBody: raw,
        header: typeof header === 'string' ? header : undefined,
        nowS: Math.floor(deps.now().getTime() / 1000),
        toleranceS: deps.toleranceS,
      });
      if (!verdict.ok) {
        return reject(
          WEBHOOK_REJECTION.signatureRejected,
          new SignatureRejectedError(`webhook signature rejected: ${verdict.reason}`),
        );
      }
      let text: string;
      try {
        text = UTF8.decode(raw);
      } catch {
        return reject(
          WEBHOOK_REJECTION.notUtf8,
          new HttpInputError('body', 'is not UTF-8', 'NOT_UTF8'),
        );
      }
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch {
        return reject(
          WEBHOOK_REJECTION.malformedJson,
          new HttpInputError('body', 'is not JSON', 'MALFORMED_JSON'),
        );
      }
      // Signed, yet ambiguous: which of two values the PSP meant is not ours to guess.
      const duplicate = firstDuplicateKey(text);
      if (duplicate !== undefined) {
        return reject(
          WEBHOOK_REJECTION.malformedJson,
          new HttpInputError(
            duplicate.field,
            'appears twice in one object; the event is ambiguous and was not applied',
            'MALFORMED_JSON',
          ),
        );
      }
      // A signed event of a type Settle does not handle is the PSP's to send, not a fault: any
      // answer but a 2xx has the PSP retry it for days (and a real PSP disables an endpoint that
      // keeps failing), so it is acknowledged and nothing is written.
      const unhandled = unhandledEventType(body);
      if (unhandled !== undefined) {
        deps.onIgnored?.({ type: unhandled.slice(0, 64), requestId: request.requestId });
        return json(200, { received: true, duplicate: false, ignored: true });
      }
      const parsed = pspWebhookEventSchema.safeParse(body);
      if (!parsed.success) {
        const issue = parsed.error.issues[0];
        const where =
          issue === undefined || issue.path.length === 0 ? '' : `${issue.path.join('.')}: `;
        return reject(
          WEBHOOK_REJECTION.notAPspEvent,
          new HttpInputError(
            'body',
            `is not a PSP event: ${where}${issue?.message ?? ''}`,
            'NOT_A_PSP_EVENT',
          ),
        );
      }
      const event = parsed.data;
      const orderId = event.data.nonce;
      try {
        if (!ORDER_ID_PATTERN.test(orderId)) {
          return reject(
            WEBHOOK_REJECTION.unknownOrderId,
            new NotFoundError('payment order', orderId.slice(0, 64)),
          );
        }
        const webhookEvent: WebhookEvent = {
          eventId: event.id,
          orderId,
          outcome: event.type === 'payment.succeeded' ? 'SUCCEEDED' : 'DECLINED',
          pspReference: event.data.psp_reference ?? null,
          amountMinor: event.data.amount_minor.toString(),
          declineCode: event.data.decline_code ?? null,
          token: event.data.token,
          currency: event.data.currency,
          now: deps.now(),
        };
        const attempt = await deps.apply?.(webhookEvent);
        if (attempt?.applied === true) {
          deps.onAccepted?.({
            eventId: event.id,
            requestId: request.requestId,
            orderId,
            way: WEBHOOK_WAY.applied,
            unknownOrder: false,
            ms: performance.now() - started,
          });
          return json(200, { received: true, duplicate: false });
        }
        const recorded = await (deps.record?.(webhookEvent) ??
          recordWebhookEvent(deps.db, deps.names, webhookEvent));
        const fresh = recorded !== 'duplicate';
        if (fresh) deps.wakeRelay();
        // The row the durable way found may be this delivery's own, written by its slow attempt:
        // the first delivery of an event must not be answered (and counted) as a repeat.
        const late = !fresh && attempt !== undefined && (await attempt.appliedLate());
        const way = late
          ? WEBHOOK_WAY.appliedLate
          : fresh
            ? WEBHOOK_WAY.queued
            : WEBHOOK_WAY.duplicate;
        deps.onAccepted?.({
          eventId: event.id,
          requestId: request.requestId,
          orderId,
          way,
          unknownOrder: recorded === 'unknown-order',
          ms: performance.now() - started,
        });
        return json(200, { received: true, duplicate: way === WEBHOOK_WAY.duplicate });
      } catch (error) {
        const mapped = toUnavailable(error);
        if (mapped instanceof UnavailableError)
          return reject(WEBHOOK_REJECTION.unavailable, mapped);
        // A full group-commit queue is back-pressure: the PSP retries, as for a database outage.
        if (mapped instanceof ResourceExhaustedError) {
          return reject(
            WEBHOOK_REJECTION.unavailable,
            new UnavailableError('too many webhooks being recorded; retry later', { cause: error }),
          );
        }
        throw mapped;
      }
    },
  };
}
