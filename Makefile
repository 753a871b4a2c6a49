# trustfold build/test entry points. Other parts of the project add targets in
# mk/*.mk and register them by appending to TEST_TARGETS / BENCH_TARGETS /
# DEMO_TARGETS (see mk/README.md); they run after the core steps, in order.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test
CARGO ?= cargo

TEST_TARGETS :=
BENCH_TARGETS :=
DEMO_TARGETS :=
-include mk/*.mk

# $(call step,NAME): print a visible step header.
step = @printf '\n==> %s\n' '$(1)'
# $(call run_targets,LIST): make each listed target in turn, stopping at the first failure.
run_targets = @for t in $(1); do printf '\n==> make %s\n' "$$t"; $(MAKE) --no-print-directory "$$t"; done

.PHONY: test demo bench toolchain fmt clippy
test:
	$(call step,toolchain (wasm route))
	scripts/toolchain.sh wasm
	$(call step,rustfmt check)
	$(CARGO) fmt --all -- --check
	$(call step,clippy)
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(call step,cargo test)
	$(CARGO) test --workspace
	$(call step,core dependency purity)
	scripts/check-core-deps.sh
	$(call step,wasm32 build of trustfold-core)
	scripts/wasm-build.sh -p trustfold-core
	$(call run_targets,$(TEST_TARGETS))
	@printf '\n==> make test: all steps passed\n'

demo:
	$(call step,toolchain (base: make, a C compiler and linker))
	scripts/toolchain.sh base
	$(call step,demo: earnest_money)
	$(CARGO) run --release -p trustfold-core --example earnest_money
	$(call run_targets,$(DEMO_TARGETS))

bench:
	$(call step,bench: trustfold-core)
	$(CARGO) bench -p trustfold-core
	$(call run_targets,$(BENCH_TARGETS))

toolchain:
	scripts/toolchain.sh all

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
