#!/usr/bin/env bash
# The GPU measurements of the sampler issue, as one script for a lent GPU machine (its image has
# JAX, flax, diffrax; ml_collections travels as a wheel in .whl/). Results go to $OUT.
set -u
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" \
  | tee -a "$OUT/gpu.txt"
timeout 120 python3 -m benchmarks.golden_precision 2>&1 | grep -v "^I1" | tee "$OUT/golden_precision.md"
timeout 270 python3 -m benchmarks.step_overhead --config ve/ffhq_ncsnpp_continuous --nf 0 \
  --batch 1,8 --steps 5 --repeats 3 --methods pc,heun,edm,euler_ancestral,dpmpp_2m,dpmpp_2m_sde \
  --out "$OUT/step_overhead_ffhq1024.json" 2>&1 \
  | grep -v "^I1" | tail -16 | tee "$OUT/step_overhead_ffhq1024.md"
timeout 150 python3 -m benchmarks.analytic_tdas --out "$OUT/analytic_tdas_64.json" --size 64 \
  --num_samples 512 --calibration_samples 256 2>&1 | grep -v "^I1" | tail -20 \
  | tee "$OUT/analytic_tdas_64.md"
