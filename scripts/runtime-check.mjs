// `npm test` and `npm start` begin here: print the Node.js they run on, and stop if it is too old.
import { checkRuntime } from './runtime.mjs';

checkRuntime(process.env.npm_lifecycle_event ?? 'runtime');
