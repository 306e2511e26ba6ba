/**
 * Finds the MariaDB/MySQL and NATS servers the tests talk to: the URL from the environment
 * (MYSQL_URL, NATS_URL) if set, else the local service if its port answers, else a container via
 * testcontainers where a Docker engine exists. Tests read the result with inject().
 */
import type { TestProject } from 'vitest/node';
import 'vitest';
import { reachable } from '../src/chaos/free-port.js';

declare module 'vitest' {
  export interface ProvidedContext {
    mysqlUrl: string;
    natsUrl: string;
  }
}

const stops: Array<() => Promise<unknown>> = [];

async function mysqlUrl(): Promise<string> {
  if (process.env.MYSQL_URL) return process.env.MYSQL_URL;
  if (await reachable('127.0.0.1', 3306, 500)) return 'mysql://root@127.0.0.1:3306/test';
  try {
    const { MySqlContainer } = await import('@testcontainers/mysql');
    const container = await new MySqlContainer('mysql:8.4').withRootPassword('root').start();
    stops.push(() => container.stop());
    return `mysql://root:root@${container.getHost()}:${container.getPort()}/test`;
  } catch (error) {
    throw new Error(
      'No MySQL for the tests: set MYSQL_URL, start MariaDB locally ' +
        '(start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd), ' +
        `or run where Docker is available (${String(error)})`,
    );
  }
}

async function natsUrl(): Promise<string> {
  if (process.env.NATS_URL) return process.env.NATS_URL;
  if (await reachable('127.0.0.1', 4222, 500)) return 'nats://127.0.0.1:4222';
  try {
    const { GenericContainer } = await import('testcontainers');
    const container = await new GenericContainer('nats:2.10')
      .withCommand(['-js'])
      .withExposedPorts(4222)
      .start();
    stops.push(() => container.stop());
    return `nats://${container.getHost()}:${container.getMappedPort(4222)}`;
  } catch (error) {
    throw new Error(
      'No NATS for the tests: set NATS_URL, start nats-server with -js locally, ' +
        `or run where Docker is available (${String(error)})`,
    );
  }
}

export default async function setup(project: TestProject) {
  project.provide('mysqlUrl', await mysqlUrl());
  project.provide('natsUrl', await natsUrl());
  return async () => {
    for (const stop of stops.reverse()) await stop();
  };
}
