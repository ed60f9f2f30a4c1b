#!/usr/bin/env bash
# Wheels for bench/bench_gpu.py on a GPU machine that has Python 3.12, JAX,
# PyTorch and Keras's dependencies, but no TensorFlow, no Ray and no package
# registry. Only small wheels can be carried there: the working tree and the
# carried paths travel together, 64 MiB in all.
#
#   bash bench/gpu_wheels.sh                 # here, with network: download into .whl/ (refused if the
#                                            # wheels plus the travelling working tree exceed 64 MiB)
#   bash bench/gpu_wheels.sh download DIR    # the same into DIR
#     --no-init       leave out pydantic and PyYAML (only rayscore/__init__.py needs them; -3.5 MiB)
#     --keras-deps    add Keras's own dependencies (namex, optree, ml_dtypes, h5py; +5.6 MiB)
#     PYARROW_VERSION=18.1.0 bash bench/gpu_wheels.sh   # a smaller pyarrow (38 MiB instead of 52.5)
#   bash bench/gpu_wheels.sh install [DIR]   # there, offline: unpack .whl/ (or DIR) into .pydeps/,
#                                            # skipping what that python3 has already
#   PYTHONPATH=$PWD/.pydeps python3 bench/bench_gpu.py --require-gpu --json
#
# What the predictor core needs (rayscore._model, ._convert, ._predict, imported
# as `import rayscore._predict`, which runs rayscore/__init__.py first):
#   numpy, pyarrow      the core's own imports (numpy comes with JAX and PyTorch; pyarrow does not)
#   keras               rayscore._model's loader imports it when a model is loaded
#   pydantic (+ pydantic_core, annotated_types, typing_extensions, typing_inspection), yaml
#                       NOT the core's: rayscore/__init__.py imports rayscore._config (yaml,
#                       pydantic) and rayscore._pipeline (pydantic). bench_gpu.py loads the core
#                       without rayscore/__init__.py when they are missing, so they are carried
#                       only to run it the ordinary way.
#   Not needed: ray, raydp, pyspark, tensorflow, pandas, psutil.
# Likely on the GPU machine already ("Keras's dependencies"): absl-py, h5py,
# ml_dtypes, namex, optree, packaging, rich, numpy; typing_extensions comes with
# PyTorch. Sizes (cp312, manylinux x86_64): pyarrow 26.0.1 52.5 MiB, keras 2.3,
# pydantic_core 2.2, PyYAML 0.8, pydantic 0.5, the rest < 0.1; h5py 4.7, optree
# 0.5, ml_dtypes 0.4, namex < 0.1.
#
# The versions are the ones this project's venv uses (pyproject.toml allows pyarrow>=15).
set -euo pipefail
cd "$(dirname "$0")/.."

LIMIT_MIB=64
CORE=(
  keras==3.15.1                               # pure Python
  "pyarrow==${PYARROW_VERSION:-26.0.1}"       # the big one; JAX and PyTorch do not bring it
)
INIT=(                                        # only for rayscore/__init__.py (the config), not the core
  pydantic==2.14.4
  pydantic_core==2.50.5
  annotated_types==0.8.0
  typing_extensions==4.16.0
  typing_inspection==0.4.5
  PyYAML==6.0.4
)
KERAS_DEPS=(                                  # Keras's own dependencies; the GPU machine should have them
  namex==0.1.0
  optree==0.20.0
  ml_dtypes==0.6.0
  h5py==3.14.0
)

# the import name of a wheel's distribution (for `install`: skip what is there already)
import_name() {
  local name=${1,,}
  case $name in
    pyyaml) echo yaml ;;
    pydantic_core) echo pydantic ;;   # goes with pydantic: an older one there would not do for this pydantic
    *) echo "${name//-/_}" ;;
  esac
}

has_module() {  # found, not imported: `import keras` fails where its default backend (TF) is missing
  PYTHONPATH='' python3 -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null
}

tree_bytes() {  # what travels besides carried paths: tracked and untracked-not-ignored files
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -co --exclude-standard -z -- . ':!.whl' | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1
  else
    echo 0
  fi
}

mib() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1048576 }'; }

download() {
  local dest=$1; shift
  local stage total tree
  stage=$(mktemp -d "${TMPDIR:-/tmp}/rayscore-wheels.XXXXXX")
  if ! python3 -m pip download --quiet --no-deps --only-binary=:all: \
      --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$stage" "$@"; then
    rm -rf "$stage"; return 1
  fi
  ls -l "$stage"/*.whl | awk '{ n = $NF; sub(".*/", "", n); printf "%8.2f MiB  %s\n", $5 / 1048576, n }'
  total=$(du -cb "$stage"/*.whl | tail -1 | cut -f1)
  tree=$(tree_bytes)
  printf '%8s MiB  wheels in all\n%8s MiB  working tree that travels beside them\n%8s MiB  together (limit %d MiB)\n' \
    "$(mib "$total")" "$(mib "$tree")" "$(mib $((total + tree)))" "$LIMIT_MIB"
  if (( total + tree > LIMIT_MIB * 1048576 )); then
    echo "refused: over $LIMIT_MIB MiB; nothing written to $dest (try --no-init or PYARROW_VERSION=18.1.0)" >&2
    rm -rf "$stage"; return 1
  fi
  mkdir -p "$dest"
  mv "$stage"/*.whl "$dest"/
  rm -rf "$stage"
  echo "wrote $dest/ (to carry it: add /${dest#./}/ to .git/info/exclude and name \"${dest#./}\" in carry)"
}

install() {
  local src=$1 target=.pydeps whl dist mod
  mkdir -p "$target"
  for whl in "$src"/*.whl; do
    dist=$(basename "$whl"); dist=${dist%%-*}
    mod=$(import_name "$dist")
    if has_module "$mod"; then
      echo "skip $dist: python3 has $mod already"
      continue
    fi
    echo "unpack $dist"
    # a wheel is a zip laid out for site-packages; pip needs no index for this, but may be missing
    python3 -m zipfile -e "$whl" "$target"
  done
  echo "done: PYTHONPATH=$PWD/$target python3 bench/bench_gpu.py"
}

mode=download dest=.whl init=1 extra=()
while (( $# )); do
  case $1 in
    download) mode=download ;;
    install) mode=install ;;
    --keras-deps) extra=("${KERAS_DEPS[@]}") ;;
    --no-init) init=0 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "unknown flag $1" >&2; exit 2 ;;
    *) dest=$1 ;;
  esac
  shift
done

if [[ $mode == install ]]; then
  install "$dest"
else
  wanted=("${CORE[@]}")
  (( init )) && wanted+=("${INIT[@]}")
  wanted+=("${extra[@]}")
  download "$dest" "${wanted[@]}"
fi
