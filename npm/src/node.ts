/**
 * Node entry point: the WebAssembly module is compiled and instantiated synchronously
 * on import, so every function is usable at once. `init()` exists for code shared
 * with browsers and resolves immediately.
 */
import { readFileSync } from "node:fs";
import { initSync } from "../pkg/trustfold_wasm.js";
import { markReady } from "./api.js";

initSync({ module: readFileSync(new URL("../pkg/trustfold_wasm_bg.wasm", import.meta.url)) });
markReady();

/** Resolves at once: in Node the module is ready on import. */
export async function init(): Promise<void> {}

export * from "./api.js";
