#!/usr/bin/env bash
# The paper's proxy budget on a GPU with JAX (issue 9: 100 or more trials per GPU-hour; the paper: 0.67
# per P100-hour): 49x49x320 features (MobileNet-v2, output stride 16, 769x769 Cityscapes crops),
# batch 8, 256 filters, trials projected to 30K steps from measured step times (random features:
# the cost does not depend on their values).
# Here, once: bash bench/camvid_gpu.sh prepare   (Keras wheels for the JAX host into .whl)
# On the GPU host (the device tool, carry [".whl"]):  bash bench/proxy_gpu.sh [more bench_proxy flags]
# Prints bench_proxy.py's tables twice, at the paper's budget (30K steps, 49x49x320, 256 filters) and at
# the CamVid flagfile's (200 steps, 23x30x320, 64 filters): ms/step, the fixed cost per trial, trials/h for
# one worker, and K cells per program (search --cells_per_worker=K) for K = 1, 4, 16, 64 (issue 17, sec. 4).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import keras" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
python3 bench/bench_proxy.py --features=49,49,320 --crop=769,769 --filters="${FILTERS:-256}" \
  --steps=300 --warmup=50 --train_examples=256 --eval_examples=64 --project_steps=30000 --profile_steps=0 \
  --group_sizes="${GROUP_SIZES:-1,4,16,64}" "$@"
python3 bench/bench_proxy.py --features=23,30,320 --crop=360,480 --filters=64 \
  --steps=300 --warmup=50 --train_examples=256 --eval_examples=101 --project_steps=200 --profile_steps=0 \
  --group_sizes="${GROUP_SIZES:-1,4,16,64}" "$@"
