// Everything the bench starts registers how to stop it here; stopAll runs those in reverse order at the
// end, on an error, and on Ctrl-C. Processes are only ever signalled by the PIDs we spawned.

type Stopper = { name: string; stop: () => Promise<void> };

const stoppers: Stopper[] = [];
let stopping: Promise<void> | undefined;

/** Registers a stop function; the returned function unregisters it (after a normal, early stop). */
export function onCleanup(name: string, stop: () => Promise<void>): () => void {
  const entry = { name, stop };
  stoppers.push(entry);
  return () => {
    const i = stoppers.indexOf(entry);
    if (i >= 0) stoppers.splice(i, 1);
  };
}

/**
 * Registers `thing.stop` for cleanup and makes it idempotent: calling it early stops the thing once and
 * unregisters it. Returns the same object.
 */
export function guarded<T extends { stop(): Promise<void> }>(name: string, thing: T): T {
  const original = thing.stop.bind(thing);
  let done: Promise<void> | undefined;
  const once = (): Promise<void> => (done ??= original());
  const unregister = onCleanup(name, once);
  thing.stop = async () => {
    unregister();
    await once();
  };
  return thing;
}

/** True once stopAll has begun (Ctrl-C, an error, or the end): start nothing new. */
export function isStopping(): boolean {
  return stopping !== undefined;
}

export function stopAll(): Promise<void> {
  stopping ??= (async () => {
    while (stoppers.length > 0) {
      const s = stoppers.pop()!;
      try {
        await s.stop();
      } catch (err) {
        console.error(`cleanup ${s.name}: ${String(err)}`);
      }
    }
  })();
  return stopping;
}

/** Ctrl-C / SIGTERM: stop everything, then exit (startProcess' exit hook SIGKILLs any straggler). */
export function installSignalHandlers(): void {
  let signalled = false;
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      if (signalled) process.exit(130);
      signalled = true;
      console.error(`\n${sig}: stopping everything the bench started…`);
      // If a stop hangs, exit anyway: startProcess' exit hook SIGKILLs every child still alive.
      setTimeout(() => process.exit(130), 20_000).unref();
      void stopAll().finally(() => process.exit(130));
    });
  }
}
