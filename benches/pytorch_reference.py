#!/usr/bin/env python3
"""PyTorch beside cardinal: the same networks and convolution shapes, timed the same way.

Reads the JSON that `cardinal bench train --format json` and `cardinal bench conv --format
json` print, rebuilds every case in PyTorch (networks from the `spec` cardinal reports, so
the architecture cannot drift; parameter counts are checked against cardinal's), times it
with the same batch, input size, warm-up and step count on the same number of threads, and
prints one table with the ratio cardinal / PyTorch per case.

    cardinal bench train --format json > train.json
    cardinal bench conv --format json > conv.json
    python3 benches/pytorch_reference.py --train train.json --conv conv.json

`just bench-compare` does all three, with `--cardinal BIN --rounds 3`: each case then runs
in cardinal (the binary, again) and in PyTorch alternately, three times, and the table shows
the medians and the median of the per-round ratios. On a shared machine, whose speed drifts
by tens of percent over minutes, one timing of each side minutes apart says little; pairs
measured seconds apart do. PyTorch is a reference here, never a dependency of cardinal:
without torch the script says how to install it and exits with status 3.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def load_cases(paths):
    cases = []
    for path in paths or []:
        with open(path) as f:
            data = json.load(f)
        cases.extend(data if isinstance(data, list) else [data])
    return cases


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def build(spec):
    """A torchvision-style ResNet/ResNeXt from a cardinal NetSpec (forms A, B and C)."""
    import torch.nn as nn

    def bn(ch):
        return nn.BatchNorm2d(ch)

    class Bottleneck(nn.Module):
        def __init__(self, cin, cout, width, groups, stride, form):
            super().__init__()
            self.form = form
            d = width // groups
            if form == "A":
                # C paths of 1x1 -> 3x3 -> 1x1, summed, then one BN (paper footnote).
                self.paths = nn.ModuleList(
                    nn.Sequential(
                        nn.Conv2d(cin, d, 1, bias=False), bn(d), nn.ReLU(inplace=True),
                        nn.Conv2d(d, d, 3, stride, 1, bias=False), bn(d), nn.ReLU(inplace=True),
                        nn.Conv2d(d, cout, 1, bias=False),
                    )
                    for _ in range(groups)
                )
                self.bn_sum = bn(cout)
            else:
                self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
                self.bn1 = bn(width)
                if form == "B":
                    self.split = nn.ModuleList(
                        nn.Conv2d(d, d, 3, stride, 1, bias=False) for _ in range(groups)
                    )
                else:
                    self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
                self.bn2 = bn(width)
                self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
                self.bn3 = bn(cout)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), bn(cout))
            self.groups = groups
            self.d = d

        def forward(self, x):
            import torch

            if self.form == "A":
                out = self.bn_sum(sum(p(x) for p in self.paths))
            else:
                h = self.relu(self.bn1(self.conv1(x)))
                if self.form == "B":
                    parts = torch.split(h, self.d, dim=1)
                    h = torch.cat([conv(p) for conv, p in zip(self.split, parts)], dim=1)
                else:
                    h = self.conv2(h)
                h = self.relu(self.bn2(h))
                out = self.bn3(self.conv3(h))
            shortcut = x if self.downsample is None else self.downsample(x)
            return self.relu(out + shortcut)

    class Basic(nn.Module):
        def __init__(self, cin, cout, width, groups, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, groups=1, bias=False)
            self.bn1 = bn(width)
            self.conv2 = nn.Conv2d(width, cout, 3, 1, 1, groups=groups, bias=False)
            self.bn2 = bn(cout)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), bn(cout))

        def forward(self, x):
            h = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(h))
            shortcut = x if self.downsample is None else self.downsample(x)
            return self.relu(out + shortcut)

    stem = spec["stem"]
    ch = stem["channels"]
    if stem["kind"] == "imagenet":
        layers = [
            nn.Conv2d(spec["in_channels"], ch, 7, 2, 3, bias=False), bn(ch), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        ]
    else:
        layers = [
            nn.Conv2d(spec["in_channels"], ch, 3, stem["stride"], 1, bias=False), bn(ch),
            nn.ReLU(inplace=True),
        ]
    cin = ch
    first_planes = spec["stages"][0]["planes"]
    groups = spec["cardinality"]
    for stage in spec["stages"]:
        cout = stage["planes"] * spec["expansion"]
        path_width = spec["bottleneck_width"] * stage["planes"] // first_planes
        for b in range(stage["blocks"]):
            stride = stage["stride"] if b == 0 else 1
            if spec["block"] == "bottleneck":
                layers.append(Bottleneck(cin, cout, groups * path_width, groups, stride, spec["form"]))
            else:
                layers.append(Basic(cin, cout, cout, groups, stride))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, spec["classes"])]
    return nn.Sequential(*layers)


def median_ms(fn, warmup, steps):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


# PyTorch's CPU modes, from its default to its fastest: the memory format of weights and
# activations, and whether the step runs under bf16 autocast (oneDNN's AMX kernels where
# the CPU has them).
MODES = {
    "f32": "f32 NCHW",
    "f32-cl": "f32 channels_last",
    "bf16-cl": "bf16 autocast channels_last",
}


def train_case(torch, case, mode="f32"):
    spec = case["spec"]
    model = build(spec)
    params = sum(p.numel() for p in model.parameters())
    if params != case["params"]:
        raise SystemExit(
            f"{case['model']}: PyTorch rebuild has {params} parameters, cardinal {case['params']}"
        )
    n, size = case["batch_size"], case["input_size"]
    x = torch.randn(n, spec["in_channels"], size, size)
    if mode != "f32":
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    labels = torch.arange(n) * 7919 % spec["classes"]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    autocast = mode == "bf16-cl"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(model(x), labels)
        loss.backward()
        opt.step()

    reset = reset_peak_rss()
    ms = median_ms(step, 1, case["steps"])
    return {
        "ms_per_step": ms,
        "images_per_sec": n / ms * 1e3,
        "peak_rss_bytes": peak_rss_bytes() if reset else None,
    }


def conv_case(torch, case, repeats):
    import torch.nn.functional as F

    # channels_last: PyTorch's faster f32 layout on the CPU (and cardinal's).
    x = torch.randn(case["batch"], case["in_channels"], case["side"], case["side"])
    x = x.to(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(
        case["out_channels"], case["in_channels"] // case["groups"], case["kernel"], case["kernel"],
    ).to(memory_format=torch.channels_last).requires_grad_()
    pad = case["kernel"] // 2

    def forward():
        with torch.no_grad():
            F.conv2d(x, w, stride=case["stride"], padding=pad, groups=case["groups"])

    def train():
        F.conv2d(x, w, stride=case["stride"], padding=pad, groups=case["groups"]).sum().backward()

    return median_ms(forward, 1, repeats), median_ms(train, 1, repeats)


def run_cardinal(binary, args):
    out = subprocess.run([binary, *args, "--format", "json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def cardinal_train_case(binary, case):
    """The same train case again in cardinal (model, form, batch, input size, steps,
    threads, precision)."""
    args = [
        # The label of a case built in another form reads "MODEL form X".
        "bench", "train", "--model", case["model"].split(" form ")[0], "--form", case["spec"]["form"],
        "--batch-size", str(case["batch_size"]), "--input-size", str(case["input_size"]),
        "--steps", str(case["steps"]), "--kernels", case.get("kernels", "cardinal"),
        "--threads", str(case["threads"]),
    ]
    if "precision" in case:
        args += ["--precision", case["precision"]]
    result = run_cardinal(binary, args)
    return result[0] if isinstance(result, list) else result


def spread(values):
    return f"{min(values):.2f}-{max(values):.2f}" if len(values) > 1 else ""


# Grouped models and the dense model they match in MACs: the cardinality grid's cells and
# its dense cell, the CPU ResNeXts and their ResNet.
DENSE_OF = (("cpu_resnext14_", "cpu_resnet14"), ("cpu_resnext20_", "cpu_resnet20"))


def against_dense(ips_by_model):
    """Each grouped model's img/s over its dense model's, at the same threads and precision,
    in cardinal and in each PyTorch mode: a cell loses to its dense cell in both tools, and
    this shows by how much in each. `ips_by_model` maps (model, threads, bf16) to (cardinal
    img/s, {mode: PyTorch img/s}); returns (model, dense, threads, bf16, cardinal ratio,
    {mode: PyTorch ratio}) for every model whose dense model was timed too.

    >>> ips = {("cpu_resnet14", 2, False): (1000.0, {"f32-cl": 800.0}),
    ...        ("cpu_resnext14_8x7d", 2, False): (900.0, {"f32-cl": 600.0}),
    ...        ("cpu_resnext14_32x2d", 1, False): (500.0, {"f32-cl": 400.0}),
    ...        ("cpu_resnext20_4x12d", 2, True): (700.0, {"f32-cl": 700.0}),
    ...        ("cpu_resnet20", 2, False): (350.0, {"f32-cl": 350.0})}
    >>> against_dense(ips)
    [('cpu_resnext14_8x7d', 'cpu_resnet14', 2, False, 0.9, {'f32-cl': 0.75})]
    """
    rows = []
    for (model, threads, bf16), (ours, theirs) in ips_by_model.items():
        dense = next((d for prefix, d in DENSE_OF if model.startswith(prefix)), None)
        ref = ips_by_model.get((dense, threads, bf16))
        if ref is None:
            continue
        rows.append((model, dense, threads, bf16, ours / ref[0],
                     {m: theirs[m] / ref[1][m] for m in theirs if m in ref[1]}))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", action="append", help="JSON from `cardinal bench train`")
    parser.add_argument("--conv", action="append", help="JSON from `cardinal bench conv`")
    parser.add_argument("--conv-repeats", type=int, default=5)
    parser.add_argument("--json", help="also write every row here")
    parser.add_argument("--cardinal", help="the cardinal binary: time every case again in it, "
                        "alternating with PyTorch, for --rounds rounds")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--modes", default=",".join(MODES),
                        help="PyTorch modes to time, comma-separated, of " + ", ".join(MODES)
                        + " (bf16-cl is emulated, and slow, on CPUs without bf16 units)")
    args = parser.parse_args()
    wanted = args.modes.split(",")
    unknown = [m for m in wanted if m not in MODES]
    if unknown:
        parser.error(f"--modes: unknown mode {unknown[0]!r}; expected some of {', '.join(MODES)}")
    for mode in [m for m in MODES if m not in wanted]:
        del MODES[mode]
    rounds = args.rounds if args.cardinal else 1
    try:
        import torch
    except ImportError:
        print(
            "PyTorch is not installed: the side-by-side needs it as a reference.\n"
            "  python3 -m venv .venv-torch && .venv-torch/bin/pip install torch "
            "--index-url https://download.pytorch.org/whl/cpu\n"
            "then: CARDINAL_TORCH_PYTHON=.venv-torch/bin/python just bench-compare",
            file=sys.stderr,
        )
        return 3
    train_cases, conv_cases = load_cases(args.train), load_cases(args.conv)
    default_threads = (train_cases or [{}])[0].get("threads") or os.cpu_count()
    torch.set_num_threads(default_threads)
    rows = []
    print(f"PyTorch {torch.__version__}; {rounds} round{'s' if rounds > 1 else ''} per case, each timing "
          f"cardinal then PyTorch in {len(MODES)} modes ({', '.join(MODES.values())}); "
          "img/s are medians, ratios (cardinal / PyTorch) the median of the rounds' ratios, then their range\n")
    if train_cases:
        header = ("| train step | threads | batch | input | cardinal img/s | "
                  + " | ".join(f"PyTorch {m} img/s" for m in MODES.values())
                  + " | " + " | ".join(f"ratio vs {m}" for m in MODES.values())
                  + " | peak RSS cardinal / PyTorch (same precision, channels_last) |")
        print(header)
        print("|" + "---|" * (5 + 2 * len(MODES) + 1))
        by_model, ips_by_model = {}, {}
        for case in train_cases:
            threads = case.get("threads") or default_threads
            torch.set_num_threads(threads)
            ours_runs, theirs_runs = [], {mode: [] for mode in MODES}
            for r in range(rounds):
                ours_runs.append(case if r == 0 else cardinal_train_case(args.cardinal, case))
                for mode in MODES:
                    theirs_runs[mode].append(train_case(torch, case, mode))
            ratios = {
                mode: [o["images_per_sec"] / t["images_per_sec"] for o, t in zip(ours_runs, runs)]
                for mode, runs in theirs_runs.items()
            }
            ours_ips = statistics.median(o["images_per_sec"] for o in ours_runs)
            theirs_ips = {mode: statistics.median(t["images_per_sec"] for t in runs)
                          for mode, runs in theirs_runs.items()}
            # Memory against PyTorch in the same precision and its faster layout.
            bf16 = case.get("precision", "f32") != "f32"
            mem_mode = "bf16-cl" if bf16 else "f32-cl"
            ours_mem = [o["peak_rss_bytes"] for o in ours_runs if o.get("peak_rss_bytes")]
            theirs_mem = [t["peak_rss_bytes"] for t in theirs_runs.get(mem_mode, []) if t["peak_rss_bytes"]]
            mem = None
            if ours_mem and theirs_mem:
                ours_mem, theirs_mem = statistics.median(ours_mem), statistics.median(theirs_mem)
                mem = ours_mem / theirs_mem
            label = case["model"] + ("" if case.get("kernels", "cardinal") == "cardinal" else f" ({case['kernels']} ops)")
            if bf16:
                label += f" ({case['precision']})"
            print(
                f"| {label} | {threads} | {case['batch_size']} | {case['input_size']} | {ours_ips:.1f} | "
                + " | ".join(f"{theirs_ips[m]:.1f}" for m in MODES)
                + " | " + " | ".join(f"{statistics.median(ratios[m]):.2f}x {spread(ratios[m])}" for m in MODES)
                + " | " + (f"{mem:.2f}x ({ours_mem / 2**20:.0f} / {theirs_mem / 2**20:.0f} MiB)" if mem else "-")
                + " |",
                flush=True,
            )
            by_model[(case["model"], threads, bf16)] = (
                statistics.median(o["ms_per_step"] for o in ours_runs),
                {m: statistics.median(t["ms_per_step"] for t in runs) for m, runs in theirs_runs.items()},
            )
            if case.get("kernels", "cardinal") == "cardinal":
                ips_by_model[(case["model"], threads, bf16)] = (ours_ips, theirs_ips)
            rows.append({"kind": "train", "case": label, "threads": threads,
                         "precision": case.get("precision", "f32"), "isa": case.get("isa"),
                         "cardinal": ours_runs, "pytorch": theirs_runs,
                         "ratio": {m: statistics.median(v) for m, v in ratios.items()},
                         "ratios": ratios, "memory_ratio": mem})
        for threads in sorted({k[1] for k in by_model}):
            for bf16 in (False, True):
                a, b = ("resnet50", threads, bf16), ("resnext50_32x4d", threads, bf16)
                if a in by_model and b in by_model:
                    ours = by_model[b][0] / by_model[a][0]
                    theirs = {m: by_model[b][1][m] / by_model[a][1][m] for m in MODES}
                    print(f"\nresnext50_32x4d / resnet50 train time at equal FLOPs ({'bf16-mixed' if bf16 else 'f32'}): "
                          f"cardinal {ours:.2f}, PyTorch " + ", ".join(f"{v:.2f} ({MODES[m]})" for m, v in theirs.items()))
                    rows.append({"kind": "ratio", "case": "resnext50_32x4d / resnet50", "cardinal": ours, "pytorch": theirs})
        dense_rows = against_dense(ips_by_model)
        if dense_rows:
            print("\nGrouped models against their dense model at equal MACs: img/s over the dense "
                  "model's, from the medians above (cases timed minutes apart; `just bench-cells` "
                  "times cardinal's cells in interleaved steps, more tightly)\n")
            print("| model | against | threads | precision | cardinal | "
                  + " | ".join(f"PyTorch {m}" for m in MODES.values()) + " |")
            print("|" + "---|" * (5 + len(MODES)))
            for model, dense, threads, bf16, ours, theirs in dense_rows:
                precision = "bf16-mixed" if bf16 else "f32"
                print(f"| {model} | {dense} | {threads} | {precision} | {ours:.3f} | "
                      + " | ".join(f"{theirs[m]:.3f}" for m in MODES) + " |")
                rows.append({"kind": "against_dense", "case": model, "dense": dense,
                             "threads": threads, "precision": precision,
                             "cardinal": ours, "pytorch": theirs})
        print()
        torch.set_num_threads(default_threads)
    if conv_cases:
        print("| convolution | cardinal fwd / fwd+bwd ms | PyTorch f32 channels_last fwd / fwd+bwd ms | train ratio (PyTorch time / cardinal time) |")
        print("|---|---|---|---|")
        ours_rounds = [conv_cases]
        for _ in range(1, rounds):
            ours_rounds.append(run_cardinal(args.cardinal, ["bench", "conv", "--repeats", str(args.conv_repeats)]))
        for i, case in enumerate(conv_cases):
            ours = [by_round[i] for by_round in ours_rounds]
            theirs = [conv_case(torch, case, args.conv_repeats) for _ in range(rounds)]
            ratios = [t[1] / o["cardinal_train_ms"] for o, t in zip(ours, theirs)]
            ratio = statistics.median(ratios)
            our_fwd = statistics.median(o["cardinal_forward_ms"] for o in ours)
            our_train = statistics.median(o["cardinal_train_ms"] for o in ours)
            fwd = statistics.median(t[0] for t in theirs)
            train = statistics.median(t[1] for t in theirs)
            print(
                f"| {case['case']} | {our_fwd:.1f} / {our_train:.1f} | "
                f"{fwd:.1f} / {train:.1f} | {ratio:.2f}x {spread(ratios)} |",
                flush=True,
            )
            rows.append({"kind": "conv", "case": case["case"], "cardinal": ours,
                         "pytorch": [{"forward_ms": f, "train_ms": t} for f, t in theirs],
                         "ratio": ratio, "ratios": ratios})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
