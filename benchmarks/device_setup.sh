# Sourced by the gpu_*.sh scripts, with the folder their files go to: strict mode, unbuffered Python, the
# package installed editable on the device image, and the versions recorded in that folder.
set -uo pipefail
mkdir -p "$1"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >> "$1/setup.txt" 2>&1
python3 -c "import setuptools, torch, triton, transformers; print(torch.cuda.get_device_name(), 'torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'setuptools', setuptools.__version__)" > "$1/versions.txt" 2>&1
