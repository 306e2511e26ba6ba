/**
 * settle.v1.WalletService and settle.v1.LedgerService: read-only views of wallets and the ledger.
 */
import {
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  UnavailableError,
} from '../../domain/errors.js';
import { ORDER_ID_EXAMPLE, ORDER_ID_PATTERN, PARTY_ID_PATTERN } from '../../domain/ids.js';
import { INT64_MAX } from '../../domain/money.js';
import { requireId } from '../../payments/validation.js';
import { isInt64Decimal } from '../../domain/int64.js';
import { decodePageToken, encodePageToken } from '../../domain/page-token.js';
import type { Db } from '../../storage/db.js';
import {
  findSettledHead,
  LEDGER_HORIZON_DEFAULTS,
  listSettledLedgerEntries,
  type LedgerHorizonOptions,
} from '../../storage/repositories/ledger-horizon.repository.js';
import {
  LEDGER_SUMS_DEFAULTS,
  ledgerSumsCheckpoint,
  trialBalancePage,
  trialBalanceTotals,
} from '../../storage/repositories/ledger-sums.repository.js';
import {
  findWallet,
  isLedgerAccount,
  LEDGER_ACCOUNT_SHAPE,
  trialBalancePageAfter,
  trialBalancePageToken,
  type AccountBalance,
} from '../../storage/repositories/ledger.repository.js';
import { toUnavailable } from '../../storage/transaction.js';
import type {
  LedgerServiceServer,
  WalletServiceServer,
  AccountBalance as AccountBalanceMessage,
} from '../generated/settle/v1/wallet.js';
import { unary, type AdapterOptions } from '../adapters.js';

/** Accounts per GetTrialBalance page when the request says 0, and at most. */
const TRIAL_BALANCE_PAGE_SIZE_DEFAULT = 100;
const TRIAL_BALANCE_PAGE_SIZE_MAX = 500;

export function walletHandlers(db: Db, options: AdapterOptions): WalletServiceServer {
  return {
    getWallet: unary(async (request) => {
      if (request.sellerId === '')
        throw new InvalidArgumentError('seller_id', 'seller_id is required');
      if (!PARTY_ID_PATTERN.test(request.sellerId)) {
        throw new InvalidArgumentError(
          'seller_id',
          'must be 1-64 characters of letters, digits and _.:@-',
        );
      }
      const wallet = await findWallet(db, request.sellerId).catch(rethrow);
      if (wallet === undefined) throw new NotFoundError('wallet of seller', request.sellerId);
      return {
        wallet: {
          sellerId: wallet.sellerId,
          currencyCode: wallet.currency,
          balanceMinor: wallet.balanceMinor,
          updateTime: wallet.updatedAt,
        },
      };
    }, options),
  };
}

/**
 * `horizon`: how ListEntries finds where its pages must end for a caller tailing the ledger
 * (storage/repositories/ledger-horizon.repository.ts); its settle window follows
 * MYSQL_LOCK_WAIT_TIMEOUT_S.
 */
