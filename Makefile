# diffusionlab developer commands. `make install` then `make test`.
PY ?= .venv/bin/python
DATA_DIR ?= $(if $(wildcard ../shared/datasets),../shared/datasets,data/)
export DIFFUSIONLAB_DATA_DIR ?= $(DATA_DIR)

.PHONY: install test lint train sample bench classifier compare-schedules clean

install:  ## create .venv and install the project with its test extras (torch pinned by constraints.txt)
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch torchvision
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"

test:  ## the whole suite (real MNIST from ../shared/datasets, tiny models); < 15 min on 2 CPU cores
	$(PY) -m pytest -q tests

lint:
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

train:  ## default experiment: class-conditional DDPM on MNIST
	$(PY) train.py

sample:  ## sample from the newest run: make sample CKPT=logs/train/runs/<time>
	$(PY) sample.py ckpt=$(CKPT)

classifier:  ## train and cache the MNIST and Fashion-MNIST domain classifiers used by evaluation
	$(PY) -m diffusionlab.metrics.classifier --dataset mnist --data-dir $(DATA_DIR)
	$(PY) -m diffusionlab.metrics.classifier --dataset fashion_mnist --data-dir $(DATA_DIR)

bench:  ## speed and memory against diffusers, measured in the same run (ratios)
	$(PY) benchmarks/bench_unet.py
	$(PY) benchmarks/bench_train.py

clean:
	rm -rf .pytest_cache .ruff_cache
