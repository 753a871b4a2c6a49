# trustfold-server: the event store contract suite on SQLite and on a throwaway
# PostgreSQL cluster (scripts/with-postgres.sh starts it, exports DATABASE_URL, runs the
# tests, and deletes the cluster); then the SDK's tests against a real server
# (sdk-native/tests/server.rs) on PostgreSQL too. Included by the root Makefile via `-include mk/*.mk`.

CARGO ?= cargo

# The root `cargo test --workspace` step has no DATABASE_URL, and the server's
# PostgreSQL tests fail loudly without one. Inside make they are skipped knowingly there,
# because `test-server` below runs them against a real cluster in the same `make test`.
# (Outside make, a bare `cargo test` without DATABASE_URL still fails with a message.)
export TRUSTFOLD_SKIP_PG ?= 1

.PHONY: test-server
test-server:
	TRUSTFOLD_SKIP_PG=0 scripts/with-postgres.sh $(CARGO) test -p trustfold-server
	TRUSTFOLD_SKIP_PG=0 scripts/with-postgres.sh $(CARGO) test -p trustfold --test server

TEST_TARGETS += test-server

# demo-server: the earnest-money flow through HTTP against a real server on the
# embedded default (a SQLite file), started in the background and stopped afterwards.
# The flow is driven by examples/earnest-money (a Rust program using only the
# `trustfold` SDK: ACH return, partial release, verified replica, export); the exported
# history is then checked offline with the `trustfold` CLI, and a tampered copy of it
# must fail at the exact event.
DEMO_SERVER_DIR ?= target/demo-server
DEMO_OUT_DIR ?= target/demo
DEMO_SERVER_ADDR ?= 127.0.0.1:18080
SERVER_TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)

.PHONY: demo-server
demo-server:
	$(CARGO) build --release -p trustfold-server -p earnest-money -p trustfold \
	    --bin trustfold-server --bin earnest-money --bin trustfold
	rm -rf $(DEMO_SERVER_DIR) && mkdir -p $(DEMO_SERVER_DIR)
	@bin=$(abspath $(SERVER_TARGET_DIR))/release; \
	( cd $(DEMO_SERVER_DIR) && exec env -u DATABASE_URL -u TRUSTFOLD_SECRETS_KEY \
	    -u TRUSTFOLD_SECRETS_KEY_FILE TRUSTFOLD_ADMIN_TOKEN=demo-admin RUST_LOG=info \
	    "$$bin/trustfold-server" --listen $(DEMO_SERVER_ADDR) --database-url trustfold.db \
	    ) > $(DEMO_SERVER_DIR)/server.log 2>&1 & \
	pid=$$!; trap 'kill -TERM $$pid 2>/dev/null; wait $$pid 2>/dev/null || true' EXIT; \
	if ! env -u TRUSTFOLD_SERVER_KEY TRUSTFOLD_URL=http://$(DEMO_SERVER_ADDR) \
	    TRUSTFOLD_ADMIN_TOKEN=demo-admin "$$bin/earnest-money" --out-dir $(DEMO_OUT_DIR); then \
	    echo "demo-server: the demo failed; the end of the server's log ($(DEMO_SERVER_DIR)/server.log):" >&2; \
	    tail -n 20 $(DEMO_SERVER_DIR)/server.log >&2; exit 1; fi; \
	out=$(DEMO_OUT_DIR); \
	printf '\n$$ trustfold verify %s --key %s --head %s\n' \
	    "$$out/earnest-money.history.json" "$$out/server-key.txt" "$$out/earnest-money.history.json.head.json"; \
	"$$bin/trustfold" verify "$$out/earnest-money.history.json" --key "$$out/server-key.txt" \
	    --head "$$out/earnest-money.history.json.head.json" --quiet; \
	printf '\n$$ trustfold verify %s ... (one digit changed; must fail)\n' "$$out/earnest-money.tampered.history.json"; \
	if "$$bin/trustfold" verify "$$out/earnest-money.tampered.history.json" --key "$$out/server-key.txt" \
	    --head "$$out/earnest-money.history.json.head.json" --quiet; then \
	    echo "demo-server: the tampered copy verified" >&2; exit 1; fi; \
	echo; echo "demo-server: database $(DEMO_SERVER_DIR)/trustfold.db, server log $(DEMO_SERVER_DIR)/server.log"; \
	echo "demo-server: serve it again with: cd $(DEMO_SERVER_DIR) && $$bin/trustfold-server --listen $(DEMO_SERVER_ADDR)"; \
	echo "demo-server: the demo tenant's API key is in $(DEMO_OUT_DIR)/api-key.txt"

DEMO_TARGETS += demo-server

# bench-server: commands/s through the HTTP API (1 and 16 clients), the raw database
# insert limit and command→SSE latency, on a throwaway PostgreSQL cluster (fsync on) and
# on a SQLite file, from one run (about 1 to 2 minutes); see docs/BENCHMARKS.md.
.PHONY: bench-server
bench-server:
	scripts/with-postgres.sh $(CARGO) bench -p trustfold-server --bench server

BENCH_TARGETS += bench-server
