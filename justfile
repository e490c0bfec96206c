# The verbs of cardinal. `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

cardinal := env_var_or_default("CARGO_TARGET_DIR", "target") / "release/cardinal"
torch_python := env_var_or_default("CARDINAL_TORCH_PYTHON", "python3")

# Build, then answer the analytic questions: Table 1, Table 2, and the block-form equivalence.
run: build
    {{cardinal}} complexity resnet50 resnext50_32x4d
    @echo
    {{cardinal}} complexity --preserve resnet50 --cardinality 1,2,4,8,32
    @echo
    {{cardinal}} equivalence resnext50_32x4d

# Build the `cardinal` binary (release).
build:
    cargo build --release -p cardinal-cli

# Debian's package `dataset-fashion-mnist` where apt-get exists, else the official files
# downloaded into data/fashion-mnist; then every record parsed and checksummed.
# Install Fashion-MNIST if it is missing, and verify its SHA-256.
data: build
    #!/usr/bin/env bash
    set -euo pipefail
    if ! {{cardinal}} data verify fashion-mnist >/dev/null 2>&1; then
        sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
        if command -v apt-get >/dev/null && { $sudo apt-get install -y dataset-fashion-mnist || { $sudo apt-get update && $sudo apt-get install -y dataset-fashion-mnist; }; }; then
            echo "installed Debian's dataset-fashion-mnist"
        else
            echo "apt-get cannot install dataset-fashion-mnist here; downloading the official files into data/fashion-mnist"
            mkdir -p data/fashion-mnist
            for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
                curl -fL --retry 3 -o "data/fashion-mnist/$f.gz" "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/$f.gz"
            done
        fi
    fi
    {{cardinal}} data verify fashion-mnist

# Size, classes and the measured mean/std of a dataset.
data-stats NAME="fashion-mnist": build
    {{cardinal}} data stats {{NAME}}

# Write a grid of training samples, as augmented for the network, to OUT.
data-show NAME="fashion-mnist" OUT="grid.png": build
    {{cardinal}} data show {{NAME}} --augmented --out {{OUT}}

# Installs the data first if it is missing; re-running skips finished cells and resumes
# interrupted ones. Extra arguments: --preset quick, key=value overrides, --dry-run.
# Train an experiment's sweep (experiments/NAME.yaml), then write reports/NAME/.
ablate NAME *ARGS: data
    {{cardinal}} ablate {{NAME}} {{ARGS}}

# Tables beside the paper's, figures and a conclusion; `just ablate NAME` ends with it.
# Extra arguments: --preset, key=value overrides (they pick the runs).
# Write an experiment's report (reports/NAME/README.md) from its runs.
report NAME *ARGS: build
    {{cardinal}} report {{NAME}} {{ARGS}}

# Runs side by side on the terminal: experiment names, run directories or run ids.
compare +TARGETS: build
    {{cardinal}} compare {{TARGETS}}

# Train one run of an experiment file.
train CONFIG *ARGS: build
    {{cardinal}} train {{CONFIG}} {{ARGS}}

# Speed benchmarks, median of repeated runs: data, convolutions, train steps vs candle's ops.
bench: build
    {{cardinal}} bench data fashion-mnist --model cpu_resnext20_4x12d
    {{cardinal}} bench conv
    {{cardinal}} bench train --kernels both

# PyTorch is only a reference: point CARDINAL_TORCH_PYTHON at a Python that has torch
# (default: python3). Networks are rebuilt from the specs cardinal reports; each case runs
# ROUNDS times, cardinal then PyTorch in f32 NCHW, f32 channels_last and bf16 autocast
# channels_last (medians, and the range of the ratios), for each of PRECISIONS; MODES picks
# PyTorch's modes (f32,f32-cl,bf16-cl: drop bf16-cl where the CPU has no bf16 units).
# Time train steps and convolutions in cardinal and in PyTorch's three CPU modes, with ratios.
bench-compare ROUNDS="3" PRECISIONS="f32 bf16-mixed" MODES="f32,f32-cl,bf16-cl": build
    #!/usr/bin/env bash
    set -euo pipefail
    mkdir -p target/bench
    cpu="--model cpu_resnet20 --model cpu_resnext20_4x12d --model cpu_resnext20_32x2d"
    grid="--model cpu_resnet14 --model cpu_resnext14_2x20d --model cpu_resnext14_4x12d --model cpu_resnext14_8x7d --model cpu_resnext14_32x2d"
    files=()
    for p in {{PRECISIONS}}; do
        {{cardinal}} bench train --format json --precision $p $cpu $grid > target/bench/train-cpu-$p.json
        # One thread: the cells a machine trains side by side (`ablate --jobs`).
        {{cardinal}} bench train --format json --precision $p --threads 1 $grid > target/bench/train-grid-1t-$p.json
        {{cardinal}} bench train --format json --precision $p --model resnet50 --model resnext50_32x4d --steps 3 > target/bench/train-imagenet-$p.json
        files+=(--train target/bench/train-cpu-$p.json --train target/bench/train-grid-1t-$p.json --train target/bench/train-imagenet-$p.json)
    done
    {{cardinal}} bench conv --format json > target/bench/conv.json
    {{torch_python}} benches/pytorch_reference.py "${files[@]}" --conv target/bench/conv.json --json target/bench/compare.json --cardinal {{cardinal}} --rounds {{ROUNDS}} --modes {{MODES}}

