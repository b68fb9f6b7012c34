// The failure tests live in failures.ts (one module for what a failure means); the fill's names stay here.
export { DiskFullError, failsFill, isCircuitOpen, isDiskFull, isRetryable, isRetryable as isTransient } from './failures.ts';
