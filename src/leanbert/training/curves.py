"""Training curves as a user looks at them: the history as JSON and a PNG of loss and metrics against steps."""

import json
from pathlib import Path

import torch


def running_mean(values: list[float], window: int) -> list[float]:
    """Mean of the last `window` values at each point (one batch is a noisy estimate of the loss)."""
    totals = torch.tensor(values, dtype=torch.float64).cumsum(0)
    totals[window:] = totals[window:] - totals[:-window].clone()
    return (totals / torch.arange(1, len(values) + 1).clamp(max=window)).tolist()


def write_curves(history: dict, folder: Path, name: str, ylabel: str = "loss", window: int = 20) -> None:
    """`<name>_curve.json` (the whole history) and `<name>_curve.png`: the training loss per step with its running
    mean, and beside it every evaluation metric per step."""
    (folder / f"{name}_curve.json").write_text(json.dumps(history) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evaluations = history["train"], history.get("eval", [])
    metrics = [key for key in (evaluations[0] if evaluations else {}) if key not in ("step", "samples", "seconds")]
    figure, axes = plt.subplots(1, 1 + bool(metrics), figsize=(6 + 5 * bool(metrics), 4), squeeze=False)
    steps, losses = [p["step"] for p in train], [p["loss"] for p in train]
    axis = axes[0][0]
    axis.plot(steps, losses, color="tab:blue", alpha=0.3, label="per step")
    axis.plot(steps, running_mean(losses, window), color="tab:blue", label=f"mean of {min(window, len(losses))} steps")
    if "loss" in metrics:
        axis.plot([e["step"] for e in evaluations], [e["loss"] for e in evaluations], "o-", color="tab:orange",
                  label="validation")
    axis.set(xlabel="step", ylabel=ylabel, yscale="log" if min(losses, default=1) > 0 else "linear", title=name)
    axis.legend()
    if metrics:
        axis = axes[0][1]
        for key in metrics:
            axis.plot([e["step"] for e in evaluations], [e[key] for e in evaluations], "o-", label=key)
        axis.set(xlabel="step", title="validation")
        axis.legend()
    figure.tight_layout()
    figure.savefig(folder / f"{name}_curve.png", dpi=110)
    plt.close(figure)
