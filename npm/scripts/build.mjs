#!/usr/bin/env node
// Builds the npm package `trustfold`. The same Rust is compiled twice:
//   - for browsers and bundlers, optimised for size (profile `wasm-release`, opt-level
//     "z", on the Debian route std built with its `optimize_for_size` feature, wasm-opt
//     -Oz): `pkg/trustfold_wasm_bg.wasm`, what a page downloads;
//   - for Node, optimised for speed (profile `wasm-node`, opt-level 3, SIMD, wasm-opt -O3):
//     `pkg/node/trustfold_wasm_bg.wasm` with its own glue, read from disk by
//     `dist/node.js`, where the size costs nothing and bulk verification is what Node
//     is used for.
// Both have one interface: the build fails unless wasm-bindgen declares the same
// public API for both (their glue differs only in internal, hashed names). Steps:
//   1. cargo: trustfold-wasm for wasm32-unknown-unknown, both profiles (rustup's wasm32
//      target when installed, else Debian's rustc-web with -Zbuild-std, else a clear
//      message; see docs/DEVELOPING.md),
//   2. wasm-bindgen --target web into npm/pkg/,
//   3. wasm-opt (npm's binaryen, with the features rustc emits enabled),
//   4. tsc into npm/dist/,
//   5. a size report (raw, gzip, brotli) of both modules on every build; the gzip
//      budget is the browser module's.
//
// Usage: node scripts/build.mjs [--skip-cargo] [--skip-tsc] [--no-opt]
import { execFileSync, spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { brotliCompressSync, constants, gzipSync } from "node:zlib";

const npmDir = join(dirname(fileURLToPath(import.meta.url)), "..");
const root = join(npmDir, "..");
const pkgDir = join(npmDir, "pkg");
const target = "wasm32-unknown-unknown";
const crate = "trustfold-wasm";
// The two modules: the browser's (size) and Node's (speed).
const modules = [
  // std's `optimize_for_size` (smaller sorts, formatting and string searches): -7.1 KB
  // gzipped; no file, line or column kept for panic locations (panics trap at once
  // anyway): -0.7 KB. Both unstable: only on the Debian route, where std is built here.
  // wasm-opt -Oz, then the code flattened and its control flow rebuilt (`--flatten
  // --rereloop`) and shrunk again: -1.8 KB gzipped against -Oz alone.
  { name: "browser", profile: "wasm-release", opt: "-Oz --flatten --rereloop -Oz -Oz", file: "trustfold_wasm_bg.wasm", std: ["-Zbuild-std-features=optimize_for_size"], debianFlags: "-Zlocation-detail=none" },
  // Node >= 16.4 runs WebAssembly SIMD: the chain's SHA-256 runs four events at once.
  { name: "node", profile: "wasm-node", opt: "-O3", file: "node/trustfold_wasm_bg.wasm", rustflags: "-Ctarget-feature=+simd128" },
];
const GZIP_BUDGET = 75 * 1024;
const args = new Set(process.argv.slice(2));

const step = (s) => console.log(`\n==> build: ${s}`);
function run(cmd, argv, opts = {}) {
  console.log(`$ ${cmd} ${argv.join(" ")}`);
  const r = spawnSync(cmd, argv, { stdio: "inherit", cwd: root, ...opts });
  if (r.status !== 0) {
    console.error(`build: ${cmd} failed (${r.error?.message ?? `exit ${r.status}`})`);
    process.exit(1);
  }
}
const has = (cmd) => spawnSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" }).status === 0;

// ---- 1. cargo ------------------------------------------------------------------------
function cargoRoute() {
  const rustupTargets = has("rustup")
    ? spawnSync("rustup", ["target", "list", "--installed"], { encoding: "utf8" }).stdout ?? ""
    : "";
  if (rustupTargets.split("\n").includes(target)) {
    return { route: "rustup", cmd: "cargo", extra: [], env: {}, targetDir: join(root, "target") };
  }
  const debian = ["/usr/bin/cargo", "/usr/bin/rustc", "/usr/lib/llvm-22/bin/wasm-ld"].every(existsSync) &&
    existsSync("/usr/lib/rustlib/src/rust/library");
  if (debian) {
    // Its own target dir: the Debian compiler and rustup's must not share fingerprints,
    // and the SDK's profile differs from the core's wasm build in target/wasm-debian.
    const targetDir = process.env.WASM_SDK_TARGET_DIR ?? join(root, "target", "wasm-sdk");
    return {
      route: "debian",
      cmd: "/usr/bin/cargo",
      extra: ["-Zbuild-std=std,panic_abort"],
      env: {
        RUSTC: "/usr/bin/rustc", RUSTDOC: "/usr/bin/rustdoc", RUSTC_BOOTSTRAP: "1", CARGO_TARGET_DIR: targetDir, RUSTC_WRAPPER: "", RUSTUP_TOOLCHAIN: "",
        // lld-22's wasm linker by name: Debian's `rust-lld` (the target's default) comes
        // with rust-web-llvm, which a fresh machine may not have (not installed without
        // recommends; the link would fail with "linker `rust-lld` not found").
        CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER: "/usr/lib/llvm-22/bin/wasm-ld",
        // std is built here anyway: build it (and everything) with the panic strategy
        // that traps at once, without formatting a message (unstable, hence only on
        // this route): about 12 KB less gzipped. Errors are values, so no panic is
        // expected; a bug would show as `unreachable` instead of a panic message.
        RUSTFLAGS: `${process.env.RUSTFLAGS ?? ""} -Zunstable-options -Cpanic=immediate-abort`.trim(),
      },
      targetDir,
    };
  }
  console.error(`build: no way to build for ${target} on this machine. Either:
  rustup target add ${target}     (needs rustup and internet), or
  scripts/toolchain.sh wasm       (Debian: rustc-web cargo-web rust-web-src lld-22)`);
  process.exit(1);
}

const route = cargoRoute();
const rawWasm = (m) => join(route.targetDir, target, m.profile, "trustfold_wasm.wasm");
if (!args.has("--skip-cargo")) {
  const env = { ...process.env, ...route.env };
  for (const [k, v] of Object.entries(route.env)) if (v === "") delete env[k];
  for (const m of modules) {
    step(`cargo (${route.route} route, ${m.name} module: profile ${m.profile})`);
    const flags = [env.RUSTFLAGS, m.rustflags, route.route === "debian" ? m.debianFlags : ""].filter(Boolean).join(" ");
    const std = route.route === "debian" ? (m.std ?? []) : [];
    run(route.cmd, ["build", "--profile", m.profile, "--target", target, ...route.extra, ...std, "-p", crate], {
      env: flags ? { ...env, RUSTFLAGS: flags } : env,
    });
  }
}
for (const m of modules) {
  if (!existsSync(rawWasm(m))) {
    console.error(`build: ${rawWasm(m)} is missing: run without --skip-cargo`);
    process.exit(1);
  }
}

// ---- 2. wasm-bindgen ------------------------------------------------------------------
step("wasm-bindgen --target web");
const lock = readFileSync(join(root, "Cargo.lock"), "utf8");
const want = /name = "wasm-bindgen"\nversion = "([^"]+)"/.exec(lock)?.[1];
const haveBindgen = has("wasm-bindgen") ? execFileSync("wasm-bindgen", ["--version"], { encoding: "utf8" }).trim() : "";
if (haveBindgen !== `wasm-bindgen ${want}`) {
  console.error(`build: need wasm-bindgen ${want} (Cargo.lock), found '${haveBindgen || "none"}': run scripts/toolchain.sh bindgen`);
  process.exit(1);
}
rmSync(pkgDir, { recursive: true, force: true });
mkdirSync(pkgDir, { recursive: true });
const [browser, node] = modules;
run("wasm-bindgen", ["--target", "web", "--out-dir", pkgDir, "--out-name", "trustfold_wasm", rawWasm(browser)]);
const nodeDir = join(pkgDir, "node");
run("wasm-bindgen", ["--target", "web", "--out-dir", nodeDir, "--out-name", "trustfold_wasm", rawWasm(node)]);
// wasm-bindgen declares `[Symbol.dispose](): void` on its classes, which only
// TypeScript's `esnext.disposable` lib (or @types/node) knows: a browser project that
// checks libraries' declarations (skipLibCheck off) without it failed on the package's
// types, which import these. The package's classes (src/api.ts) wrap the glue's and
// offer no dispose, so the declarations drop it (the glue's JS keeps it).
for (const dir of [pkgDir, nodeDir]) {
  const file = join(dir, "trustfold_wasm.d.ts");
  const dts = readFileSync(file, "utf8").replace(/^[ \t]*\[Symbol\.dispose\]\(\): void;\r?\n/gm, "");
  if (dts.includes("Symbol.dispose")) {
    console.error(`build: ${relative(root, file)} still names Symbol.dispose: has wasm-bindgen's output changed?`);
    process.exit(1);
  }
  writeFileSync(file, dts);
}
// The public API: the declarations before wasm-bindgen's own init types.
const publicApi = (dir) => {
  const dts = readFileSync(join(dir, "trustfold_wasm.d.ts"), "utf8");
  const end = dts.indexOf("export type InitInput");
  if (end < 0) {
    console.error(`build: ${relative(root, dir)}/trustfold_wasm.d.ts has no \`export type InitInput\`: has wasm-bindgen's output changed?`);
    process.exit(1);
  }
  return dts.slice(0, end);
};
if (publicApi(pkgDir) !== publicApi(nodeDir)) {
  console.error(`build: the ${node.name} module declares another API than the ${browser.name} module (compare ${relative(root, nodeDir)}/trustfold_wasm.d.ts)`);
  process.exit(1);
}
// The package's own declarations (src/api.ts, src/module.ts) take the glue's types from
// this file, the public API without wasm-bindgen's init types: those name the DOM's
// `RequestInfo`, `BufferSource` and the `WebAssembly` namespace, which a Node project
// without the DOM library (`lib: ["ES2022"]`, `types: ["node"]`) does not have.
writeFileSync(join(pkgDir, "trustfold_api.d.ts"), publicApi(pkgDir));
const wasmPath = (m) => join(pkgDir, m.file);
const afterBindgen = Object.fromEntries(modules.map((m) => [m.name, statSync(wasmPath(m)).size]));

