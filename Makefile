# berth: `make run` starts a demo server, `make test` is the whole truth (CI runs it).
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help deps build test run bench lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

deps: ## install what is missing (apt packages, buf)
	@scripts/deps.sh

build: deps ## build every crate
	cargo build --workspace --all-targets --locked
	scripts/build-agent.sh

lint: deps ## buf lint + format check
	node_modules/.bin/buf lint
	node_modules/.bin/buf format --diff --exit-code

test: ## install, start the testbed, run unit + end-to-end tests and proto checks, stop everything
	@scripts/test.sh

run: ## start containerd (if none answers), a registry with a demo image, and berth on 127.0.0.1:50051
	@scripts/run.sh

bench: ## berth vs ctr: create, cold pull, stop (medians and ratios; not part of make test)
	@scripts/bench.sh

clean: ## stop the testbed and remove everything it made (.testbed, .berth)
	-tests/testbed/down.sh
	rm -rf .testbed .berth
