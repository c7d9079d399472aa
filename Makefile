# Two set-up commands that work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DATA ?= ../shared/datasets/fashion-product-images-small.zip
DEMO_OUT ?= demo-out

.PHONY: install lock demo test lint format browser postgres clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -c constraints.txt -e '.[all,dev]'
	touch $@

# Re-resolve the dependencies from pyproject.toml alone and pin what was installed.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q -e '.[all,dev]'
	{ sed -n '1,2p' constraints.txt; .venv-lock/bin/python -m pip freeze --exclude-editable | grep -v '^pip=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .venv-lock

install: $(VENV)/.installed

# Chromium renders the HTML report and drives the web page in tests. Installed from
# Debian's packages when missing and we may (root with apt-get); otherwise those tests say why they skip.
browser:
	@if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

# PostgreSQL runs the SQL source's tests against a real server (the tests start their own on
# 127.0.0.1). Installed from Debian's packages the same way; without it those tests say why they skip.
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	fi

demo: $(VENV)/.installed
	$(VENV)/bin/fashion-tagger quickstart $$( [ -e "$(DEMO_DATA)" ] && echo --data "$(DEMO_DATA)" ) --out $(DEMO_OUT)

test: $(VENV)/.installed browser postgres
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(PY) -m pytest -n 2 --dist loadfile

lint:
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format:
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info $(DEMO_OUT)
