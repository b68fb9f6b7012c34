import pino from 'pino';
import { createBerth, type Berth } from '../server.ts';
import { configFrom } from './common.ts';

/**
 * Opens a storage directory in this process for an operator command: the same registry code as
 * `berth serve`, without listening. Logs go to stderr at warn unless --log-level says otherwise.
 */
export async function openBerth(opts: Record<string, unknown>): Promise<Berth> {
  const config = configFrom(opts);
  const level = typeof opts.logLevel === 'string' ? opts.logLevel : 'warn';
  return createBerth(config, pino({ level }, pino.destination(2)));
}
