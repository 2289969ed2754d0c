#!/usr/bin/env bash
# Run here, before device calls that run the recipes (gpu_recipes.sh, gpu_multi.sh): downloads into .whl/ (ignored;
# name it in the call's carry) the wheels the device image lacks: datasets, with the two of its needs the image does
# not have (KINDS.md lists the image's packages). Versions as in the dev environment that CI installs. The MiniLM
# package (83 MB) is over a call's 64 MiB: the BERT tests that load it skip there.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
for pkg in datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$pkg"
done
ls -l .whl
