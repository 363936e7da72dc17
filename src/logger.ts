import { pino, type Logger } from 'pino';

export type { Logger };

/** JSON lines on stdout (pino); pipe through pino-pretty for reading by eye. */
export function createLogger(level: string, name = 'edgebridge'): Logger {
  return pino({ name, level, base: { pid: process.pid } });
}
