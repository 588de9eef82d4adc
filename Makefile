# dlock: `make run` builds the module and starts Redis with it; `make test` runs every test.
# Both first install what is missing (scripts/deps.sh).

REDIS_SERVER ?= redis-server
CARGO ?= cargo
MODULE := target/release/libdlock.so
PORT ?= 6379

export REDIS_SERVER

.PHONY: deps build run test lint bench torture compat cluster cluster-stop

deps:
	@sh scripts/deps.sh

build: deps
	$(CARGO) build --release

# Redis in the foreground on 127.0.0.1:$(PORT) (default 6379) with redis.conf.example, which
# loads the module; says so when the port is already taken.
run: build
	@PORT=$(PORT) sh scripts/run.sh

# The whole workspace: the module and clients/rust.
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --all-targets --workspace -- -D warnings

# The benchmark's seconds-long smoke run keeps it working (with its floor module,
# benches/floor); then every test of the workspace, the Rust client's (clients/rust/tests,
# against the module `build` just made) included.
test: build lint
	$(CARGO) build --release -p dlock-floor
	$(CARGO) bench --bench dlock -- --smoke
	$(CARGO) test --profile tests --workspace

# dlock against SET NX PX, the Lua recipes and polling clients on one server, and its Python
# and Rust clients against other lock libraries, as ratios (about 15 minutes on 2 cores).
# ARGS="--only contention" runs one section; ARGS="--rounds 9" takes 9 rounds where a section takes rounds.
bench: build
	$(CARGO) build --release -p dlock-floor
	$(CARGO) bench --bench dlock -- $(ARGS)

# The long reliability run (safety checker at 100k grants, 20 crashes, 1M fuzzed commands,
# 10k waiters and 1M cycles of churn, 200k steps of the lifecycle chaos test, 10 minutes of
# the quorum checker and 10 of its Redlock contrast), printing its figures. About 45 minutes.
# FAKETIME_SERVER=path/to/redis-server (built with MALLOC=libc; needs the faketime package)
# adds the quorum checker's clock-offset fault.
torture: build
	DLOCK_TORTURE=1 FAKETIME_SERVER=$(FAKETIME_SERVER) $(CARGO) test --profile tests --test reliability --test chaos --test quorum -- --nocapture --test-threads=1

# The whole suite against each server in SERVERS (or under COMPAT_DIR), as a matrix.
compat: build
	sh scripts/compat.sh

# A local Redis Cluster (3 masters, 3 replicas on 127.0.0.1:7001-7006) with the module on
# every node; prints how to connect. `make cluster-stop` stops it and drops its data.
cluster: build
	sh scripts/cluster.sh start

cluster-stop:
	sh scripts/cluster.sh stop
