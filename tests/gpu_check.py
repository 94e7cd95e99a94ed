"""GPU check, not run by CI: the smoke notebook on the GPU, then footprint mode at 512² with the T4's code paths
(emulate_t4: fp16 + GradScaler, flash SDPA off, 15 GiB cap) at batch 1 and 2. Prints the README's footprint table.

On a GPU machine (../shared/gpu/README.md lists the wheels an offline one lacks):
    HF_HUB_OFFLINE=1 python tests/gpu_check.py [RUNS_FOLDER] [TRAIN_STEPS]"""
import json
import os
import sys
import time
from pathlib import Path

from notebook_runner import NotebookKernel

NOTEBOOK = Path(__file__).resolve().parents[1] / "ELITE_enhancer.ipynb"


def run(runs: Path, name: str, environ: dict) -> dict:
    """One run of the whole notebook in a fresh kernel; its metrics.json."""
    run_dir = runs / name
    kernel = NotebookKernel(NOTEBOOK, runs, {**os.environ, "HF_HUB_OFFLINE": "1"})
    started = time.perf_counter()
    try:
        finished, text = kernel.run_all({"ELITE_RUN_DIR": str(run_dir), **environ})
    finally:
        kernel.shutdown()
    print(f"{name}: {'finished' if finished else 'FAILED'} in {time.perf_counter() - started:.0f} s", flush=True)
    if not finished:
        print(text[-4000:])
        sys.exit(1)
    return json.loads((run_dir / "metrics.json").read_text())


def table_row(metrics: dict) -> str:
    training, inference = metrics["training"], metrics["inference"]
    passes = inference["ms_by_unet_passes"]
    return (f"| {metrics['environment']['device']['name']} | {training['batch_size']} | "
            f"{training['peak_vram_gib']:.2f} ({training['peak_allocated_gib']:.2f}) | "
            f"{training['seconds_per_step']:.2f} | {passes['1']:.0f} | {passes.get('50', float('nan')):.0f} |")


def main(runs: Path, train_steps: int) -> None:
    runs.mkdir(parents=True, exist_ok=True)
    run(runs, f"smoke-{time.time_ns()}", {"ELITE_RUN_MODE": "smoke"})
    rows = []
    for batch in (1, 2):
        metrics = run(runs, f"footprint-b{batch}-{time.time_ns()}", {
            "ELITE_RUN_MODE": "footprint", "ELITE_EMULATE_T4": "1", "ELITE_BATCH_SIZE": str(batch),
            "ELITE_TRAIN_STEPS": str(train_steps), "ELITE_RESOLUTION": "512"})
        assert metrics["runtime"]["dtype"] == "float16" and metrics["runtime"]["attention"]["flash"] is False
        rows.append(table_row(metrics))
    print(f"\nfootprint, 512², T4 code paths (fp16 + GradScaler, flash SDPA off, 15 GiB cap), {train_steps} steps, "
          "median s/step:\n")
    print("| GPU | batch | peak reserved (allocated) GiB | s/step | ms/image (1 step) | ms/image (50 passes) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/elite-gpu-check"),
         int(sys.argv[2]) if len(sys.argv) > 2 else 12)
