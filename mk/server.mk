# trustfold-server: the event store contract suite on SQLite and on a throwaway
# PostgreSQL cluster (scripts/with-postgres.sh starts it, exports DATABASE_URL, runs the
# tests, and deletes the cluster). Included by the root Makefile via `-include mk/*.mk`.

CARGO ?= cargo

# The root `cargo test --workspace` step has no DATABASE_URL, and the server's
# PostgreSQL tests fail loudly without one. Inside make they are skipped knowingly there,
# because `test-server` below runs them against a real cluster in the same `make test`.
# (Outside make, a bare `cargo test` without DATABASE_URL still fails with a message.)
export TRUSTFOLD_SKIP_PG ?= 1

.PHONY: test-server
test-server:
	TRUSTFOLD_SKIP_PG=0 scripts/with-postgres.sh $(CARGO) test -p trustfold-server

TEST_TARGETS += test-server
