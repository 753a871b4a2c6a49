/**
 * Browser (and bundler) entry point: call `await init()` once before anything else.
 * The module is fetched and compiled with streaming compilation
 * (`WebAssembly.compileStreaming` when `.wasm` is served as `application/wasm`), and
 * checked to be trustfold's before it is instantiated, so a wrong file fails this
 * `init()` only and a later one with the right module still succeeds.
 * Calling any function before `init()` throws a `TrustfoldError` with code
 * `not_initialized`.
 */
import initWasm, * as glue from "../pkg/trustfold_wasm.js";
import { isReady, markReady } from "./module.js";

/** Where to load the module from: a URL, a `Response`, bytes or a compiled module. */
export type InitInput = RequestInfo | URL | Response | BufferSource | WebAssembly.Module;

let pending: Promise<void> | undefined;

/**
 * Exports the glue calls while it instantiates a module: one without them would be
 * taken by wasm-bindgen's loader, which keeps the first module it instantiates, and
 * leave every later `init()` failing too.
 */
const GLUE_EXPORTS = [
  "memory",
  "__wbindgen_start",
  "__wbindgen_malloc",
  "__wbindgen_realloc",
  "__wbindgen_free",
  "version",
  "replay",
  "decide",
];

/** Compiles `input` (streaming where the server sends `application/wasm`). */
async function compile(input: InitInput): Promise<WebAssembly.Module> {
  if (input instanceof WebAssembly.Module) return input;
  if (input instanceof ArrayBuffer || ArrayBuffer.isView(input)) return WebAssembly.compile(input);
  const res = input instanceof Response ? input : await fetch(input as RequestInfo | URL);
  if (!res.ok) throw new Error(`fetching ${res.url || "the module"} answered HTTP ${res.status}`);
  const wasmType = (res.headers.get("content-type") ?? "").split(";")[0]?.trim() === "application/wasm";
  if (wasmType && typeof WebAssembly.compileStreaming === "function") {
    return WebAssembly.compileStreaming(res);
  }
  return WebAssembly.compile(await res.arrayBuffer());
}

/** `module`, unless it lacks what trustfold's glue needs (then nothing is instantiated). */
function trustfoldModule(module: WebAssembly.Module): WebAssembly.Module {
  const names = new Set(WebAssembly.Module.exports(module).map((e) => e.name));
  const missing = GLUE_EXPORTS.filter((n) => !names.has(n));
  if (missing.length > 0) {
    throw new Error(
      `it is not trustfold's module (it does not export ${missing.join(", ")}); pass the package's trustfold_wasm_bg.wasm`,
    );
  }
  return module;
}

/** Loads and instantiates the WebAssembly module (once; later calls share the first). */
export function init(input?: InitInput): Promise<void> {
  if (isReady()) return Promise.resolve();
  pending ??= compile(input ?? new URL("../pkg/trustfold_wasm_bg.wasm", import.meta.url))
    .then((module) => initWasm({ module_or_path: trustfoldModule(module) }))
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