export function ledgerHandlers(
  db: Db,
  options: AdapterOptions,
  horizon: LedgerHorizonOptions = LEDGER_HORIZON_DEFAULTS,
): LedgerServiceServer {
  return {
    listEntries: unary(async (request) => {
      if (request.pageSize < 0) throw new InvalidArgumentError('page_size', 'must not be negative');
      if (request.orderId !== '') {
        requireId('order_id', request.orderId, ORDER_ID_PATTERN, ORDER_ID_EXAMPLE);
      }
      if (request.account !== '' && !isLedgerAccount(request.account)) {
        throw new InvalidArgumentError(
          'account',
          `'${request.account.slice(0, 80)}' is not a ledger account (expected ` +
            `${LEDGER_ACCOUNT_SHAPE}, or empty for every account)`,
        );
      }
      const limit = Math.min(request.pageSize === 0 ? 100 : request.pageSize, 500);
      const filter = { account: request.account, orderId: request.orderId };
      if (request.fromHead) {
        if (request.pageToken !== '') {
          throw new InvalidArgumentError(
            'from_head',
            'cannot be set with page_token, which says where to read from already; send one ' +
              'or the other',
          );
        }
        const head = await settledHead(db, horizon).catch(rethrow);
        return {
          entries: [],
          nextPageToken: '',
          stoppedAtHorizon: false,
          resumePageToken: encodePageToken('ListEntries', head.toString(), filter),
        };
      }
      const cursor = decodePageToken('ListEntries', request.pageToken, filter, isInt64Decimal);
      const afterId = cursor === undefined ? undefined : BigInt(cursor);
      const page = await listSettledLedgerEntries(
        db,
        {
          ...(request.account !== '' ? { account: request.account } : {}),
          ...(request.orderId !== '' ? { orderId: request.orderId } : {}),
          ...(afterId !== undefined ? { afterId } : {}),
          limit,
        },
        horizon,
      ).catch(rethrow);
      const entries = page.entries;
      // Nothing can still commit at or below resumeAfter: a token there misses nothing, whenever
      // the caller comes back with it (0: before the first id).
      const resumeToken = encodePageToken(
        'ListEntries',
        (page.resumeAfter ?? 0n).toString(),
        filter,
      );
      return {
        entries: entries.map((entry) => ({
          entryId: entry.id.toString(),
          transactionId: entry.transactionId,
          account: entry.account,
          orderId: entry.orderId,
          kind: entry.kind,
          currencyCode: entry.currency,
          debitMinor: entry.debitMinor,
          creditMinor: entry.creditMinor,
          createTime: entry.createdAt,
        })),
        // Only for a full page: a page cut by the horizon has nothing more to give until the
        // booking finishes, and a caller paging until the token is empty would spin on it.
        nextPageToken: page.more && !page.stoppedAtHorizon ? resumeToken : '',
        stoppedAtHorizon: page.stoppedAtHorizon,
        resumePageToken: resumeToken,
      };
    }, options),
    getTrialBalance: unary(async (request) => {
      if (request.pageSize < 0) throw new InvalidArgumentError('page_size', 'must not be negative');
      const limit = Math.min(
        request.pageSize === 0 ? TRIAL_BALANCE_PAGE_SIZE_DEFAULT : request.pageSize,
        TRIAL_BALANCE_PAGE_SIZE_MAX,
      );
      const after = trialBalancePageAfter(request.pageToken);
      // The totals are per currency over the whole ledger (one row per currency), so every page
      // tells whether the ledger balances, whichever accounts it shows. Both are read from the
      // running sums and the entries after them (ledger-sums.repository.ts), not the whole ledger.
      const [page, totals] = await Promise.all([
        trialBalancePage(db, { after, limit }),
        trialBalanceTotals(db),
      ]).catch(rethrow);
      for (const account of page.accounts) assertFitsInt64(account);
      for (const total of totals) assertFitsInt64({ account: undefined, ...total });
      return {
        accounts: page.accounts.map(balanceMessage),
        totals: totals.map((total) => balanceMessage({ account: '*', ...total })),
        balanced: totals.every((total) => total.balanceMinor === 0n),
        nextPageToken: trialBalancePageToken(page.next),
      };
    }, options),
  };
}

/**
 * The whole ledger's settled head (findSettledHead), which holds for any filter: nothing of any
 * account can still commit at or below it. Its search starts at the running sums' checkpoint,
 * which is settled and trails the head by about a pass of the sums (LedgerSummer). UNAVAILABLE
 * while it trails by more than the search reads: the sums catch up within a few passes.
 */
async function settledHead(db: Db, horizon: LedgerHorizonOptions): Promise<bigint> {
  const checkpoint = await ledgerSumsCheckpoint(db);
  const head = await findSettledHead(db, checkpoint.uptoId, horizon);
  if (head !== undefined) return head;
  throw new UnavailableError(
    `the settled head is too far past the ledger's running sums (entry ${checkpoint.uptoId}, ` +
      'moved up a pass at a time) to be found in one call; try again once they have caught up',
    { retryDelayMs: LEDGER_SUMS_DEFAULTS.intervalMs },
  );
}

function balanceMessage(balance: AccountBalance): AccountBalanceMessage {
  return {
    account: balance.account,
    currencyCode: balance.currency,
    debitMinor: balance.debitMinor,
    creditMinor: balance.creditMinor,
    balanceMinor: balance.balanceMinor,
  };
}

/**
 * Throws FAILED_PRECONDITION when the debits or the credits of `sums` (one account's, or every
 * account's with `account` undefined) do not fit the response's int64 fields. The sums are
 * exact (MySQL sums BIGINT as DECIMAL), but grpc-js cannot serialize them, and its
 * "Error serializing response" is an INTERNAL no one can act on. Both sums are at least 0, so
 * their difference fits when they do. The entries themselves always fit (BIGINT columns).
 */
function assertFitsInt64(
  sums: Readonly<{
    account: string | undefined;
    currency: string;
    debitMinor: bigint;
    creditMinor: bigint;
  }>,
): void {
  for (const [side, sum] of [
    ['debits', sums.debitMinor],
    ['credits', sums.creditMinor],
  ] as const) {
    if (sum <= INT64_MAX) continue;
    throw new FailedPreconditionError(
      sums.account === undefined
        ? `the ${side} of every account in ${sums.currency} sum to ${sum}, which does not fit ` +
            'int64 (the API answers sums as int64); read the entries with ListEntries instead'
        : `the ${side} of account ${sums.account} in ${sums.currency} sum to ${sum}, which does ` +
            "not fit int64 (the API answers sums as int64); read that account's entries with " +
            `ListEntries (account ${sums.account}) instead`,
    );
  }
}

function rethrow(error: unknown): never {
  throw toUnavailable(error);
}
