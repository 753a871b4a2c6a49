# trustfold-wasm + the npm package `trustfold`: toolchain, build (cargo, wasm-bindgen,
# wasm-opt, tsc, size report), then the golden vectors in Node and headless Chromium
# and the npm-pack / Vite packaging tests. Included by the root Makefile.

NPM_DIR := npm

.PHONY: test-wasm build-wasm
build-wasm:
	scripts/toolchain.sh all
	cd $(NPM_DIR) && npm ci --no-audit --no-fund --loglevel=error
	node $(NPM_DIR)/scripts/build.mjs

test-wasm: build-wasm
	cd $(NPM_DIR) && node --test test/node.test.mjs test/browser.test.mjs test/pack.test.mjs

TEST_TARGETS += test-wasm
