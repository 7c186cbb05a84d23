# uwsgi_ws developer entry points.
#
#   make run     install into .venv (first time only), then run the Emperor on vassals/
#                (echo :8001, chat :8002, ticker :8003) in the foreground; Ctrl-C stops it
#   make test    install into .venv (first time only), then run the test suite
#   make check   lint the shipped configs and the example vassals (python -m uwsgi_ws check)
#   make bench   the broadcast benchmark (bench/setup.sh, then bench/run.py)
#   make venv    just the install step (idempotent: a stamp file skips it when done)
#   make clean   remove .venv and build litter
#   make matrix  the core tests on Python 3.9-3.13 and the oldest/newest Flask
#                (tests/matrix/run.py; `make test` ends with it; MATRIX="py3.9 ..." picks cells)
#   make lint    ruff check uwsgi_ws tests; mypy --strict uwsgi_ws (ruff.toml, mypy.ini)
#   make docs    the documentation site (docs/, Sphinx) into build/docs/html, warnings as errors
#
# The install compiles uWSGI from its sdist (pip's `uwsgi`, never `pyuwsgi`),
# which needs gcc, the Python headers and the OpenSSL headers: without OpenSSL
# uWSGI builds fine but its websocket handshake fails at run time.

SHELL       := /bin/bash
PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
UWSGI       := $(VENV)/bin/uwsgi
STAMP       := $(VENV)/.uwsgi_ws-installed
SSL_HEADER  := /usr/include/openssl/ssl.h
PIP         := $(PY) -m pip --disable-pip-version-check
EXTRAS      ?= gevent,test
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
  .PHONY: autobahn-full
.PHONY: help venv install ssl-headers redis-server proxies chromium debian-uwsgi run check test matrix lint bench clean docs

help:
	@sed -n '3,13p' Makefile | sed 's/^# \{0,1\}//'

venv install: $(STAMP)

# Re-runs only when the stamp is missing (fresh clone, after `make clean`) or
# setup.py/pyproject.toml changed; the editable install picks up code changes
# by itself.
$(STAMP): setup.py pyproject.toml
	@$(MAKE) --no-print-directory ssl-headers
	@command -v gcc >/dev/null || command -v cc >/dev/null || { \
	  echo "error: no C compiler: pip compiles uWSGI; install gcc (Debian: apt-get install build-essential)" >&2; exit 1; }
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(PIP) install -q -e '.[$(EXTRAS)]'
	@# A uwsgi wheel cached by pip before the OpenSSL headers were installed
	@# would come back without SSL: detect that and rebuild from source.
	@if ! $(UWSGI) --help 2>/dev/null | grep -q -- '--ssl-socket'; then \
	  echo "uWSGI in $(VENV) was built without SSL: rebuilding it from source"; \
	  $(PIP) install -q --no-cache-dir --force-reinstall --no-deps --no-binary uwsgi 'uwsgi>=2.0.31' || exit 1; \
	  $(UWSGI) --help 2>/dev/null | grep -q -- '--ssl-socket' || { \
	    echo "error: uWSGI still has no SSL support; are $(SSL_HEADER) and libssl usable?" >&2; exit 1; }; \
	fi
	@echo "installed: $$($(UWSGI) --version | sed 's/^/uWSGI /') (with SSL) in $(VENV)"
	@touch $@

