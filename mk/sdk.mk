# trustfold (sdk-native): the Rust SDK and the `trustfold` CLI. Its tests run in the
# root `cargo test --workspace`; this adds the end-to-end verifier benchmark.
# Included by the root Makefile via `-include mk/*.mk`.

CARGO ?= cargo

# `trustfold verify` on a generated 1,000,000-event export (and a quarter-size one, to
# show memory stays flat): events/s and peak RSS, as recorded in docs/BENCHMARKS.md.
# TRUSTFOLD_BENCH_EVENTS=N changes the size.
.PHONY: bench-sdk
bench-sdk:
	$(CARGO) bench -p trustfold --bench verify

BENCH_TARGETS += bench-sdk
