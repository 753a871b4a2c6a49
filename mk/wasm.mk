# trustfold-wasm + the npm package `trustfold`: toolchain, build (cargo, wasm-bindgen,
# wasm-opt, tsc, size report), then the golden vectors in Node and headless Chromium
# and the npm-pack / Vite packaging tests. Included by the root Makefile.

NPM_DIR := npm

.PHONY: test-wasm build-wasm
build-wasm:
	scripts/toolchain.sh all
	cd $(NPM_DIR) && npm ci --no-audit --no-fund --loglevel=error
	node $(NPM_DIR)/scripts/build.mjs

# network.test.mjs and widget.test.mjs (the example payment widget in Chromium) run
# against a real trustfold-server (built here; the tests find the binary through cargo,
# so CARGO_TARGET_DIR is honoured).
test-wasm: build-wasm
	$(CARGO) build -p trustfold-server --bin trustfold-server
	cd $(NPM_DIR) && node --test test/node.test.mjs test/browser.test.mjs test/pack.test.mjs test/network.test.mjs test/widget.test.mjs

# wasm vs native Rust vs a plain JS reducer, in one Node run (docs/BENCHMARKS.md).
.PHONY: bench-wasm
bench-wasm: build-wasm
	node $(NPM_DIR)/bench/fold.mjs

TEST_TARGETS += test-wasm
BENCH_TARGETS += bench-wasm
