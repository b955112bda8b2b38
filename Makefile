# auditgap: the two commands of the README do every set-up step themselves.
#   make diagnose   venv + packages, then playbooks/diagnose.yml on this machine
#   make test       the same, plus the apt packages the tests need, then every test and linter
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PYTHON ?= python3
# Debian packages: what diagnose can use on this host, and what the tests drive for real.
APT_RUN := auditd
APT_TEST := auditd docker.io busybox-static chromium iproute2 openssh-server procps util-linux \
	prometheus prometheus-node-exporter prometheus-alertmanager
# The stamp's name carries pyproject.toml's hash: a change of its contents (not of its
# mtime, e.g. a checkout) reinstalls.
STAMP := $(VENV)/.installed-$(shell md5sum < pyproject.toml | cut -c1-12)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_NOCOLOR := 1

.PHONY: diagnose test test-fast test-collection test-vm lint sanity bench setup apt-run apt-test clean

setup: $(STAMP)

# Debian's python3 has the venv module without ensurepip (python3-venv): `venv --help`
# works there, creating a venv does not (and leaves one without pip behind).
$(STAMP):
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; }
	@$(PY) -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -U pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

apt-run:
	@scripts/apt-ensure $(APT_RUN)

apt-test:
	@scripts/apt-ensure $(APT_TEST)

diagnose: setup apt-run
	$(BIN)/ansible-playbook playbooks/diagnose.yml $(ARGS)
	@echo "Report: $$(readlink -f reports/latest)"

test: setup apt-test
	$(BIN)/pytest tests $(PYTEST_ARGS)
	$(MAKE) test-collection lint sanity
	$(MAKE) test-vm

# Molecule scenarios in real VMs (QEMU/libvirt/Vagrant; the scripts install and
# start what they need). All scenarios (default, immutable, ftrace, fleet_audit) unless SCENARIOS names some.
test-vm: setup
	VENV=$(VENV) scripts/test-vm $(SCENARIOS)

test-fast: setup
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

# The collection as users get it: ansible-galaxy build + install of the tarball, then
# ansible-doc, plugin imports and playbook auditgap.fleet.diagnose from the installed copy.
test-collection: setup
	$(PY) scripts/test-collection

lint: setup
	$(BIN)/ansible-lint --profile production
	$(BIN)/ruff check plugins auditgap tests benchmarks
	$(BIN)/ruff check --no-cache scripts/test-collection scripts/gen-syscall-tables scripts/offline-get-pip.py
	@if git grep -nE '^# *(ruff|flake8): *noqa' -- '*.py' scripts; then echo 'file-wide noqa above: fix the code or use a line-level noqa'; exit 1; fi
	$(BIN)/antsibull-changelog lint
	$(BIN)/antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml

sanity: setup
	@scripts/sanity $(BIN)

bench: setup apt-test
	@status=0; for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || status=1; done; exit $$status

clean:
	rm -rf $(VENV) build .pytest_cache
