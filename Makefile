# seq2edge: `make demo` and `make test` work on a fresh clone; everything installs into .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
BASE   := $(VENV)/.base-installed
FULL   := $(VENV)/.full-installed
# The torch wheel on these machines is a local CPU build; an unpinned torch pulls the CUDA build.
TORCH  ?= torch==2.13.0

# Quiet installs: pip's progress and setuptools' editable-install banner are not what a newcomer
# running `make demo` needs to read (errors still show).
PIP        := PYTHONWARNINGS=ignore $(BIN)/python -m pip --disable-pip-version-check -q

BUNDLE     := models/g2p-en
CHECKPOINT := models/g2p-en-checkpoint
# The shipped models' training recipes are files (recipes/*.yaml, `seq2edge train --config`); their
# cards (models/NAME/README.md) give the figures. TRAIN_ARGS adds or overrides options, e.g. TRAIN_ARGS="--seed 3".
TRAIN_ARGS ?=

# The small model: a GRU student distilled in six cycles (models/g2p-en-small/README.md), taught by the
# shipped model (cycles 1-4) and then by an ensemble of it and two more models trained with its recipe from
# other seeds (cycles 5-6). The teachers' outputs are cached for all cycles in build/g2p-en-small-teacher/.
SMALL            := models/g2p-en-small
SMALL_CHECKPOINT := models/g2p-en-small-checkpoint
SMALL_RECIPES    := recipes/g2p-en-small
EXTRA_WORDS      := build/english-words.txt

JS_DEPS := hosts/js/node_modules/.installed

.PHONY: install install-gpu js c demo train export eval train-small export-small test test-fast soak lint docs bench bench-quick device-check clean

$(BASE): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e .
	touch $@

$(FULL): pyproject.toml $(BASE)
	$(PIP) install "$(TORCH)"
	$(PIP) install -e '.[train,plot,bench,dev,ray]'
	touch $@

install: $(FULL)

# The JavaScript host's packages (onnxruntime-node, onnxruntime-web, playwright-core for the browser test).
# --ignore-scripts: onnxruntime-node's postinstall downloads CUDA binaries; its CPU binaries are in the package.
$(JS_DEPS): hosts/js/package.json hosts/js/package-lock.json
	@if command -v npm >/dev/null; then cd hosts/js && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	 else echo "npm not found: the JavaScript host tests will be skipped (install Node.js 18+)"; fi

js: $(JS_DEPS)

