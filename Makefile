# One entry point for developers and CI. `make test` is the test command (README, .ci/run).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: test lint typecheck unit tools faketime tmux sshd pcluster bench chaos soak demo clean deploy-test deploy-tools

test: lint typecheck tools unit

# $(call apt_tool,COMMAND,PACKAGE): COMMAND is there, or (as root on Debian) PACKAGE is installed, or say how.
define apt_tool
	@command -v $(1) >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's $(2) package"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(2) >/dev/null; \
	  else \
	    echo "$(1) missing: install Debian's '$(2)' package (sudo apt-get install $(2))"; exit 1; \
	  fi; }
endef

# promtool and prometheus (Debian's `prometheus` package) for the alert-rule tests and the scrape test; faketime for
# the chaos suite's operator with a slow clock; tmux for the test that drives `workset-monitor watch` in a terminal
# and for the Daylily head node, whose sshd is Debian's openssh-server (tests/headnode.py: loopback only; the package's
# own service is not started without systemd).
tools: faketime tmux sshd pcluster
	$(call apt_tool,promtool,prometheus)
	$(call apt_tool,prometheus,prometheus)

# Installed with services held back (a policy-rc.d that says no, when the machine has none): the package would
# otherwise start a system sshd on port 22 on a machine that runs services; the tests start their own on loopback.
sshd:
	@command -v /usr/sbin/sshd >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's openssh-server (its service not started)"; \
	    own=; [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; \
	      chmod +x /usr/sbin/policy-rc.d; own=1; }; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      openssh-server >/dev/null; status=$$?; [ -z "$$own" ] || rm -f /usr/sbin/policy-rc.d; exit $$status; \
	  else \
	    echo "sshd missing: install Debian's 'openssh-server' package (sudo apt-get install openssh-server)"; exit 1; \
	  fi; }

# The real `pcluster` (AWS ParallelCluster 3) and a moto server that speaks CloudFormation and EC2 for it, in a venv
# of their own made with Debian's python3, so the same venv also runs inside the Debian test containers (tests/deploy).
PCLUSTER_VENV := .tools/pcluster
pcluster: $(PCLUSTER_VENV)/.installed

$(PCLUSTER_VENV)/.installed: tests/pcluster-requirements.txt
	@/usr/bin/python3 -c 'import ensurepip' 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's python3-venv"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null; \
	  else \
	    echo "Debian's python3 cannot make a venv: install python3-venv (sudo apt-get install python3-venv)"; exit 1; \
	  fi; }
	rm -rf $(PCLUSTER_VENV) && /usr/bin/python3 -m venv $(PCLUSTER_VENV)
	$(PCLUSTER_VENV)/bin/python -m pip install --quiet -r tests/pcluster-requirements.txt
	touch $@

faketime:
	$(call apt_tool,faketime,faketime)

tmux:
	$(call apt_tool,tmux,tmux)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the project's dependency list or the pins change.
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check monitor tests bench
	$(BIN)/ruff format --check monitor tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	WM_TEST_IAM_AUDIT=1 $(BIN)/pytest -q -n auto --dist worksteal

# The daemon end to end against an embedded AWS emulator (no AWS account, loopback only).
demo: $(STAMP)
	$(BIN)/workset-monitor demo --until-idle

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# Benchmarks with budgets (exit 1 when one is missed); results and the plot go to docs/performance.md's folder.
bench: $(BENCH_STAMP)
	$(BIN)/python bench/claim.py
	$(BIN)/python bench/scan_cost.py
	$(BIN)/python bench/notify.py
	$(BIN)/python bench/operator_calls.py --json bench/results/operator-calls.json
	$(BIN)/python bench/step_logs.py --json bench/results/step-logs.json
	$(BIN)/python bench/fleet.py --json bench/results/fleet.json --plot docs/images/idle-cost.png

# The full chaos suite: 3 daemons, 300 worksets, kills, pauses, AWS faults, denied heartbeats, an operator with a slow
# clock, a notification channel down; then the calm run (the same fleet, SNS down, nothing else), which holds every
# event to 2 x the notifier's interval; then the chaos again with full step logs written to S3 through the faults.
# Exit 1 on any violation of any (~11 minutes).
# (A bounded chaos run is part of `make test`: tests/test_chaos.py.)
chaos: $(STAMP) faketime
	$(BIN)/python -m tests.chaos --worksets 300 --daemons 3 --json bench/results/chaos.json
	$(BIN)/python -m tests.chaos --worksets 300 --daemons 3 --calm --json bench/results/chaos-calm.json
	$(BIN)/python -m tests.chaos --worksets 300 --daemons 3 --step-logs --json bench/results/chaos-step-logs.json

# The soak: 2 daemons, a workset every 2 s for 30 minutes, then 5 idle; health, systemd watchdog, memory, fds, threads,
# AWS calls per workset and per idle interval, backlog; exit 1 when a bound is missed (~36 min).
# (A bounded run of the same code is part of `make test`: tests/test_soak.py.)
soak: $(BENCH_STAMP)
	$(BIN)/python -m tests.soak --minutes 30 --idle-minutes 5 --every 30 --json bench/results/soak.json --plot docs/images/soak.png

# The shipped systemd unit under a real systemd and the shipped Docker image in a real container (podman, images
# built from Debian packages on this machine, cached after the first run). Needs root; about 10 minutes.
deploy-test: $(STAMP) deploy-tools sshd tmux pcluster
	$(BIN)/python -m tests.deploy.images
	$(BIN)/pytest -q -n 2 --dist loadfile tests/deploy

deploy-tools:
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's podman, runc and debootstrap"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      podman runc debootstrap >/dev/null; \
	  else \
	    echo "podman/runc/debootstrap missing: sudo apt-get install podman runc debootstrap"; exit 1; \
	  fi; }

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache *.egg-info
