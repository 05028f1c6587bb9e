# diffusionlab developer commands. `make install` then `make test`.
PY ?= .venv/bin/python
DATA_DIR ?= data
SHARED ?= ../shared/datasets

.PHONY: install test lint train sample bench bench-sd classifier data clean

install:  ## create .venv and install the project with its test extras (torch pinned by constraints.txt)
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch torchvision
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"

TEST_WORKERS ?= 2
test:  ## the whole suite (real MNIST from ../shared/datasets, tiny models) in 2 workers, one per core; TEST_WORKERS=0: serial
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 tests

lint:
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

data:  ## link the offline MNIST / Fashion-MNIST files from ../shared into data/ (when ../shared exists)
	@for n in MNIST FashionMNIST; do if [ -d $(SHARED)/$$n/raw ]; then mkdir -p $(DATA_DIR)/$$n/raw; \
	  for f in $(SHARED)/$$n/raw/*.gz; do ln -sf "$$(realpath $$f)" $(DATA_DIR)/$$n/raw/; done; fi; done

train: data  ## default experiment: class-conditional DDPM on MNIST
	$(PY) train.py

sample:  ## sample from the newest run: make sample CKPT=logs/train/runs/<time>
	$(PY) sample.py ckpt=$(CKPT)

classifier: data  ## train and cache the MNIST and Fashion-MNIST domain classifiers used by evaluation
	$(PY) -m diffusionlab.cli.classifier --dataset mnist --data-dir $(DATA_DIR) --cache-dir "$${DIFFUSIONLAB_CACHE_DIR:-cache}"
	$(PY) -m diffusionlab.cli.classifier --dataset fashion_mnist --data-dir $(DATA_DIR) --cache-dir "$${DIFFUSIONLAB_CACHE_DIR:-cache}"

bench:  ## speed and memory against peers measured in the same run (ratios); not part of the tests
	$(PY) benchmarks/bench_cpu_peak.py
	$(PY) benchmarks/bench_unet.py --quick --rounds 2 --paired 8
	$(PY) benchmarks/bench_conv_weight_grad.py
	$(PY) benchmarks/bench_step_switches.py
	$(PY) benchmarks/bench_sampling.py --bf16 --channels-last
	$(PY) benchmarks/bench_sampling.py --bf16 --channels-last --model unet_small_28
	$(PY) benchmarks/bench_metrics.py
	$(PY) benchmarks/bench_memory.py
	$(PY) benchmarks/bench_latent.py
	$(PY) benchmarks/bench_ddp.py --precision bf16-mixed --batch 128 --steps 30 --rounds 3
	$(PY) benchmarks/bench_ddp_torch.py

bench-sd:  ## full-size Stable Diffusion UNet step, ours vs diffusers (slow: minutes on a CPU)
	$(PY) benchmarks/bench_sd.py

# Linear vs cosine schedule study. Every knob is overridable: BUDGET (train.py overrides, e.g.
# BUDGET="trainer.max_steps=50 callbacks.eval.num_samples=50"), EVAL (evaluate.yaml overrides for the final
# evaluation), CS_DIR (the multirun folder; default logs/compare_schedules/multiruns/<time>), CS_JOBS (1: one
# multirun; 2: the linear and the cosine sweep train side by side in <CS_DIR>/linear and <CS_DIR>/cosine, each
# process with half the cores' threads, logs in <CS_DIR>/<schedule>.log; 1.02x the img/s of 1, 2026-12-05).
CS_EVAL ?= num_samples=500 steps=50 'sweep.steps=[10,20,50,100]'
CS_JOBS ?= 1
INCEPTION_WEIGHTS ?= $(or $(DIFFUSIONLAB_INCEPTION_WEIGHTS),$(wildcard $(dir $(SHARED))weights/inception-2015-12-05-pool3.torchscript.pt))
.PHONY: compare-schedules
compare-schedules: data  ## linear vs cosine on MNIST, 3 seeds: 6 runs of 7 epochs (CS_JOBS=2: two sweeps side by side), then report.md (with the verdict per step count) + PNGs
	@set -e; dir="$(CS_DIR)"; [ -n "$$dir" ] || dir=logs/compare_schedules/multiruns/$$(date +%Y-%m-%d_%H-%M-%S); \
	if [ -n "$(INCEPTION_WEIGHTS)" ]; then export DIFFUSIONLAB_INCEPTION_WEIGHTS="$(INCEPTION_WEIGHTS)"; fi; \
	$(PY) -m diffusionlab.cli.classifier --dataset mnist --data-dir $(DATA_DIR) --cache-dir "$${DIFFUSIONLAB_CACHE_DIR:-cache}"; \
	if [ "$(CS_JOBS)" = 2 ]; then \
	  threads=$$(( $$(nproc) / 2 )); [ $$threads -ge 1 ] || threads=1; mkdir -p $$dir; pids=""; \
	  for s in linear cosine; do \
	    echo "training the $$s sweep: tail -f $$dir/$$s.log"; \
	    OMP_NUM_THREADS=$$threads $(PY) train.py -m experiment=compare_schedules hydra.sweep.dir=$$dir/$$s \
	      diffusion.schedule=$$s $(BUDGET) > $$dir/$$s.log 2>&1 & pids="$$pids $$!"; \
	  done; \
	  for p in $$pids; do wait $$p || { echo "a sweep failed: see $$dir/*.log"; exit 1; }; done; \
	else $(PY) train.py -m experiment=compare_schedules hydra.sweep.dir=$$dir $(BUDGET); fi; \
	$(PY) -m diffusionlab.cli.report $$dir $(CS_EVAL) $(EVAL); \
	echo "report: $$dir/report/report.md"

clean:
	rm -rf .pytest_cache .ruff_cache
