# safe-py-runner: the two commands a new user needs are `make run` and `make test`.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
PYTHON ?= /usr/bin/python3

.PHONY: all deps build quickstart run test python bench soak fuzz check-sanitize lint format install docs clean help

all: build

help:
	@echo "make run             install the missing Debian packages the build needs, build what the quick start needs, run it"
	@echo "make test            build and run every test (unit, black-box, CLI, security, Python, faults, fuzz smoke, soak smoke)"
	@echo "make python          build the Python wheel and install it (into PYTHON if it is a venv's, else build/venv)"
	@echo "make bench           every mode, back to back and paced, against this machine's floors (BENCH_ARGS=--quick);"
	@echo "                     rewrites README.md's performance table from the run (BENCH_README= to keep it)"
	@echo "make soak            50,000 runs with faults mixed in, in each isolation mode"
	@echo "make fuzz            libFuzzer on the frame, request and policy parsers (needs clang)"
	@echo "make check-sanitize  the test suite under ASan+UBSan, then TSan"
	@echo "make lint            clang-tidy and cppcheck on our sources"
	@echo "make install         install library, CLI, worker and CMake package (PREFIX=/usr/local)"
	@echo "make docs            the API reference of include/spr (Doxygen) in BUILD/docs/html"

deps:
	@scripts/install-deps.sh

# Configuring needs the build's packages only (`make run`); `make build` and `make test` install the rest.
$(BUILD)/CMakeCache.txt:
	@scripts/install-deps.sh --build
	cmake -S . -B $(BUILD) -DPython3_EXECUTABLE=$(PYTHON) $(CMAKE_FLAGS)

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

# Only what the quick start needs: the library, the worker for the default Python, the CLI and the example.
# The other Pythons' workers, the Python extension, tests and benchmark come with `make build` / `make test`.
quickstart: $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS) --target spr-quickstart spr-worker safe-py-runner

run: quickstart
	$(BUILD)/spr-quickstart

# Test time limits scale with what the machine is doing when the tests start (scripts/test-time-scale.sh;
# SPR_TEST_LOAD_SCALE=N sets it): the ctest TIMEOUTs and the tests' own hang guards and default run
# timeouts are multiplied by it (tests/CMakeLists.txt, SPR_TEST_TIME_SCALE).
test: build
	@scale=$${SPR_TEST_LOAD_SCALE:-$$(scripts/test-time-scale.sh)}; \
	echo "test time scale $$scale (load average $$(cut -d' ' -f1-3 /proc/loadavg), $$(nproc) CPUs)"; \
	cmake -S . -B $(BUILD) -DSPR_TEST_LOAD_SCALE=$$scale >/dev/null && \
	ctest --test-dir $(BUILD) --output-on-failure -j 2 --timeout $$((600 * scale))

# Builds the wheel (reusing this build folder; the backend builds only the extension and the workers) and
# installs it: into PYTHON's environment when PYTHON is a venv's python, otherwise into the venv $(PY_VENV),
# made with --system-site-packages so the caller sees Debian's numpy, pandas, distributed and matplotlib too
# (Debian's own Python refuses pip installs). A build folder serves one Python: when BUILD was configured for
# another interpreter than PYTHON's, the wheel is built in BUILD-pythonX.Y.Z instead (configured there).
PY_VENV ?= $(BUILD)/venv
python: deps
	@set -e; \
	py=$$(command -v $(PYTHON)) || { echo "PYTHON=$(PYTHON) is not a command"; exit 2; }; \
	build=$(BUILD); \
	if [ -f $$build/CMakeCache.txt ]; then \
	  cached=$$(sed -n 's/^Python3_EXECUTABLE:[A-Z]*=//p' $$build/CMakeCache.txt); \
	  if [ "$$(realpath -- "$$cached")" != "$$(realpath -- "$$py")" ]; then \
	    build=$(BUILD)-python$$($$py -c 'import platform; print(platform.python_version())'); \
	    echo "$(BUILD) is configured for $$cached: building for $(PYTHON) in $$build"; \
	  fi; \
	fi; \
	[ -f $$build/CMakeCache.txt ] || cmake -S . -B $$build -DPython3_EXECUTABLE=$$py $(CMAKE_FLAGS); \
	rm -rf $$build/dist; \
	$$py -m pip wheel --disable-pip-version-check --no-deps --no-build-isolation \
	  --config-settings build-dir=$$(realpath $$build) -w $$build/dist .; \
	if $$py -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then target=$$py; \
	else $$py -m venv --system-site-packages $(PY_VENV) && target=$(PY_VENV)/bin/python; fi; \
	$$target -m pip install --disable-pip-version-check --force-reinstall --no-deps $$build/dist/*.whl; \
	echo "safe_py_runner installed for $$target"

# Rewrites README.md's performance table (the block between <!-- spr-bench:begin/end -->) from this run;
# BENCH_README= leaves the README alone. spr-bench warns loudly when the load average is 1 or more at start.
BENCH_README ?= README.md
bench: build
	$(BUILD)/spr-bench --json $(BUILD)/bench.json --plot $(BUILD)/bench.svg --markdown $(BUILD)/bench.md \
	  $(if $(BENCH_README),--readme $(BENCH_README)) $(BENCH_ARGS)

soak: build
	$(BUILD)/spr-soak $(SOAK_ARGS)

fuzz:
	@scripts/install-deps.sh clang libclang-rt-14-dev
	bash tests/fuzz/run_fuzz.sh build-fuzz

# The sanitizers instrument our code once, in the worker for the default Python: the other Pythons' workers
# are the same sources built against other headers (SPR_PYTHONS= builds none), and the benchmark, fuzzers and
# Python extension are left out (the extension would need the sanitizer runtime preloaded into python3).
SANITIZE_FLAGS = -DSPR_PYTHONS= -DSPR_BUILD_BENCH=OFF -DSPR_BUILD_FUZZ=OFF -DSPR_BUILD_PYTHON=OFF
check-sanitize:
	@scripts/install-deps.sh
	LSAN_OPTIONS=suppressions=$(CURDIR)/tests/sanitizer/lsan.supp $(MAKE) test BUILD=build-asan CMAKE_FLAGS="-DSPR_SANITIZE=address,undefined $(SANITIZE_FLAGS) $(CMAKE_FLAGS)"
	$(MAKE) test BUILD=build-tsan CMAKE_FLAGS="-DSPR_SANITIZE=thread $(SANITIZE_FLAGS) $(CMAKE_FLAGS)"

lint: $(BUILD)/CMakeCache.txt
	@scripts/install-deps.sh clang-tidy cppcheck
	cmake -S . -B $(BUILD) -DCMAKE_EXPORT_COMPILE_COMMANDS=ON >/dev/null
	scripts/lint.sh $(BUILD)

format:
	clang-format -i $$(git ls-files '*.cpp' '*.hpp')

# Only what is installed (library, CLI, every worker): not the tests, the benchmark or the Python extension.
install: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS) --target safe_py_runner safe-py-runner spr_workers
	cmake --install $(BUILD) $(if $(PREFIX),--prefix $(PREFIX))

# Warnings are errors (docs/Doxyfile): every public name of include/spr must be documented.
docs: deps
	mkdir -p $(BUILD)/docs
	SPR_DOCS_OUT=$(abspath $(BUILD))/docs doxygen docs/Doxyfile
	@echo "API reference: $(BUILD)/docs/html/index.html"

clean:
	rm -rf $(BUILD) build-asan build-tsan build-fuzz
