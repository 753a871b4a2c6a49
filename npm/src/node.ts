/**
 * Node entry point: the WebAssembly module is compiled and instantiated synchronously
 * on import, so every function is usable at once. `init()` exists for code shared
 * with browsers and resolves immediately.
 *
 * Node loads `pkg/node/`: the same Rust as the browsers' module in `pkg/`, with the
 * same interface and answers, built for speed instead of size (it is read from disk,
 * not downloaded).
 */
import { setMaxListeners } from "node:events";
import { readFileSync } from "node:fs";
import * as glue from "../pkg/node/trustfold_wasm.js";
import { markReady, setBeforeLive } from "./module.js";

glue.initSync({ module: readFileSync(new URL("../pkg/node/trustfold_wasm_bg.wasm", import.meta.url)) });
// The Node module's glue has the browsers' interface (the build compares the two
// declaration files) but is another declaration, hence the cast.
markReady(glue as unknown as Parameters<typeof markReady>[0]);

const QUIET = Symbol.for("trustfold.eventSourceListeners");

/**
 * A live stream listens for `error` once per event type it names (gloo-net subscribes
 * per type), and Node's `EventTarget` warns of a leak past 10 listeners of one type
 * (`MaxListenersExceededWarning`, on every `live()`). Before each `live()`, the
 * `EventSource` the caller installed is wrapped once in a subclass whose instances allow
 * enough listeners; browsers do not count them.
 */
function allowStreamListeners(): void {
  const g = globalThis as { EventSource?: unknown };
  const Base = g.EventSource;
  if (typeof Base !== "function" || QUIET in Base) return;
  const Parent = Base as new (url: string, init?: unknown) => EventTarget;
  class EventSourceWithListeners extends Parent {
    constructor(url: string, init?: unknown) {
      super(url, init);
      try {
        setMaxListeners(100, this);
      } catch {
        // Not a Node EventTarget: nothing to raise.
      }
    }
  }
  Object.defineProperty(EventSourceWithListeners, QUIET, { value: true });
  g.EventSource = EventSourceWithListeners;
}
setBeforeLive(allowStreamListeners);

/**
 * What browsers' `init(input)` takes; Node loads its own module from disk and ignores
 * it (declared here without the DOM's types, so code shared with browsers type-checks
 * in Node projects too).
 */
export type InitInput = unknown;

/** Resolves at once: in Node the module is ready on import (`input` is ignored). */
export async function init(_input?: InitInput): Promise<void> {}

export * from "./api.js";
