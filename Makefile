# coco-warden: two set-up commands, `make demo` and `make test`. Both install what they need
# (Debian packages, a .venv, the CO-RE BPF objects) and are idempotent: a warm run skips all of it.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUILD := build
BPF_BUILD := $(BUILD)/bpf
# Shipped objects: bpf/progs/*.bpf.c -> build/bpf/*.bpf.o (installed to /usr/lib/warden/bpf/).
BPF_PROGS := bpf/progs
BPF_SRC := $(wildcard $(BPF_PROGS)/*.bpf.c)
BPF_OBJ := $(patsubst $(BPF_PROGS)/%.bpf.c,$(BPF_BUILD)/%.bpf.o,$(BPF_SRC))
BPF_HDR := $(wildcard $(BPF_PROGS)/*.h)
# Fixtures, never shipped: tests/bpf/*.bpf.c -> build/bpf/tests/, bench/bpf/*.bpf.c -> build/bpf/bench/.
FIXTURE_OBJ := $(patsubst tests/bpf/%.bpf.c,$(BPF_BUILD)/tests/%.bpf.o,$(wildcard tests/bpf/*.bpf.c)) \
	$(patsubst bench/bpf/%.bpf.c,$(BPF_BUILD)/bench/%.bpf.o,$(wildcard bench/bpf/*.bpf.c))
CLANG_BPF := clang -g -O2 -Wall -Werror -target bpf -D__TARGET_ARCH_x86 -I$(BPF_BUILD)

.PHONY: demo test bench lint setup host-deps bpf bytecode clean

demo: setup
	$(PY) -m tests.guest.demo

test: setup lint
	$(PY) -m pytest

# AppArmor and bcc (with the guest kernel's headers) for the comparisons; the script is idempotent.
bench: setup
	@bash scripts/install-bench-deps.sh
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(PY) -m bench
	$(PY) -m bench.boot

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check supervisor trust attest bpf initdata tests $(wildcard bench)
	$(VENV)/bin/mypy

setup: host-deps $(VENV)/.installed bpf bytecode

# The guest runs warden from this tree: byte-compiled here, as a packaged install would be, so that no
# guest boot compiles warden's modules before READY (this machine sets PYTHONDONTWRITEBYTECODE).
# compileall skips what is up to date.
bytecode: $(VENV)/.installed
	$(PY) -m compileall -q -j0 supervisor trust attest bpf initdata tests bench

# Always run: the script checks each package with dpkg-query and returns at once when all are there.
host-deps:
	@bash scripts/install-host-deps.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test,dev]'
	@# Policies are read with libyaml only (bpf/policy/yaml_loader.py): fail here, not at the first policy.
	$(VENV)/bin/python -c 'import sys, yaml; sys.exit(0 if yaml.__with_libyaml__ else "PyYAML was installed without libyaml; warden needs it to read policies")'
	touch $@

bpf: $(BPF_OBJ) $(FIXTURE_OBJ)

# vmlinux.h comes from the running kernel's BTF; CO-RE relocations adapt the objects to the guest's 6.1.
$(BPF_BUILD)/vmlinux.h:
	mkdir -p $(BPF_BUILD)
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp
	mv $@.tmp $@

$(BPF_BUILD)/%.bpf.o: $(BPF_PROGS)/%.bpf.c $(BPF_HDR) $(BPF_BUILD)/vmlinux.h
	$(CLANG_BPF) -I$(BPF_PROGS) -c $< -o $@

$(BPF_BUILD)/tests/%.bpf.o: tests/bpf/%.bpf.c $(BPF_BUILD)/vmlinux.h
	mkdir -p $(@D)
	$(CLANG_BPF) -c $< -o $@

$(BPF_BUILD)/bench/%.bpf.o: bench/bpf/%.bpf.c $(BPF_BUILD)/vmlinux.h
	mkdir -p $(@D)
	$(CLANG_BPF) -c $< -o $@

clean:
	rm -rf $(BUILD)