// ---- 3. wasm-opt ----------------------------------------------------------------------
step("wasm-opt");
// npm's `binaryen` (`npm ci` installs it; Debian's binaryen 108 mangled wasm-bindgen's
// externref table, so it is not used).
const npmWasmOpt = join(npmDir, "node_modules", ".bin", "wasm-opt");
const features = ["bulk-memory", "sign-ext", "nontrapping-float-to-int", "mutable-globals", "reference-types", "multivalue"];
// --low-memory-unused: rustc links wasm32 with the stack first (data from 1 MiB, the
// stack growing down from there), so the low 1 KiB is only ever reached by a stack
// about 1 MiB deep; the flag lets binaryen fold more address arithmetic (-2 KB gzipped).
const optArgs = (m, tmp) => [
  ...m.opt.split(" "), "--low-memory-unused", "--strip-debug", "--strip-producers",
  // SIMD only where rustc was asked for it: the browsers' module stays without.
  ...[...features, ...(m.rustflags?.includes("simd128") ? ["simd"] : [])].map((f) => `--enable-${f}`),
  wasmPath(m), "-o", tmp,
];
const wasmOpt = existsSync(npmWasmOpt) ? npmWasmOpt : null;
if (wasmOpt) {
  for (const m of modules) {
    const tmp = `${wasmPath(m)}.opt`;
    run(wasmOpt, optArgs(m, tmp));
    copyFileSync(tmp, wasmPath(m));
    rmSync(tmp);
  }
} else if (process.argv.includes("--no-opt")) {
  console.warn("build: --no-opt: the modules stay unoptimised (their sizes below are not what ships)");
} else {
  console.error("build: npm's binaryen (wasm-opt) is not installed: run `npm ci` in npm/ (or pass --no-opt for an unoptimised build)");
  process.exit(1);
}

