#!/usr/bin/env node
// Builds the npm package `trustfold`:
//   1. cargo: trustfold-wasm for wasm32-unknown-unknown, profile `wasm-release`
//      (rustup's wasm32 target when installed, else Debian's rustc-web with
//      -Zbuild-std, else a clear message; see docs/DEVELOPING.md),
//   2. wasm-bindgen --target web into npm/pkg/ (one module for Node and browsers),
//   3. wasm-opt -Oz (binaryen; Debian's 108 needs the --enable-… flags),
//   4. tsc into npm/dist/,
//   5. a size report (raw, gzip, brotli) on every build; fails above the gzip budget.
//
// Usage: node scripts/build.mjs [--skip-cargo] [--skip-tsc]
import { execFileSync, spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { brotliCompressSync, constants, gzipSync } from "node:zlib";

const npmDir = join(dirname(fileURLToPath(import.meta.url)), "..");
const root = join(npmDir, "..");
const pkgDir = join(npmDir, "pkg");
const target = "wasm32-unknown-unknown";
const profile = "wasm-release";
const crate = "trustfold-wasm";
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
  const debian = ["/usr/bin/cargo", "/usr/bin/rustc", "/usr/lib/llvm-22/bin/lld"].every(existsSync) &&
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
const rawWasm = join(route.targetDir, target, profile, "trustfold_wasm.wasm");
if (!args.has("--skip-cargo")) {
  step(`cargo (${route.route} route)`);
  const env = { ...process.env, ...route.env };
  for (const [k, v] of Object.entries(route.env)) if (v === "") delete env[k];
  run(route.cmd, ["build", "--profile", profile, "--target", target, ...route.extra, "-p", crate], { env });
}
if (!existsSync(rawWasm)) {
  console.error(`build: ${rawWasm} is missing: run without --skip-cargo`);
  process.exit(1);
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
run("wasm-bindgen", ["--target", "web", "--out-dir", pkgDir, "--out-name", "trustfold_wasm", rawWasm]);
const bgWasm = join(pkgDir, "trustfold_wasm_bg.wasm");
const afterBindgen = statSync(bgWasm).size;

// ---- 3. wasm-opt ----------------------------------------------------------------------
step("wasm-opt -Oz");
// Prefer the npm `binaryen` (current); Debian's binaryen 108 mangles wasm-bindgen's
// externref table (Table.set fails at init), so it is used only without reference types.
const npmWasmOpt = join(npmDir, "node_modules", ".bin", "wasm-opt");
const features = ["bulk-memory", "sign-ext", "nontrapping-float-to-int", "mutable-globals", "reference-types", "multivalue"];
// --low-memory-unused: rustc links wasm32 with the stack first (data from 1 MiB, the
// stack growing down from there), so the low 1 KiB is only ever reached by a stack
// about 1 MiB deep; the flag lets binaryen fold more address arithmetic (-2 KB gzipped).
const optArgs = (tmp) => ["-Oz", "--low-memory-unused", "--strip-debug", "--strip-producers", ...features.map((f) => `--enable-${f}`), bgWasm, "-o", tmp];
const wasmOpt = existsSync(npmWasmOpt) ? npmWasmOpt : null;
if (wasmOpt) {
  const tmp = `${bgWasm}.opt`;
  run(wasmOpt, optArgs(tmp));
  copyFileSync(tmp, bgWasm);
  rmSync(tmp);
} else {
  console.warn("build: npm's binaryen is not installed (npm ci in npm/): the module stays unoptimised");
}

// ---- 4. tsc ---------------------------------------------------------------------------
if (!args.has("--skip-tsc")) {
  step("tsc");
  rmSync(join(npmDir, "dist"), { recursive: true, force: true });
  run(process.execPath, [join(npmDir, "node_modules", "typescript", "bin", "tsc"), "-p", join(npmDir, "tsconfig.json")]);
}

// ---- 5. size report -------------------------------------------------------------------
step("size report");
const bytes = readFileSync(bgWasm);
const glue = readFileSync(join(pkgDir, "trustfold_wasm.js"));
const size = (b) => ({
  raw: b.length,
  gzip: gzipSync(b, { level: 9 }).length,
  brotli: brotliCompressSync(b, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } }).length,
});
const report = { wasm: size(bytes), wasmAfterBindgen: afterBindgen, glueJs: size(glue), budgetGzip: GZIP_BUDGET };
const kb = (n) => `${(n / 1024).toFixed(1)} KB`;
console.log(`  ${relative(root, bgWasm)}: raw ${kb(report.wasm.raw)} (before wasm-opt ${kb(afterBindgen)}), gzip ${kb(report.wasm.gzip)}, brotli ${kb(report.wasm.brotli)}`);
console.log(`  ${relative(root, join(pkgDir, "trustfold_wasm.js"))}: raw ${kb(report.glueJs.raw)}, gzip ${kb(report.glueJs.gzip)}, brotli ${kb(report.glueJs.brotli)}`);
writeFileSync(join(pkgDir, "size.json"), JSON.stringify(report, null, 2) + "\n");
const over = report.wasm.gzip > GZIP_BUDGET;
console.log(`  budget: gzipped .wasm <= ${kb(GZIP_BUDGET)}: ${over ? "OVER" : "ok"}`);
if (over && process.env.TRUSTFOLD_SIZE_BUDGET === "enforce") process.exit(1);
