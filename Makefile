# The one gate a person runs before pushing; .ci/run runs exactly `make test`.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test setup fmt-check clippy unit sim-soak bench demo bench-cluster idle-cost nemesis fuzz

test: setup fmt-check clippy unit

# What a fresh machine needs: libclang for RocksDB's bindings (bindgen).
setup:
	@./deploy/scripts/setup.sh

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace

# A longer simulator soak: `make sim-soak SEEDS=20000`. Same profile as the tests (dependencies
# optimized, our code at opt-level 1 with debug assertions), so RocksDB is not built again.
SEEDS ?= 20000
sim-soak:
	FLOTILLA_SIM_SEEDS=$(SEEDS) FLOTILLA_STORE_SIM_SEEDS=$$(( $(SEEDS) / 50 )) $(CARGO) test -p flotilla-engine --test sim

# Benchmarks run optimized (the bench profile): the first run builds RocksDB in release once.
bench:
	$(CARGO) bench -p flotilla-engine --bench raft_group --bench group_commit
	$(CARGO) bench -p flotilla-transport --bench transport

# A local 3-node cluster (three processes on loopback, data under DEMO_DIR) and a short demo
# load that prints what it did. The cluster keeps running: `flotilla cluster down --dir DIR`.
DEMO_DIR ?= ./data/local
FLOTILLA = $(CARGO) run -q -p flotilla-tools --bin flotilla --
BIN = $${CARGO_TARGET_DIR:-target}/debug/flotilla
demo: setup
	$(CARGO) build -p flotilla-tools --bin flotilla
	@$(FLOTILLA) cluster down --dir $(DEMO_DIR) >/dev/null 2>&1 || true
	$(FLOTILLA) cluster up --nodes 3 --dir $(DEMO_DIR) --detach
	@set -a && . $(DEMO_DIR)/env && set +a && $(FLOTILLA) demo && $(FLOTILLA) status
	@echo
	@echo "The cluster keeps running. The binary is $(BIN); try:"
	@echo "  $(BIN) put hello world && $(BIN) get hello"
	@echo "Stop it with: $(BIN) cluster down --dir $(DEMO_DIR)"

# The 64-writer load of the node issue against a fresh local cluster (optimized build, so the
# first run builds RocksDB in release).
BENCH_DIR ?= ./data/bench
bench-cluster: setup
	$(CARGO) build --release -p flotilla-tools --bin flotilla
	@$(CARGO) run --release -q -p flotilla-tools --bin flotilla -- cluster down --dir $(BENCH_DIR) >/dev/null 2>&1 || true
	rm -rf $(BENCH_DIR)
	$(CARGO) run --release -q -p flotilla-tools --bin flotilla -- cluster up --dir $(BENCH_DIR) --detach --base-port 7101 --status-base-port 9201
	set -a && . $(BENCH_DIR)/env && set +a && $(CARGO) run --release -q -p flotilla-tools --bin flotilla -- bench --writers 64 --value-size 256 --seconds $${SECONDS_RUN:-20}; \
	  status=$$?; $(CARGO) run --release -q -p flotilla-tools --bin flotilla -- cluster down --dir $(BENCH_DIR); exit $$status

# What idle ranges cost: CPU and memory of a local 3-node cluster with RANGES quiet user ranges
# (debug profile, as make demo), measured against a 1-range cluster. `make idle-cost RANGES=10000`.
RANGES ?= 10000
idle-cost: setup
	$(CARGO) build -p flotilla-tools --bin flotilla
	./deploy/scripts/idle-cost.sh $(RANGES) $${WINDOW:-30}

# The nemesis on real processes (tools/tests/process/nemesis.rs): `make nemesis DURATION=1800
# SEED=42 NODES=5`. `make test` runs a 60 s one with a fresh seed. A failing run prints its seed
# and leaves the history, the fault log and the nodes' logs in OUT.
DURATION ?= 1800
NODES ?= 5
CLIENTS ?= 4
SEED ?= $$(date +%s)
nemesis: setup
	FLOTILLA_NEMESIS_SEED=$(SEED) FLOTILLA_NEMESIS_SECONDS=$(DURATION) FLOTILLA_NEMESIS_NODES=$(NODES) \
	  FLOTILLA_NEMESIS_CLIENTS=$(CLIENTS) FLOTILLA_NEMESIS_OUT=$${OUT:-} \
	  $(CARGO) test -p flotilla-tools --test process nemesis::run -- --nocapture

# cargo-fuzz over every decoder of bytes from a peer, a client or the disk (nightly; installs
# cargo-fuzz when missing): FUZZ_SECONDS per target, corpora under transport/fuzz/corpus and
# engine/fuzz/corpus. The first run builds RocksDB again (a nightly, sanitized profile).
FUZZ_SECONDS ?= 60
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd transport/fuzz && for t in $$(cargo +nightly fuzz list); do \
	  cargo +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; done
	cd engine/fuzz && for t in $$(cargo +nightly fuzz list); do \
	  cargo +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; done
