/**
 * Browser (and bundler) entry point: call `await init()` once before anything else.
 * The module is fetched and compiled with streaming compilation
 * (`WebAssembly.instantiateStreaming`, so serve `.wasm` as `application/wasm`).
 * Calling any function before `init()` throws a `TrustfoldError` with code
 * `not_initialized`.
 */
import initWasm, * as glue from "../pkg/trustfold_wasm.js";
import { isReady, markReady } from "./module.js";

/** Where to load the module from: a URL, a `Response`, bytes or a compiled module. */
export type InitInput = RequestInfo | URL | Response | BufferSource | WebAssembly.Module;

let pending: Promise<void> | undefined;

/** Loads and instantiates the WebAssembly module (once; later calls share the first). */
export function init(input?: InitInput): Promise<void> {
  if (isReady()) return Promise.resolve();
  pending ??= initWasm({
    module_or_path: input ?? new URL("../pkg/trustfold_wasm_bg.wasm", import.meta.url),
  })
    .then(() => {
      // A module that instantiates but is not trustfold's (or is damaged) is not ready.
      glue.version();
      markReady(glue);
    })
    .catch((e: unknown) => {
      pending = undefined;
      const err = new Error(
        `trustfold: the WebAssembly module could not be loaded: ${e instanceof Error ? e.message : String(e)}`,
      ) as Error & { code: string };
      err.name = "TrustfoldError";
      err.code = "init_failed";
      throw err;
    });
  return pending;
}

export * from "./api.js";
