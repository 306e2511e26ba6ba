/**
 * Goal: every method of every service API_TOKENS guards needs a scope of a token, read or write,
 * from one closed list, and the reads are exactly the methods that only read.
 * Method: the list is checked against the generated service definitions.
 */
import { describe, expect, it } from 'vitest';
import {
  API_GUARDED_SERVICES,
  API_METHOD_SCOPES,
  apiMethodOfPath,
} from '../../src/grpc/api-scopes.js';

/** The methods that only read; every other guarded method writes (or books) something. */
const READ_METHODS = [
  '/settle.v1.PaymentService/GetPayment',
  '/settle.v1.PaymentService/ListPayments',
  '/settle.v1.PaymentService/WatchPayment',
  '/settle.v1.WalletService/GetWallet',
  '/settle.v1.LedgerService/ListEntries',
  '/settle.v1.LedgerService/GetTrialBalance',
  '/settle.v1.ReconciliationService/GetReport',
  '/settle.v1.ReconciliationService/ListReports',
  '/settle.v1.ReconciliationService/ListMismatches',
];

describe('the scope of each guarded method', () => {
  it('has every method of every guarded service, and nothing else', () => {
    const methods = Object.values(API_GUARDED_SERVICES).flatMap((service) =>
      Object.values(service).map((method) => method.path),
    );
    const listed = Object.entries(API_METHOD_SCOPES).flatMap(([service, scopes]) =>
      Object.keys(scopes).map(
        (key) =>
          (
            API_GUARDED_SERVICES[service as keyof typeof API_GUARDED_SERVICES] as Record<
              string,
              { path: string } | undefined
            >
          )[key]?.path ?? `${service}.${key} (no such method)`,
      ),
    );
    expect([...listed].sort()).toEqual([...methods].sort());
  });

  it('lets read tokens call the reads, and only them', () => {
    const methods = Object.values(API_GUARDED_SERVICES).flatMap((service) =>
      Object.values(service).map((method) => method.path),
    );
    const reads = methods.filter((path) => apiMethodOfPath(path).scope === 'read');
    expect(reads.sort()).toEqual([...READ_METHODS].sort());
    expect(apiMethodOfPath('/settle.v1.PaymentService/CreatePayment')).toEqual({
      name: 'PaymentService.CreatePayment',
      scope: 'write',
    });
    expect(apiMethodOfPath('/settle.v1.ReconciliationService/RunReconciliation').scope).toBe(
      'write',
    );
  });

  it('asks write of a path it does not know: a forgotten method fails closed', () => {
    expect(apiMethodOfPath('/settle.v1.PaymentService/RefundPayment')).toEqual({
      name: '/settle.v1.PaymentService/RefundPayment',
      scope: 'write',
    });
  });
});