# The cardinality grid's cells against its dense cell (cpu_resnet14), at 2 threads and at 1:
# every cell's model held, ROUNDS rounds of one step of each cell in turn, and each cell's
# img/s over the dense cell's as the median of the rounds' ratios, so that the machine's
# drift cancels.
bench-cells ROUNDS="30" PRECISION="f32": build
    #!/usr/bin/env bash
    set -euo pipefail
    grid="--model cpu_resnet14 --model cpu_resnext14_2x20d --model cpu_resnext14_4x12d --model cpu_resnext14_8x7d --model cpu_resnext14_32x2d"
    turns="--interleave --steps 1 --warmup 2 --rounds {{ROUNDS}}"
    {{cardinal}} bench train --precision {{PRECISION}} $turns $grid
    {{cardinal}} bench train --precision {{PRECISION}} $turns --threads 1 $grid

# Fuzz the IDX and CIFAR parsers for SECONDS each (needs nightly and cargo-fuzz).
fuzz SECONDS="300":
    cd fuzz && mkdir -p corpus-work/idx corpus-work/cifar
    cd fuzz && cargo +nightly fuzz run idx corpus-work/idx corpus/idx -- -max_total_time={{SECONDS}}
    cd fuzz && cargo +nightly fuzz run cifar corpus-work/cifar corpus/cifar -- -max_total_time={{SECONDS}}

# The whole test suite (numeric dependencies are optimised even in the test profile), and
# the PyTorch comparison script's own examples (they need Python, not PyTorch).
test:
    cargo test --workspace
    if command -v python3 >/dev/null 2>&1; then python3 -m doctest benches/pytorch_reference.py; else echo "python3 not found: the comparison script's examples are skipped"; fi

# Debian's slurm-wlm and munge, root: a 4-cell grid submitted as a job array, 2 at a
# time, then its report job, and a failing cell; stops its daemons.
# Test the Slurm launcher against a real one-node cluster on loopback.
slurm-test:
    cargo build -p cardinal-cli
    if [ "$(id -u)" = 0 ]; then sudo=""; else sudo=sudo; fi; $sudo scripts/slurm-test.sh {{env_var_or_default("CARGO_TARGET_DIR", "target")}}/debug/cardinal

# NVIDIA's CUDA 13 wheels into a virtualenv (the CUDA 12 nvcc wheel ships ptxas but no nvcc),
# then candle's CUDA build pointed at them; no GPU is needed to compile. CUDA_COMPUTE_CAP
# (default 90) picks the GPU generation the kernels are compiled for.
# Build `cardinal` with CUDA into target/cuda, installing CUDA's compiler if missing.
build-cuda:
    #!/usr/bin/env bash
    set -euo pipefail
    venv="${CARDINAL_CUDA_VENV:-$HOME/.cache/cardinal/cuda13-venv}"
    [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
    # CUDA 13.0: the newest toolkit that candle's cudarc (0.19) accepts from `nvcc --version`.
    "$venv/bin/pip" install --quiet 'nvidia-cuda-nvcc==13.0.*' 'nvidia-cuda-runtime==13.0.*' \
        'nvidia-nvvm==13.0.*' 'nvidia-cuda-crt==13.0.*' 'nvidia-cuda-nvrtc==13.0.*' \
        'nvidia-cuda-cccl==13.0.*' 'nvidia-cublas==13.0.*' 'nvidia-curand'
    eval "$(just --quiet cuda-env)"
    nvcc --version | tail -n 1
    # Everything but the final link; then the libraries' link names (and a stub libcuda.so
    # where no driver is installed), and the link.
    cargo build --release -p cardinal-train --features cuda --target-dir target/cuda
    scripts/cuda-link-dir.sh "$CUDA_ROOT" target/cuda/link "$(ls -t target/cuda/release/deps/libcudarc-*.rlib | head -n 1)"
    LIBRARY_PATH="$PWD/target/cuda/link:$LIBRARY_PATH" \
        cargo build --release -p cardinal-cli --features cuda --target-dir target/cuda
    echo "built target/cuda/release/cardinal (compute capability $CUDA_COMPUTE_CAP)"

# Print the environment that points builds and binaries at the CUDA wheels (eval it).
cuda-env:
    #!/usr/bin/env bash
    set -euo pipefail
    venv="${CARDINAL_CUDA_VENV:-$HOME/.cache/cardinal/cuda13-venv}"
    root=$(echo "$venv"/lib/python3*/site-packages/nvidia/cu13)
    [ -x "$root/bin/nvcc" ] || { echo "no nvcc under $root: run just build-cuda" >&2; exit 1; }
    echo "export CUDA_ROOT='$root' CUDA_PATH='$root' CUDA_HOME='$root'"
    echo "export PATH='$root/bin':\"\$PATH\""
    echo "export LD_LIBRARY_PATH='$root/lib':\"\${LD_LIBRARY_PATH:-}\""
    echo "export LIBRARY_PATH='$root/lib':\"\${LIBRARY_PATH:-}\""
    echo "export CUDA_COMPUTE_CAP='${CUDA_COMPUTE_CAP:-90}'"

# Check that vendor/candle-core is the published crate plus vendor/candle-core.patch.
vendor-check:
    bash scripts/vendor-candle.sh --check

# List the model presets with params and MACs.
models: build
    {{cardinal}} models

# Params and MACs of models, e.g. `just complexity resnet50 resnext50_32x4d`.
complexity +MODELS: build
    {{cardinal}} complexity {{MODELS}}

# Check that forms A, B and C of a model are one function.
equivalence MODEL="resnext50_32x4d": build
    {{cardinal}} equivalence {{MODEL}}
