# nfc: `make demo` and `make test` do all the set-up on a fresh Debian
# machine (run as root so apt can install what is missing).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
APT_PACKAGES := nftables iptables conntrack iproute2 python3-nftables python3-venv groff-base kmod procps systemd zsh dnsmasq-base dnsperf bind9-dnsutils nginx-light wrk apache2-utils
# nginx-light is the web server of tests/test_netns_web_software.py, which
# runs its own nginx (own config, in a temporary directory) inside the test's
# namespaces. Installed, the package would start a system nginx on the host's
# port 80 and enable it at boot: system-deps keeps it from starting (a
# policy-rc.d that denies every start, for the length of the install, where
# the host has none of its own; systemd's deb-systemd-invoke honours it too)
# and disables it at boot. A host that already has an nginx (any flavour)
# keeps it: nginx-light is not installed over it, nor is that nginx touched.
# The package's postinst gives its logs to www-data, which minimal images
# lack: the system user is created first where it is missing.
INSTALLED := $(VENV)/.installed
POLICIES := $(wildcard policies/*.yaml)
# where install-system puts the boot unit, shell completion and the policy
# schema; DESTDIR stages them for a package instead
PREFIX ?= /usr/local
DESTDIR ?=
UNIT_DIR ?= $(PREFIX)/lib/systemd/system
BASH_COMPLETION_DIR ?= $(PREFIX)/share/bash-completion/completions
ZSH_COMPLETION_DIR ?= $(PREFIX)/share/zsh/site-functions
SCHEMA_DIR ?= $(PREFIX)/share/nfc

.PHONY: demo test develop install install-system system-deps lint bench clean

demo: develop
	@for p in $(POLICIES); do \
	  name=$$(basename $$p .yaml); \
	  $(BIN)/nfc compile $$p -o build/$$name || exit $$?; \
	  echo "compiled $$p -> build/$$name/"; \
	done
	@if [ "$$(id -u)" = 0 ]; then \
	  for p in $(POLICIES); do \
	    name=$$(basename $$p .yaml); \
	    unshare -n nft -c -f build/$$name/ruleset.nft || exit 3; \
	  done; \
	  echo "the kernel accepts every ruleset (nft -c in a throwaway namespace)"; \
	fi
	@echo; echo "== build/dns-recursive/ruleset.nft =="; cat build/dns-recursive/ruleset.nft

test: develop
	$(BIN)/python -m pytest -q tests

# mypy --strict checks compiler/ as the package nfc, through a link
# (pyproject's [tool.mypy] says why). tests/ are not type-checked: pytest runs
# every line of them, and their asserts narrow Optional values in ways mypy
# does not follow, so checking them would add casts, not find bugs.
lint: develop
	$(BIN)/ruff check compiler grammar tests bench
	$(BIN)/ruff format --check compiler
	@# the package nfc as setuptools maps it: compiler/, with grammar/ as nfc.grammar
	@rm -rf build/typecheck && mkdir -p build/typecheck/nfc
	@for f in compiler/*; do ln -s "$(CURDIR)/$$f" build/typecheck/nfc/; done
	@ln -s "$(CURDIR)/grammar" build/typecheck/nfc/grammar
	$(BIN)/mypy

bench: develop
	$(BIN)/python bench/compile.py

# What demo, test and lint need: this checkout's nfc in the venv, on PATH
# and its man pages. Nothing that changes how the host boots.
develop: $(INSTALLED)
	@# put this checkout's nfc on PATH (as root), whichever checkout ran last
	@if [ "$$(id -u)" = 0 ] && [ -d /usr/local/bin ]; then ln -sfn "$(CURDIR)/$(BIN)/nfc" /usr/local/bin/nfc; fi
	@# and its man pages, so that man nfc and man nfc-policy work
	@if [ "$$(id -u)" = 0 ] && [ -d /usr/local/share/man ]; then \
	  mkdir -p /usr/local/share/man/man1 /usr/local/share/man/man5 && \
	  ln -sfn "$(CURDIR)/man/nfc.1" /usr/local/share/man/man1/nfc.1 && \
	  ln -sfn "$(CURDIR)/man/nfc-policy.5" /usr/local/share/man/man5/nfc-policy.5; \
	fi

# develop, plus the boot unit (enabled where systemd runs), the shell
# completion and the policy schema
install: develop
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory install-system; fi

# Copies, not links: systemd wants a unit file of its own, and a package
# built with DESTDIR must not point into this checkout. nfc.service is
# enabled only where systemd runs (PID 1: /run/systemd/system exists), so
# that the next boot restores the last confirmed ruleset; in a container
# without systemd the files are installed and nothing else happens.
install-system:
	install -D -m 0644 dist/nfc.service "$(DESTDIR)$(UNIT_DIR)/nfc.service"
	install -D -m 0644 dist/nfc.bash "$(DESTDIR)$(BASH_COMPLETION_DIR)/nfc"
	install -D -m 0644 dist/_nfc "$(DESTDIR)$(ZSH_COMPLETION_DIR)/_nfc"
	install -D -m 0644 compiler/nfc-policy.schema.json "$(DESTDIR)$(SCHEMA_DIR)/nfc-policy.schema.json"
	@if [ -n "$(DESTDIR)" ]; then :; \
	elif [ -d /run/systemd/system ]; then systemctl daemon-reload && systemctl enable nfc.service; \
	else echo "nfc.service installed, not enabled: systemd is not running here"; fi

$(INSTALLED): pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	@# Debian's python3-nftables matches the system libnftables1; PyPI only
	@# has an older copy without dry-run, so link Debian's into the venv.
	@if ! $(BIN)/python -c 'import nftables' 2>/dev/null; then \
	  src=$$(dpkg -L python3-nftables 2>/dev/null | grep '/nftables/__init__.py$$' | head -n 1); \
	  site=$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	  if [ -n "$$src" ]; then ln -sfn "$$(dirname "$$src")" "$$site/nftables"; \
	  else echo "warning: python3-nftables is not installed; nfc falls back to the nft command"; fi; \
	fi
	touch $@

system-deps:
	@command -v dpkg-query >/dev/null || { echo "not a Debian system: install $(APT_PACKAGES) yourself"; exit 0; }; \
	missing=""; nginx=""; \
	for p in $(APT_PACKAGES); do \
	  if [ $$p = nginx-light ] && [ -x /usr/sbin/nginx ]; then continue; fi; \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages:$$missing (run as root to install them)"; exit 1; fi; \
	  echo "installing:$$missing"; \
	  case " $$missing " in *" nginx-light "*) nginx=yes;; esac; \
	  if [ -n "$$nginx" ]; then \
	    getent group www-data >/dev/null || groupadd --system www-data || exit 1; \
	    getent passwd www-data >/dev/null || useradd --system --gid www-data --home-dir /var/www \
	      --no-create-home --shell /usr/sbin/nologin www-data || exit 1; \
	    if [ ! -e /usr/sbin/policy-rc.d ]; then \
	      printf '#!/bin/sh\n# nfc system-deps: no service starts during its install\nexit 101\n' > /usr/sbin/policy-rc.d; \
	      chmod 0755 /usr/sbin/policy-rc.d; trap 'rm -f /usr/sbin/policy-rc.d' EXIT; \
	    fi; \
	  fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing || exit $$?; \
	  if [ -n "$$nginx" ]; then \
	    if [ -d /run/systemd/system ]; then systemctl disable --now nginx.service; \
	    else update-rc.d nginx disable >/dev/null 2>&1 || true; fi; \
	  fi; \
	fi

clean:
	rm -rf build .pytest_cache
