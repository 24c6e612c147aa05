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
# The shipped G2P model (README "The shipped model" gives its figures).
BIG_ARGS   := --corpus cmudict --cell lstm --attention dot --input-feed --bidirectional --layers 2 \
              --embed 64 --hidden 384 --dropout 0.25 --label-smoothing 0.1 --batch-size 64 --lr 0.002 \
              --epochs 40 --patience 5 --threads 2
TRAIN_ARGS ?= $(BIG_ARGS) --max-minutes 270 --seed 0

# The small model: a GRU student distilled in six cycles (README "The small model"). Cycles 1-4 learn
# from the shipped model: its beam-5 outputs and the references; those outputs alone from the first
# cycle's weights with a fresh learning rate; those outputs and its per-step distributions (--kd
# seq+token); the same with 120,000 more English words that CMUdict lacks, labelled by the teacher
# (--extra-inputs, from wordfreq's word list). Cycle 5 learns the same way from an ensemble of three
# models: the shipped one and two more trained with its settings from other seeds ($(SMALL_MEMBER2)
# and $(SMALL_MEMBER3), about 3.5 hours of training); cycle 6 as cycle 5 with more weight on the
# ensemble's distributions (--kd-alpha 0.8) and a lower learning rate. Teachers' outputs are cached for
# all cycles in $(SMALL_TEACHER_CACHE).
SMALL            := models/g2p-en-small
SMALL_CHECKPOINT := models/g2p-en-small-checkpoint
SMALL_CYCLE1     := build/g2p-en-small-cycle1
SMALL_CYCLE2     := build/g2p-en-small-cycle2
SMALL_CYCLE3     := build/g2p-en-small-cycle3
SMALL_CYCLE4     := build/g2p-en-small-cycle4
SMALL_CYCLE5     := build/g2p-en-small-cycle5
SMALL_MEMBER2    := build/g2p-en-member2
SMALL_MEMBER3    := build/g2p-en-member3
EXTRA_WORDS      := build/english-words.txt
SMALL_TEACHER_CACHE := build/g2p-en-small-teacher
SMALL_CYCLE1_ARGS ?= --corpus cmudict --teacher $(BUNDLE) --kd seq --kd-beam 5 --kd-mix-references \
              --cell gru --attention dot --input-feed --bidirectional --layers 1 --embed 64 --hidden 256 \
              --dropout 0.1 --label-smoothing 0.1 --batch-size 64 --lr 0.002 --epochs 17 --patience 6 \
              --dev-limit 4000 --seed 0 --threads 2
SMALL_CYCLE2_ARGS ?= --corpus cmudict --teacher $(BUNDLE) --kd seq --kd-beam 5 --kd-teacher-only \
              --label-smoothing 0.1 --batch-size 64 --lr 0.001 --lr-patience 2 --epochs 22 --patience 6 \
              --dev-limit 4000 --seed 1 --threads 2
SMALL_CYCLE3_ARGS ?= --corpus cmudict --teacher $(BUNDLE) --kd seq+token --kd-beam 5 --kd-teacher-only \
              --kd-alpha 0.5 --kd-top-k 8 --label-smoothing 0.1 --batch-size 64 --lr 0.0005 --lr-patience 2 \
              --epochs 45 --patience 8 --dev-limit 4000 --seed 2 --threads 2
SMALL_CYCLE4_ARGS ?= --corpus cmudict --teacher $(BUNDLE) --kd seq+token --kd-beam 5 --kd-teacher-only \
              --kd-alpha 0.5 --kd-top-k 8 --extra-inputs $(EXTRA_WORDS) --label-smoothing 0.1 --batch-size 64 \
              --lr 0.001 --lr-patience 2 --epochs 40 --patience 8 --dev-limit 4000 --seed 3 --threads 2
# Cycles 5 and 6: the three-model ensemble's greedy outputs and distributions (the same cached labels),
# told apart by the weight of the distributions, the learning rate and the seed.
SMALL_ENSEMBLE_KD := --corpus cmudict --teacher $(BUNDLE) --teacher $(SMALL_MEMBER2)-bundle \
              --teacher $(SMALL_MEMBER3)-bundle --kd seq+token --kd-beam 1 --kd-teacher-only --kd-top-k 8 \
              --extra-inputs $(EXTRA_WORDS) --label-smoothing 0.1 --batch-size 64 --lr-patience 2 --epochs 40 \
              --patience 6 --dev-limit 4000 --threads 2
