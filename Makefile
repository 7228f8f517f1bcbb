# Convenience targets; the README's two commands are the canonical set-up.
PY ?= python

.PHONY: install demo test lint bench nightly

install:
	$(PY) -m pip install -e ".[test]"

demo: install
	produce --shelf Totten --year 2021 && icedamage validate release

test:
	$(PY) -m pytest -q -n 2

lint:
	ruff check .

# Performance targets live here, not in timed tests; results go to docs/benchmarks.md.
bench:
	for f in bench/*.py; do echo "== $$f"; PYTHONPATH=. $(PY) $$f || exit 1; done
	echo "== bench/inference.py --compile auto"
	PYTHONPATH=. $(PY) bench/inference.py --variants b2 --tta on --no-rss --compile auto

# Slow tests (excluded from the default run) plus the benchmarks.
nightly:
	$(PY) -m pytest -q -m slow || [ $$? -eq 5 ]  # exit 5: no slow tests collected
	$(MAKE) bench