# The native host (hosts/c/): libseq2edge.so, seq2edge-c and seq2edge.h in hosts/c/build/. deps.sh installs the
# Debian packages it builds with where one is missing, takes onnxruntime's C header from Debian's libonnxruntime-dev
# and the library from the onnxruntime wheel in .venv (docs/hosts.md, "C and C++").
C_HOST := hosts/c/build/seq2edge-c
$(C_HOST): $(BASE) $(wildcard hosts/c/src/* hosts/c/include/* hosts/c/cli/*) hosts/c/Makefile hosts/c/deps.sh
	@PYTHON=$(abspath $(BIN)/python) hosts/c/deps.sh
	@$(MAKE) -s -C hosts/c

c: $(C_HOST)

# onnxruntime-gpu provides the same module as onnxruntime: remove the CPU package, then
# reinstall the GPU one so that its files are the ones left in place.
install-gpu: $(FULL)
	$(PIP) uninstall -y onnxruntime onnxruntime-gpu
	$(PIP) install --force-reinstall --no-deps 'onnxruntime-gpu>=1.17'
	$(PIP) install -e '.[gpu]'
	$(BIN)/seq2edge info $(BUNDLE)

demo: $(BASE)
	@$(BIN)/seq2edge decode $(BUNDLE) attention onnx edge device phoneme pronunciation tokenizer Knightley

# Training writes the shipped checkpoint anew and `seq2edge train` refuses a directory that holds a
# model: say so before hours of training rather than after (train-small's last cycle writes it).
fresh = @test ! -e $(1)/model.safetensors || { echo "$(1) holds the shipped model: remove it (rm -r $(1)) to train it anew"; exit 2; }

train: $(FULL)
	$(call fresh,$(CHECKPOINT))
	$(BIN)/seq2edge train --config recipes/g2p-en.yaml $(TRAIN_ARGS) --out $(CHECKPOINT)

# export --force replaces the bundle's files and keeps the others (the model card).
export: $(FULL)
	$(BIN)/seq2edge export $(CHECKPOINT) $(BUNDLE) --int8 --greedy-graph --force

eval: $(FULL)
	$(BIN)/seq2edge eval $(BUNDLE) --split test
	$(BIN)/seq2edge eval $(BUNDLE) --split test --beam 5

train-small: $(FULL) $(EXTRA_WORDS)
	$(call fresh,$(SMALL_CHECKPOINT))
	for n in 1 2 3 4; do $(BIN)/seq2edge train --config $(SMALL_RECIPES)/cycle$$n.yaml $(TRAIN_ARGS) --out build/g2p-en-small-cycle$$n || exit; done
	for m in member2 member3; do $(BIN)/seq2edge train --config $(SMALL_RECIPES)/$$m.yaml --out build/g2p-en-$$m && \
	    $(BIN)/seq2edge export build/g2p-en-$$m build/g2p-en-$$m-bundle --force || exit; done
	$(BIN)/seq2edge train --config $(SMALL_RECIPES)/cycle5.yaml $(TRAIN_ARGS) --out build/g2p-en-small-cycle5
	$(BIN)/seq2edge train --config $(SMALL_RECIPES)/cycle6.yaml $(TRAIN_ARGS) --out $(SMALL_CHECKPOINT)

# Unlabelled words for the fourth cycle: wordfreq's list is data inside the package (msgpack), nothing is downloaded.
$(EXTRA_WORDS): | $(FULL)
	$(BIN)/python -c "import wordfreq" 2>/dev/null || $(PIP) install 'wordfreq>=3.1'
	$(BIN)/python -m seq2edge.train.english_words $@ --count 120000

export-small: $(FULL)
	$(BIN)/seq2edge export $(SMALL_CHECKPOINT) $(SMALL) --int8 --greedy-graph --force
	$(BIN)/seq2edge eval $(SMALL) --split test --precision int8

test: $(FULL) $(JS_DEPS) $(C_HOST)
	$(BIN)/python -m pytest -q -x -rs --durations=15

# The edit-and-test loop, about 75 seconds: tokenisers, search, schema, runtime, decode CLI and the reliability
# battery, on one tiny model trained in seconds. No installs (run `make install` once), no toolkits, browser,
# wheel, distillation or shipped-model tests: `make test` stays the whole suite.
FAST_TESTS := tests/test_search.py tests/test_schema.py tests/test_runtime.py tests/test_model.py tests/test_data.py \
              tests/test_docs.py tests/test_quantize.py tests/test_side_effects.py tests/test_device_path.py \
              tests/test_decode_cli.py tests/test_reliability.py tests/test_conformance.py
test-fast:
	@test -x $(BIN)/python || { echo "test-fast installs nothing: run make install first"; exit 2; }
	$(BIN)/python -m pytest -q -x -rs $(FAST_TESTS)

# 20,000 decodes from 8 threads against serial results, with memory growth measured (docs/reliability.md)
soak: $(FULL)
	$(BIN)/python -m pytest -q -s -m slow tests/test_load.py

# The option references in docs/*.md, rewritten from each command's --help (a test fails when they differ).
docs: $(FULL)
	$(BIN)/python tools/cli_reference.py

lint: $(FULL)
	$(BIN)/ruff check runtime train export bench tests examples tools

bench: $(FULL) $(JS_DEPS)
	$(BIN)/seq2edge bench $(BUNDLE) $(SMALL) --checkpoint $(CHECKPOINT) --checkpoint $(SMALL_CHECKPOINT) \
	    --json bench.json --plot bench.png
	$(BIN)/python -m seq2edge.bench.subnormals $(SMALL_CHECKPOINT)

bench-quick: $(FULL) $(JS_DEPS)
	$(BIN)/seq2edge bench $(BUNDLE) $(SMALL) --checkpoint $(CHECKPOINT) --checkpoint $(SMALL_CHECKPOINT) --quick

# Decode under an emulated ARM64 CPU (qemu-user, a Debian arm64 sysroot, onnxruntime's aarch64 wheel, Node's arm64
# build) and compare with x86 (docs/hosts.md, "Devices"). The environment is built once into ~/.cache/seq2edge-device.
# N: sample size; DEVICE_ARGS=--reduced: the CI check (the big bundle at batch 64 only).
ARCH ?= aarch64
N    ?= 1000
device-check: $(FULL) $(JS_DEPS) $(C_HOST)
	@test "$(ARCH)" = aarch64 || { echo "device-check: ARCH=$(ARCH) is not supported (aarch64 is)"; exit 2; }
	$(BIN)/python tools/device_check.py --words $(N) $(DEVICE_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache hosts/js/node_modules hosts/c/build
