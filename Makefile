# The one gate a person runs before pushing; .ci/run runs exactly `make test`.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test setup fmt-check clippy unit sim-soak bench demo

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
	FLOTILLA_SIM_SEEDS=$(SEEDS) $(CARGO) test -p flotilla-engine --test sim

# Benchmarks run optimized (the bench profile): the first run builds RocksDB in release once.
bench:
	$(CARGO) bench -p flotilla-engine --bench raft_group --bench group_commit
	$(CARGO) bench -p flotilla-transport --bench transport

# The local 3-node cluster arrives with the node (issue "The node"). Until then this runs one
# seed of the simulator: three Raft replicas under faults with a client load, narrated.
demo: setup
	FLOTILLA_SIM_SEED=$${SEED:-1} FLOTILLA_SIM_VERBOSE=1 $(CARGO) test -p flotilla-engine --test sim simulate_seeds -- --nocapture