// ---- 4. tsc ---------------------------------------------------------------------------
if (!args.has("--skip-tsc")) {
  step("tsc");
  rmSync(join(npmDir, "dist"), { recursive: true, force: true });
  run(process.execPath, [join(npmDir, "node_modules", "typescript", "bin", "tsc"), "-p", join(npmDir, "tsconfig.json")]);
}

// ---- 5. size report -------------------------------------------------------------------
step("size report");
const glue = readFileSync(join(pkgDir, "trustfold_wasm.js"));
const size = (b) => ({
  raw: b.length,
  gzip: gzipSync(b, { level: 9 }).length,
  brotli: brotliCompressSync(b, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } }).length,
});
const kb = (n) => `${(n / 1024).toFixed(1)} KB`;
const sizes = Object.fromEntries(modules.map((m) => [m.name, size(readFileSync(wasmPath(m)))]));
for (const m of modules) {
  const z = sizes[m.name];
  console.log(`  ${relative(root, wasmPath(m))} (${m.name}, ${m.opt}): raw ${kb(z.raw)} (before wasm-opt ${kb(afterBindgen[m.name])}), gzip ${kb(z.gzip)}, brotli ${kb(z.brotli)}`);
}
const report = {
  // What a browser downloads: the figure the budget is about.
  wasm: sizes.browser,
  wasmAfterBindgen: afterBindgen.browser,
  // What Node reads from disk.
  nodeWasm: sizes.node,
  nodeWasmAfterBindgen: afterBindgen.node,
  glueJs: size(glue),
  budgetGzip: GZIP_BUDGET,
};
console.log(`  ${relative(root, join(pkgDir, "trustfold_wasm.js"))}: raw ${kb(report.glueJs.raw)}, gzip ${kb(report.glueJs.gzip)}, brotli ${kb(report.glueJs.brotli)}`);
writeFileSync(join(pkgDir, "size.json"), JSON.stringify(report, null, 2) + "\n");
const over = report.wasm.gzip > GZIP_BUDGET;
console.log(`  budget: gzipped browser .wasm <= ${kb(GZIP_BUDGET)}: ${over ? "OVER" : "ok"}`);
if (over && process.env.TRUSTFOLD_SIZE_BUDGET === "enforce") process.exit(1);
