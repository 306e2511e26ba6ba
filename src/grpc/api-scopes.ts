/**
 * The one list of what each method of the non-admin API needs of an API token: `read` for the
 * methods that only read, `write` for those that create or book something. Every method of every
 * service that API_TOKENS guards is in it, and nothing else: the type makes leaving out or
 * misspelling one a compile error, and test/grpc/api-scopes.test.ts checks the same against the
 * service definitions at run time. A method that is not listed would need `write` (see
 * `scopeOfPath`), so a forgotten one fails closed. The REST twin takes its routes' scopes from
 * here too, by the method each route stands for.
 */
import type * as grpc from '@grpc/grpc-js';
import { API_SCOPE, type ApiScope } from '../domain/api-token.js';
import { PaymentServiceService } from './generated/settle/v1/payment.js';
import { ReconciliationServiceService } from './generated/settle/v1/reconciliation.js';
import { LedgerServiceService, WalletServiceService } from './generated/settle/v1/wallet.js';

/** The services API_TOKENS guards, by the short name their refusals use. */
export const API_GUARDED_SERVICES = {
  PaymentService: PaymentServiceService,
  WalletService: WalletServiceService,
  LedgerService: LedgerServiceService,
  ReconciliationService: ReconciliationServiceService,
} as const;
export type ApiGuardedService = keyof typeof API_GUARDED_SERVICES;

const { read, write } = API_SCOPE;

/** Per service, per method (ts-proto's camelCase key), the scope a token needs to call it. */
export const API_METHOD_SCOPES = {
  PaymentService: {
    createPayment: write,
    getPayment: read,
    listPayments: read,
    watchPayment: read,
  },
  WalletService: {
    getWallet: read,
  },
  LedgerService: {
    listEntries: read,
    getTrialBalance: read,
  },
  ReconciliationService: {
    // It books the fees of the day it reconciles.
    runReconciliation: write,
    getReport: read,
    listReports: read,
    listMismatches: read,
  },
} as const satisfies {
  [Service in ApiGuardedService]: Record<keyof (typeof API_GUARDED_SERVICES)[Service], ApiScope>;
};

/** A guarded method as a refusal names it and the scope it needs. */
export type ApiMethod = Readonly<{
  /** e.g. `PaymentService.CreatePayment`, or `POST /v1/payments` on the REST twin */
  name: string;
  scope: ApiScope;
}>;

const METHOD_BY_PATH: ReadonlyMap<string, ApiMethod> = new Map(
  Object.keys(API_GUARDED_SERVICES).flatMap((service) => {
    const definition: grpc.ServiceDefinition = API_GUARDED_SERVICES[service as ApiGuardedService];
    const scopes: Readonly<Record<string, ApiScope>> =
      API_METHOD_SCOPES[service as ApiGuardedService];
    return Object.entries(definition).map(([key, { path }]): [string, ApiMethod] => [
      path,
      { name: `${service}.${path.slice(path.lastIndexOf('/') + 1)}`, scope: scopes[key] ?? write },
    ]);
  }),
);

/**
 * The guarded method at a gRPC path (`/settle.v1.PaymentService/CreatePayment`). A path that is
 * none of them (no such call reaches the guarded handlers) needs `write`: fail closed.
 */
export function apiMethodOfPath(path: string): ApiMethod {
  return METHOD_BY_PATH.get(path) ?? { name: path, scope: write };
}