SMALL_CYCLE5_ARGS ?= $(SMALL_ENSEMBLE_KD) --kd-alpha 0.5 --lr 0.0005 --seed 5
SMALL_CYCLE6_ARGS ?= $(SMALL_ENSEMBLE_KD) --kd-alpha 0.8 --lr 0.00025 --seed 6

JS_DEPS := hosts/js/node_modules/.installed

.PHONY: install install-gpu js demo train export eval train-small export-small test soak lint bench bench-quick clean

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
	$(BIN)/seq2edge train $(TRAIN_ARGS) --out $(CHECKPOINT)

export: $(FULL)
	$(BIN)/seq2edge export $(CHECKPOINT) $(BUNDLE) --int8 --force

eval: $(FULL)
	$(BIN)/seq2edge eval $(BUNDLE) --split test
	$(BIN)/seq2edge eval $(BUNDLE) --split test --beam 5

train-small: $(FULL) $(EXTRA_WORDS)
	$(call fresh,$(SMALL_CHECKPOINT))
	$(BIN)/seq2edge train $(SMALL_CYCLE1_ARGS) --kd-cache $(SMALL_TEACHER_CACHE) --out $(SMALL_CYCLE1)
	$(BIN)/seq2edge train $(SMALL_CYCLE2_ARGS) --kd-cache $(SMALL_TEACHER_CACHE) --init-from $(SMALL_CYCLE1) --out $(SMALL_CYCLE2)
	$(BIN)/seq2edge train $(SMALL_CYCLE3_ARGS) --kd-cache $(SMALL_TEACHER_CACHE) --init-from $(SMALL_CYCLE2) --out $(SMALL_CYCLE3)
	$(BIN)/seq2edge train $(SMALL_CYCLE4_ARGS) --kd-cache $(SMALL_TEACHER_CACHE) --init-from $(SMALL_CYCLE3) --out $(SMALL_CYCLE4)
	$(BIN)/seq2edge train $(BIG_ARGS) --seed 1 --max-minutes 115 --out $(SMALL_MEMBER2)
	$(BIN)/seq2edge export $(SMALL_MEMBER2) $(SMALL_MEMBER2)-bundle --force
	$(BIN)/seq2edge train $(BIG_ARGS) --seed 2 --out $(SMALL_MEMBER3)
	$(BIN)/seq2edge export $(SMALL_MEMBER3) $(SMALL_MEMBER3)-bundle --force
	$(BIN)/seq2edge train $(SMALL_CYCLE5_ARGS) --kd-cache $(SMALL_TEACHER_CACHE) --init-from $(SMALL_CYCLE4) --out $(SMALL_CYCLE5)
	$(BIN)/seq2edge train $(SMALL_CYCLE6_ARGS) --kd-cache $(SMALL_TEACHER_CACHE) --init-from $(SMALL_CYCLE5) --out $(SMALL_CHECKPOINT)

# Unlabelled words for the fourth cycle: wordfreq's list is data inside the package (msgpack), nothing is downloaded.
$(EXTRA_WORDS): | $(FULL)
	$(BIN)/python -c "import wordfreq" 2>/dev/null || $(PIP) install 'wordfreq>=3.1'
	$(BIN)/python tools/english_words.py $@ --count 120000

export-small: $(FULL)
	$(BIN)/seq2edge export $(SMALL_CHECKPOINT) $(SMALL) --int8 --greedy-graph --force
	$(BIN)/seq2edge eval $(SMALL) --split test --precision int8

test: $(FULL) $(JS_DEPS)
	$(BIN)/python -m pytest -q -x --durations=15

# 20,000 decodes from 8 threads against serial results, with memory growth measured (README "Reliability")
soak: $(FULL)
	$(BIN)/python -m pytest -q -s -m slow tests/test_load.py

lint: $(FULL)
	$(BIN)/ruff check runtime train export bench tests examples tools

bench: $(FULL) $(JS_DEPS)
	$(BIN)/seq2edge bench $(BUNDLE) $(SMALL) --checkpoint $(CHECKPOINT) --checkpoint $(SMALL_CHECKPOINT) \
	    --json bench.json --plot bench.png

bench-quick: $(FULL) $(JS_DEPS)
	$(BIN)/seq2edge bench $(BUNDLE) $(SMALL) --checkpoint $(CHECKPOINT) --checkpoint $(SMALL_CHECKPOINT) --quick

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache hosts/js/node_modules