ssl-headers:
	@if [ -f $(SSL_HEADER) ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "$(SSL_HEADER) missing: installing libssl-dev (uWSGI needs OpenSSL for the websocket handshake)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q && apt-get install -y -q libssl-dev || exit 1; \
	  test -f $(SSL_HEADER) || { echo "error: libssl-dev installed but $(SSL_HEADER) is still missing" >&2; exit 1; }; \
	else \
	  echo "error: $(SSL_HEADER) not found." >&2; \
	  echo "  uWSGI must be compiled against OpenSSL (its websocket handshake needs it)." >&2; \
	  echo "  Install the OpenSSL development headers, then re-run make:" >&2; \
	  echo "    Debian/Ubuntu: sudo apt-get install libssl-dev" >&2; \
	  echo "    Fedora/RHEL:   sudo dnf install openssl-devel" >&2; \
	  exit 1; \
	fi

run: $(STAMP)
	@echo "The examples, once their vassals are up (Ctrl-C stops the Emperor):"
	@echo "  echo    http://127.0.0.1:8001/"
	@echo "  chat    http://127.0.0.1:8002/   (open it in two windows)"
	@echo "  ticker  http://127.0.0.1:8003/   (POST /price publishes one by hand)"
	$(UWSGI) --emperor vassals/ --die-on-term

# The config linter over the shipped configs and the example vassals
# (`python -m uwsgi_ws check`: exit status 1 on errors); `make test` runs it first.
check: $(STAMP)
	$(PY) -m uwsgi_ws check uwsgi_ws/conf vassals vassals-redis

# tests/test_proxies.py runs uwsgi_ws/conf/nginx.conf and uwsgi_ws/conf/haproxy.cfg in nginx and
# HAProxy processes of its own on free ports: install the Debian packages when
# missing (root + apt-get), and stop the system services they may have started.
proxies:
	@missing=; for bin in nginx haproxy; do \
	  command -v $$bin >/dev/null 2>&1 || [ -x /usr/sbin/$$bin ] || missing="$$missing $$bin"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "$$missing missing: installing (tests/test_proxies.py runs its own on free ports)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends $$missing || exit 1; \
	  for bin in $$missing; do (service $$bin stop || /etc/init.d/$$bin stop) >/dev/null 2>&1 || true; done; \
	else \
	  echo "error:$$missing not found: the proxy tests start their own." >&2; \
	  echo "  Debian/Ubuntu: sudo apt-get install --no-install-recommends$$missing" >&2; \
	  exit 1; \
	fi

# tests/test_redis_bridge.py starts redis-server processes of its own on free
# ports: install the binary when missing (root + apt-get), and stop the system
# service the package may have started (the tests never use it).
redis-server:
	@if command -v redis-server >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "redis-server missing: installing it (tests/test_redis_bridge.py runs its own on free ports)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends redis-server || exit 1; \
	  (service redis-server stop || /etc/init.d/redis-server stop) >/dev/null 2>&1 || true; \
	  command -v redis-server >/dev/null || { echo "error: redis-server installed but not on PATH" >&2; exit 1; }; \
	else \
	  echo "error: redis-server not found: the Redis bridge tests start their own." >&2; \
	  echo "  Debian/Ubuntu: sudo apt-get install --no-install-recommends redis-server" >&2; \
	  exit 1; \
	fi

# tests/test_browser.py drives the chat demo in Debian's headless Chromium through
# Playwright (the pip package: its driver only, never `playwright install`): install
# the package when missing (root + apt-get). UWSGI_WS_CHROMIUM names another binary.
chromium:
	@if [ -n "$$UWSGI_WS_CHROMIUM" ] || command -v chromium >/dev/null 2>&1 || [ -x /usr/lib/chromium/chromium ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "chromium missing: installing it (tests/test_browser.py runs the chat page in it, headless)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends chromium || exit 1; \
	  [ -x /usr/lib/chromium/chromium ] || command -v chromium >/dev/null || { echo "error: chromium installed but not found" >&2; exit 1; }; \
	else \
	  echo "error: chromium not found: the browser tests run the chat page in it (headless)." >&2; \
	  echo "  Debian: sudo apt-get install --no-install-recommends chromium" >&2; \
	  echo "  or set UWSGI_WS_CHROMIUM to a Chromium/Chrome binary (Playwright's own download is not used)" >&2; \
	  exit 1; \
	fi

# The suite runs with the native fan-out helper (built by the install), then the
# broadcast tests again on the pure-Python path (UWSGI_WS_PURE=1).
test: $(STAMP) check redis-server proxies chromium debian-uwsgi
	$(PY) -m pytest -q tests $(PYTEST_ARGS)
	UWSGI_WS_PURE=1 $(PY) -m pytest -q tests/test_broadcast.py $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory matrix

# tests/test_debian.py runs the vassals and configs under Debian's packaged uWSGI
# (uwsgi-core 2.0.21 + plugins in Debian 12, Debian's python3 and its packages of
# the dependencies): install them when missing (root + apt-get). Not Debian: the
# test skips itself.
DEBIAN_PACKAGES := uwsgi-core uwsgi-plugin-python3 uwsgi-plugin-gevent-python3 \
                   python3-flask python3-wsproto python3-yaml python3-gevent
debian-uwsgi:
	@if [ ! -f /etc/debian_version ]; then exit 0; fi; \
	if [ -x /usr/bin/uwsgi-core ] && [ -f /usr/lib/uwsgi/plugins/gevent_python3_plugin.so ] && \
	   /usr/bin/python3 -c 'import flask, wsproto, yaml, gevent' 2>/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "Debian's uWSGI missing: installing it (tests/test_debian.py runs the vassals under it)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends $(DEBIAN_PACKAGES) || exit 1; \
	else \
	  echo "error: Debian's packaged uWSGI is missing: tests/test_debian.py needs it." >&2; \
	  echo "  sudo apt-get install --no-install-recommends $(DEBIAN_PACKAGES)" >&2; \
	  exit 1; \
	fi

# The version matrix: tests/matrix/run.py builds .venv/matrix/<cell>/ once per cell
# (a uWSGI compiled for that Python; pip's wheel cache keeps it across clean
# clones) and runs the core tests in each. MATRIX picks cells (`make matrix
# MATRIX="py3.9 flask-oldest"`; `MATRIX=` runs none); `tests/matrix/run.py --list`
# lists them.
MATRIX ?= all
matrix: $(STAMP)
	@if [ -z "$(strip $(MATRIX))" ]; then echo "matrix: skipped (MATRIX is empty)"; exit 0; fi; \
	$(PY) tests/matrix/run.py $(filter-out all,$(MATRIX))

# ruff (ruff.toml) over the package and the tests, mypy --strict (mypy.ini) over
# the package; the tools are pinned and installed into .venv on first use.
LINT_TOOLS := ruff==0.17.6 mypy==2.4.1 types-PyYAML
lint: $(STAMP)
	@$(PY) -c 'import sys, importlib.metadata as m; sys.exit(any(m.version(n) != v for n, v in (("ruff", "0.17.6"), ("mypy", "2.4.1"))))' 2>/dev/null || \
	  $(PIP) install -q $(LINT_TOOLS)
	@status=0; \
	echo "== ruff check uwsgi_ws tests"; $(VENV)/bin/ruff check uwsgi_ws tests || status=1; \
	echo "== mypy uwsgi_ws (strict: mypy.ini)"; $(VENV)/bin/mypy uwsgi_ws || status=1; \
	exit $$status

# The documentation site: Sphinx (furo theme, MyST for the Markdown guides, autodoc for the API
# reference) with warnings as errors, so a broken link, a page outside the table of contents or a
# public name without a docstring fails; .ci/run's lint step runs it. The tools come with the
# `test` extra (the `docs` extra alone: pip install -e '.[docs]').
DOCS_TOOLS := 'sphinx>=7.2,<10' 'furo>=2024.1' 'myst-parser>=3,<6'
docs: $(STAMP)
	@$(PY) -c 'import sphinx, furo, myst_parser' 2>/dev/null || $(PIP) install -q $(DOCS_TOOLS)
	$(PY) -m sphinx -b html -W --keep-going -q -E docs build/docs/html
	@echo "docs: build/docs/html/index.html"

# Autobahn|Testsuite's permessage-deflate sections in full (216 cases per model;
# `make test` runs a cover of them: tests/test_autobahn.py says which).
autobahn-full: $(STAMP)
	UWSGI_WS_AUTOBAHN_FULL=1 $(PY) -m pytest -q tests/test_autobahn.py -k compression $(PYTEST_ARGS)

# Coverage-guided fuzzing of the frame decoder, exploring (tests/fuzz/fuzz_protocol.py): atheris
# with a random seed for FUZZ_TIME seconds, new inputs kept in reports/fuzz/corpus (not in git), a
# finding saved as reports/fuzz/crash-<sha1> and the run stopped. CI runs a seeded, bounded and so
# deterministic run instead (tests/test_fuzz_protocol.py::test_atheris_bounded_run).
FUZZ_TIME ?= 600
.PHONY: fuzz mutation mutation-group
fuzz: $(STAMP)
	@mkdir -p reports/fuzz/corpus
	$(PY) tests/fuzz/fuzz_protocol.py -max_total_time=$(FUZZ_TIME) -max_len=4096 -timeout=60 \
	  -print_final_stats=1 -artifact_prefix=reports/fuzz/ reports/fuzz/corpus tests/fuzz/corpus

# Mutation testing with mutmut (pinned; docs/mutation.md has the scores and the survivors looked
# at). Not in CI: over an hour on 2 busy cores. Each group is mutated in a copy of the tree at
# MUTATION_REV (git archive: files being edited count as committed) under reports/mutation/<group>,
# with its pure tests; `mutmut results` / `mutmut show <mutant>` there. MUTATION_GROUPS picks groups.
MUTMUT          := mutmut==3.8.1
MUTATION_REV    ?= HEAD
MUTATION_GROUPS ?= engine ring hub mule
MUTATION_DIR    := reports/mutation
MUT_SRC_engine  := uwsgi_ws/protocol.py uwsgi_ws/frames.py
MUT_TEST_engine := tests/test_protocol.py tests/test_deflate.py tests/test_fuzz_protocol.py tests/test_mutation_engine.py
MUT_SRC_ring    := uwsgi_ws/broadcast/ring.py
MUT_TEST_ring   := tests/test_broadcast_ring.py tests/test_devserver_local.py
MUT_SRC_hub     := uwsgi_ws/broadcast/hub.py
MUT_TEST_hub    := tests/test_testclient_examples.py tests/test_devserver_local.py
MUT_SRC_mule    := uwsgi_ws/broadcast/mule.py
MUT_TEST_mule   := tests/test_mutation_mule.py
mutation: $(STAMP)
	@$(PY) -c 'import importlib.metadata as m, sys; sys.exit(m.version("mutmut") != "3.8.1")' 2>/dev/null || \
	  $(PIP) install -q '$(MUTMUT)'
	@mkdir -p $(MUTATION_DIR) && : > $(MUTATION_DIR)/summary.txt
	@for group in $(MUTATION_GROUPS); do $(MAKE) --no-print-directory mutation-group GROUP=$$group || exit 1; done
	@cat $(MUTATION_DIR)/summary.txt

mutation-group:
	@test -n "$(MUT_SRC_$(GROUP))" || { echo "error: unknown mutation group '$(GROUP)' (engine ring hub mule)" >&2; exit 1; }
	@dir=$(MUTATION_DIR)/$(GROUP); rm -rf $$dir && mkdir -p $$dir && git archive $(MUTATION_REV) | tar -x -C $$dir && \
	{ echo '[mutmut]'; echo 'source_paths = uwsgi_ws'; echo 'only_mutate ='; \
	  for f in $(MUT_SRC_$(GROUP)); do echo "    $$f"; done; \
	  echo 'pytest_add_cli_args_test_selection ='; for t in $(MUT_TEST_$(GROUP)); do echo "    $$t"; done; \
	  printf 'also_copy =\n    examples\n'; \
	  printf 'pytest_add_cli_args =\n    -p\n    no:cacheprovider\n    -k\n    not atheris\n    --hypothesis-seed=0\n'; \
	} > $$dir/setup.cfg && \
	echo "mutation $(GROUP): $(MUT_SRC_$(GROUP)) at $$(git rev-parse --short $(MUTATION_REV)), tests $(MUT_TEST_$(GROUP))" && \
	(cd $$dir && FUZZ_EXAMPLES=50 $(abspath $(VENV))/bin/mutmut run --max-children 1 > mutmut.log 2>&1; \
	 $(abspath $(VENV))/bin/mutmut results --all true > results.txt; \
	 tr '\r' '\n' < mutmut.log | grep -a '🎉' | tail -1 | sed "s|^|$(GROUP) ($(MUT_SRC_$(GROUP))): |") \
	  | tee -a $(MUTATION_DIR)/summary.txt

bench: $(STAMP)
	bash bench/setup.sh && $(PY) bench/run.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
	find . -path ./$(VENV) -prune -o -path ./bench -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf
