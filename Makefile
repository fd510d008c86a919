# slmbench: `make run` benchmarks the paper's 330M pair on this CPU; `make test` runs the tests.
# Both create the virtualenv and install on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp
RESULTS ?= results/results.jsonl

.PHONY: install run test test-all lint clean help perf decode-profile prefill-profile regress regress-noise regress-baseline sweep-quick sweep-cpu sweep-crossover sweep-vision sweep-gpu sweep-npu sweep-all report

help:  ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install slmbench with its pinned working set

run: install  ## CPU benchmark of the paper's pair (mu-330m vs deconly-330m), exports included
	$(BIN)/slmbench run --device cpu --model mu-330m --model deconly-330m --input-len 512 --output-len 128 \
		--results $(RESULTS)

test: install  ## the test suite (CPU, tiny models, a few minutes)
	$(BIN)/python -m pytest -q

# The CI regression gate: the base revision (default the parent commit) and the working tree measured
# side by side on this machine, alternating process by process (`slmbench compare --base-rev`, bench/gate/ab.py):
# the tiny pair of results/baselines/regress.toml plus harness overhead. A stored baseline from another CPU
# cannot work (README, "The regression gate"); this machine's own (results/baselines/<machine>.jsonl) is
# only the fallback of a shallow clone. About a minute and a half here.
REGRESS_BASE     ?= HEAD~1
REGRESS_ROUNDS   ?= 3
# Every threshold is the default 1.10: this machine's A/A noise band (results/baselines/*.noise.json,
# make regress-noise) is at most x1.037, and a threshold inside a recorded band is refused.
REGRESS_FLAGS    ?= --gate same-run

regress: install  ## CI gate: REGRESS_BASE (default HEAD~1) measured beside the working tree; fail on a regression
	$(BIN)/slmbench compare --base-rev $(REGRESS_BASE) --rounds $(REGRESS_ROUNDS) $(REGRESS_FLAGS) --fail-on-regression

regress-noise: install  ## A/A study: HEAD against itself 5 times; records this machine's noise band (commit it)
	$(BIN)/slmbench compare --base-rev HEAD --noise-study 5 --rounds $(REGRESS_ROUNDS)

regress-baseline: install  ## record this machine's fallback baseline, results/baselines/<machine>.jsonl (then commit it)
	$(BIN)/slmbench compare --record-baseline

# Sweeps (bench/sweep/shipped/*.toml): each configuration in its own process; rerunning resumes, absent
# devices are reported once and skipped. Each paper sweep writes results/<sweep>/results.jsonl and
# its report beside it (results/<sweep>/report/report.md with figures/).
sweep_and_report = $(BIN)/slmbench sweep $(1) --results results/$(1)/results.jsonl; status=$$?; \
	if [ -s results/$(1)/results.jsonl ]; then \
		$(BIN)/slmbench report results/$(1)/results.jsonl --out results/$(1)/report --title "slmbench: $(1)" \
			|| status=$$?; fi; exit $$status

sweep-quick: install  ## tiny pair on CPU (well under a minute): results/quick/
	$(call sweep_and_report,quick)

sweep-cpu: install  ## the paper's 330M pair and the 100M pair on this CPU, ONNX Runtime + OpenVINO (~15 min on 2 cores): results/paper-cpu/
	$(call sweep_and_report,paper-cpu)

sweep-crossover: install  ## tiny + 100M pairs over input 64-2048 x output 16-512 on CPU (the crossover figure): results/crossover/
	$(call sweep_and_report,crossover)

sweep-vision: install  ## the 330M vision pair: a 336-px image and text 32-512 tokens on CPU: results/vision/
	$(call sweep_and_report,vision)

sweep-gpu: install  ## the 330M pair on a CUDA or Intel GPU (skipped when absent): results/paper-gpu/
	$(call sweep_and_report,paper-gpu)

sweep-npu: install  ## the 330M pair on an Intel NPU (skipped when absent): results/paper-npu/
	$(call sweep_and_report,paper-npu)

sweep-all: install  ## paper sweeps on every device present (absent ones are reported and skipped)
	@status=0; for target in sweep-cpu sweep-gpu sweep-npu; do $(MAKE) --no-print-directory $$target || status=1; done; \
		exit $$status

# Every measurement under results/ (all hosts merged), not the gate's tiny baseline nor perf summaries.
REPORT_INPUTS = $(shell find results -name '*.jsonl' -not -path 'results/baselines/*' -not -path 'results/perf/*' \
	-not -path 'results/report/*' | sort)

report: install  ## one report over every measurement under results/ (all hosts merged): results/report/
	$(BIN)/slmbench report $(REPORT_INPUTS) --out results/report

lint: install  ## ruff
	$(BIN)/ruff check bench models exporters tests

perf: install  ## harness overhead, compute and bandwidth ceilings, export time and memory of the 330M pair on CPU (~8 min)
	$(BIN)/python -m slmbench.tools.perf --model mu-330m --model deconly-330m --runtime onnxruntime --runtime openvino

decode-profile: install  ## OpenVINO CPU decode steps of the 330M pair, per node (PERF_COUNT) against the bandwidth: results/perf/decode-profile.jsonl (~3 min)
	$(BIN)/python -m slmbench.tools.decode_profile --model deconly-330m --model mu-330m

prefill-profile: install  ## ONNX Runtime CPU first token of the 330M pair at 512 tokens, per node, against the compute ceiling: results/perf/prefill-profile.jsonl (~2 min)
	$(BIN)/python -m slmbench.tools.prefill_profile --model deconly-330m --model mu-330m

clean:  ## remove the virtualenv and caches (not results, not the artifact cache)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
