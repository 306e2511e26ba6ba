import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    environment: 'node',
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 30_000,
    hookTimeout: 120_000,
    // Files run one at a time: they share one MariaDB server and one NATS server, and the 2-core
    // machine gives nothing back for parallel files. Each file still uses its own database and
    // namespace (see test/support/harness.ts).
    fileParallelism: false,
    pool: 'forks',
    allowOnly: false,
  },
});
