/**
 * Node entry point: the WebAssembly module is compiled and instantiated synchronously
 * on import, so every function is usable at once. `init()` exists for code shared
 * with browsers and resolves immediately.
 *
 * Node loads `pkg/node/`: the same Rust as the browsers' module in `pkg/`, with the
 * same interface and answers, built for speed instead of size (it is read from disk,
 * not downloaded).
 */
import { readFileSync } from "node:fs";
import * as glue from "../pkg/node/trustfold_wasm.js";
import { markReady } from "./module.js";

glue.initSync({ module: readFileSync(new URL("../pkg/node/trustfold_wasm_bg.wasm", import.meta.url)) });
// The Node module's glue has the browsers' interface (the build compares the two
// declaration files) but is another declaration, hence the cast.
markReady(glue as unknown as Parameters<typeof markReady>[0]);

/** Resolves at once: in Node the module is ready on import. */
export async function init(): Promise<void> {}

export * from "./api.js";
