# pretix-agent: the two commands a newcomer needs are `make demo` and `make test`.
# Everything runs on Debian's /usr/bin/python3 against Debian's libraries; the PyPI tier runs the
# unit tests again in a venv with current PyPI releases, and holds the lint and type tools.

SHELL := /bin/bash
PYTHON := /usr/bin/python3
# Keep pyenv's shims (first on PATH on the dev machines) out of everything we run.
export PATH := /usr/sbin:/usr/bin:/sbin:/bin
VENV := .venv
PYPI_PACKAGES := watchdog structlog psycopg redis prometheus-client pytest hypothesis pyyaml ruff mypy

# Debian packages: runtime, test components, packaging and the systemd container tier.
DEBS := python3-watchdog python3-structlog python3-psycopg python3-redis python3-pydbus python3-gi \
	python3-pytest python3-hypothesis python3-venv python3-dbusmock dbus \
	nginx-light postgresql-15 redis-server haproxy curl iproute2 \
	debhelper dh-python pybuild-plugin-pyproject python3-setuptools python3-all lintian \
	debootstrap systemd-container dpkg-dev git tzdata systemd-journal-remote \
	python3-prometheus-client prometheus python3-yaml

# What `make deb` alone needs (packaging, and the unit tests it runs), on Debian 12 and 13 alike:
# an operator on Debian 13 builds the package without the test servers (postgresql-15 is Debian 12's).
DEB_BUILD_DEBS := build-essential debhelper dh-python pybuild-plugin-pyproject python3-setuptools python3-all lintian dpkg-dev git \
	python3-pytest python3-hypothesis python3-psycopg python3-pydbus python3-redis python3-structlog python3-watchdog \
	python3-prometheus-client \
	tzdata

.PHONY: deps deb-deps demo test test-churn lint rules unit unit-pypi integration pretix bench clean readme-reference deb e2e

# $(call install-debs,PACKAGES,TARGET): apt-get install those of PACKAGES that are missing (as root).
define install-debs
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		[ "$$(id -u)" = 0 ] || { echo "make $(2): run as root to install Debian packages"; exit 1; }; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	fi
endef

deps:
	$(call install-debs,$(DEBS),deps)
	@# Debian starts the servers it installs where it can; the tests start their own.
	@echo "deps: all Debian packages present"

deb-deps:
	$(call install-debs,$(DEB_BUILD_DEBS),deb)

$(VENV)/.done: Makefile
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip $(PYPI_PACKAGES)
	touch $@

demo: deps
	$(PYTHON) -m demo

lint: $(VENV)/.done
	$(VENV)/bin/ruff check pretix_agent tests bench demo tools
	$(VENV)/bin/mypy pretix_agent

# The Prometheus rules: valid, and doing what tests/prometheus/ says over synthetic series (promtool
# comes with Debian's prometheus package on Debian 12, and is its own package on Debian 13).
rules: deps
	promtool check rules conf/prometheus/pretix-agent.rules.yml
	promtool test rules tests/prometheus/*.yml

unit:
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/unit

unit-pypi: $(VENV)/.done
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider tests/unit

integration:
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/integration

# The pretix tier: a real pretix from PyPI (venv and migrated database cached by version in
# /var/cache/pretix-agent-pretix/, built once: about 1 minute for the venv and 2 for `migrate`),
# two gunicorn nodes behind nginx, celery, PostgreSQL primary and replica, Redis, haproxy, the
# agent. About 4 minutes warm, 7 cold, on two cores.
pretix: deps
	$(PYTHON) -m tests.pretix.pretix_venv
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/pretix

test: deps lint rules unit unit-pypi integration pretix e2e

# `make test`'s tiers while tools/connection_churn.py opens and closes CHURN_RATE outbound loopback
# connections a second beside them (started and stopped by its PID; its JSON report at the end):
# no fixture may lose a port to an outbound connection. CHURN_TIERS=integration for one tier.
CHURN_RATE ?= 300
CHURN_TIERS ?= unit unit-pypi integration pretix e2e

test-churn: deps
	@set -euo pipefail; \
	report=$$(mktemp /tmp/pretix-agent-churn.XXXXXX); \
	$(PYTHON) tools/connection_churn.py --rate $(CHURN_RATE) >"$$report" & churn=$$!; \
	trap 'kill -TERM $$churn 2>/dev/null || true; wait $$churn || true; echo "connection churn: $$(cat "$$report")"; \
		rm -f "$$report"' EXIT; \
	$(MAKE) --no-print-directory $(CHURN_TIERS); \
	kill -0 $$churn 2>/dev/null || { echo "make test-churn: the churn process died early: the run proves nothing"; \
		exit 1; }; \
	kill -TERM $$churn; wait $$churn || { echo "make test-churn: the churn fell below half its rate"; exit 1; }

bench: deps
	$(PYTHON) -m bench

# The .deb (dist/), built from a copy of the tree: tracked and new files, nothing .gitignore'd (no
# venv, caches or old builds), with packaging/debian as its debian/. pyenv's shims must stay off
# PATH. lintian --pedantic --display-info must print nothing: every override in packaging/debian
# says why. (Its exit status is not used: lintian 2.116 counts its own masked tags for --fail-on info.)
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' pretix_agent/__init__.py)
DEB := dist/pretix-agent_$(VERSION)_all.deb

deb: deb-deps
	@set -euo pipefail; \
	build=$$(mktemp -d /tmp/pretix-agent-deb.XXXXXX); trap 'rm -rf "$$build"' EXIT; \
	source=$$build/pretix-agent-$(VERSION); mkdir "$$source"; \
	git ls-files -z --cached --others --exclude-standard \
		| while IFS= read -r -d '' name; do if [ -e "$$name" ]; then printf '%s\0' "$$name"; fi; done \
		| tar --null -T - -cf - | tar -C "$$source" -xf -; \
	cp -r packaging/debian "$$source/debian"; \
	(cd "$$source" && env -u PYTHONPATH PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b); \
	mkdir -p dist; cp "$$build"/pretix-agent_$(VERSION)_all.deb dist/; \
	echo "lintian --pedantic --display-info $(DEB)"; \
	report=$$(lintian --pedantic --display-info --fail-on none "$$build"/pretix-agent_$(VERSION)_*.changes 2>&1) \
		|| { echo "$$report"; echo "make deb: lintian failed"; exit 1; }; \
	report=$$(echo "$$report" | grep -v '^running with root privileges is not recommended!$$' || true); \
	if [ -n "$$report" ]; then echo "$$report"; echo "make deb: lintian is not silent"; exit 1; fi; \
	echo "built $(DEB); lintian: nothing to report"

# The end-to-end tier: that .deb installed with apt into a booted Debian 12 and a booted Debian 13
# (systemd-nspawn), and the integration tests inside Debian 13 against its components; root.
e2e: deps deb
	PRETIX_AGENT_E2E_DEB=$(DEB) $(PYTHON) -m pytest -q -p no:cacheprovider tests/e2e

readme-reference:
	$(PYTHON) tools/update_readme_reference.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
