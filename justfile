# The verbs of cardinal. `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

cardinal := "target/release/cardinal"

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

# The whole test suite (numeric dependencies are optimised even in the test profile).
test:
    cargo test --workspace

# List the model presets with params and MACs.
models: build
    {{cardinal}} models

# Params and MACs of models, e.g. `just complexity resnet50 resnext50_32x4d`.
complexity +MODELS: build
    {{cardinal}} complexity {{MODELS}}

# Check that forms A, B and C of a model are one function.
equivalence MODEL="resnext50_32x4d": build
    {{cardinal}} equivalence {{MODEL}}
