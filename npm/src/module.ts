/**
 * The instantiated wasm module, set once by the entry point that loaded it. Internal:
 * not re-exported by the package (only `isReady`, through api.ts), so no caller can
 * swap in another module.
 */
import type * as Raw from "../pkg/trustfold_api.js";

/** The wasm-bindgen glue of one instantiated module. */
export type RawModule = typeof Raw;

// Browsers use the size-optimised module's glue, Node the speed-optimised one's (same
// interface; the build checks it). A live binding: api.ts sees the value set here.
export let raw = undefined as unknown as RawModule;
let ready = false;

/** Called by the entry points once the module is instantiated. */
export function markReady(glue: RawModule): void {
  raw = glue;
  ready = true;
}

/** Runs before each `live()` (set by the Node entry point; nothing in browsers). */
export let beforeLive: () => void = () => {};

/** Called by an entry point that needs to prepare the platform for live streams. */
export function setBeforeLive(f: () => void): void {
  beforeLive = f;
}

/** True once the wasm module is ready (always in Node; after `await init()` in browsers). */
export function isReady(): boolean {
  return ready;
}
