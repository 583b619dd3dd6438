r"""Empirical privacy vs σ_DP: canary clients on a cheap federated task.

    python -m experiments.audit_sweep [--sigmas 0,0.05,0.1,0.2,0.5,1] [--rounds 100]
        [--dims 10000] [--canaries 300] [--out docs/audit_sweep.png]
        [--readme docs/guides/canaries.md]

The task: federated linear regression (a D-dimensional kernel and a bias; every user has its
own target near a shared one, so deltas are non-IID) trained by the simulator's own round
step — local SGD, per-layer clipping (by dimension), Poisson sampling of K users plus k
canary clients, the Gaussian noise once on the sum, a FedAvg server (SGD, lr 1) — for
T rounds at every σ_DP of the sweep (one compiled step: σ_DP is its argument). Each run
reports ε_accounted (RDP, the sampler's own analysis over the K + k users) and both empirical
estimates (:mod:`fl_dp_asr.fl.audit`). Writes the plot to ``--out``, prints a markdown table
and, with ``--readme``, puts it between that page's ``audit_sweep:begin/end`` markers. The
default sweep took about 8 minutes on 2 shared CPU cores (the canaries dominate: k + m = 600
model-sized draws per round).
"""

from __future__ import annotations

import argparse
import math
import pathlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from experiments import markers, plots
from fl_dp_asr.dp import DPConfig, accounting
from fl_dp_asr.dp.canaries import Canaries
from fl_dp_asr.fl import audit, client, server
from fl_dp_asr.fl import round as round_lib
from fl_dp_asr.train import utils

BEGIN, END = "<!-- audit_sweep:begin -->", "<!-- audit_sweep:end -->"
SIGMAS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)


class Setting(NamedTuple):
    """One sweep's fixed settings (σ_DP varies)."""

    population: int = 200  # K users
    cohort_size: int = 10  # S, Poisson: expected users + canaries per round
    rounds: int = 100  # T
    dims: int = 10_000  # D, the kernel's size
    canaries: int = 300  # k inserted (and as many held out)
    clip_norm: float = 0.1  # C, per layer by dimension
    local_steps: int = 2
    batch_size: int = 8
    local_lr: float = 0.05
    delta: float = 1e-5
    seed: int = 0


# ------------------------------------------------------------------ the task


def loss_fn(params, batch, key):
    """Masked mean squared error of a linear model (docs/CONTRACTS.md's loss contract)."""
    del key
    pred = batch["x"] @ params["kernel"] + params["bias"][0]
    count = jnp.sum(batch["mask"])
    loss = jnp.sum(jnp.square(pred - batch["y"]) * batch["mask"]) / jnp.maximum(count, 1.0)
    return loss, {"num_utterances": count}


def make_data(setting: Setting) -> dict[str, np.ndarray]:
    """Every user's local batches: ``x`` float32 [K, steps, batch, D], ``y`` [K, steps, batch];
    user u's target is w* + 0.3·ξ_u (non-IID), w* shared."""
    rng = np.random.default_rng(setting.seed)
    shape = (setting.population, setting.local_steps, setting.batch_size)
    x = rng.normal(size=shape + (setting.dims,)).astype(np.float32) / np.sqrt(setting.dims)
    shared = rng.normal(size=setting.dims)
    targets = shared + 0.3 * rng.normal(size=(setting.population, 1, 1, setting.dims))
    return {"x": x, "y": np.sum(x * targets, axis=-1).astype(np.float32)}


def cohort_block(data: dict[str, np.ndarray], users: np.ndarray, num_slots: int) -> dict[str, Any]:
    """The users' data packed into ``num_slots`` client slots (then padding clients)."""
    pad = num_slots - len(users)
    taken = {
        k: np.concatenate([v[users], np.zeros((pad,) + v.shape[1:], v.dtype)])
        for k, v in data.items()
    }
    client_mask = (np.arange(num_slots) < len(users)).astype(np.float32)
    step_mask = np.repeat(client_mask[:, None], data["x"].shape[1], axis=1)
    mask = np.repeat(step_mask[:, :, None], data["x"].shape[2], axis=2)
    return {"batches": taken | {"mask": mask}, "step_mask": step_mask, "client_mask": client_mask}


# ------------------------------------------------------------------ one run per σ_DP


class Sweep(NamedTuple):
    """What every run of a sweep shares: data, canaries, participation, the compiled step."""

    setting: Setting
    data: dict[str, np.ndarray]
    dp: DPConfig
    canaries: Canaries
    cohorts: audit.CanaryCohorts
    step: round_lib.BoundRoundStep


def make_sweep(setting: Setting) -> Sweep:
    """The DP policy without noise (each run sets its own std on the step) and the step."""
    dp = DPConfig("per_layer", setting.clip_norm, "by_dim")
    canaries = Canaries(setting.canaries, setting.canaries, seed=setting.seed)
    cohorts = audit.canary_sampler(
        "poisson", setting.population, canaries, setting.cohort_size, setting.seed
    )
    update = client.make_client_update(loss_fn, client.local_sgd(setting.local_lr, 1.0))
    step = round_lib.make_round_step(
        update,
        server.make_server_optimizer("sgd", 1.0),
        dp,
        cohorts.sampler.expected_size,
        canaries=canaries,
    )
    return Sweep(setting, make_data(setting), dp, canaries, cohorts, step)


def initial_params(setting: Setting) -> dict[str, jax.Array]:
    return {"kernel": jnp.zeros(setting.dims), "bias": jnp.zeros(1)}


def run(sweep: Sweep, sigma_dp: float, noise_stddev: float | None = None) -> dict[str, float]:
    """T rounds at ``sigma_dp``: ε_accounted (RDP; ∞ without noise), both estimates and the
    mean clip fraction.

    ``noise_stddev``: the std the step adds to the sum (None: z·C of ``sigma_dp``, what the
    accountant assumes; another value checks that the audit catches the mismatch).
    """
    setting, sampler = sweep.setting, sweep.cohorts.sampler
    z = accounting.sigma_dp_to_noise_multiplier(sigma_dp, sampler.expected_size)
    stddev = z * setting.clip_norm if noise_stddev is None else noise_stddev
    step = sweep.step._replace(noise_stddev=float(stddev))
    opt = server.make_server_optimizer("sgd", 1.0)
    state = round_lib.init_server_state(initial_params(setting), opt)
    trail, clipped = audit.AuditTrail.start(sweep.canaries), []
    key = jax.random.key(setting.seed)
    for r in range(setting.rounds):
        block = cohort_block(sweep.data, sweep.cohorts.sample(r), sweep.cohorts.num_slots())
        block[round_lib.CANARY_MASK] = sweep.cohorts.canary_mask(r)
        state, metrics = step(state, block, jax.random.fold_in(key, r))
        trail.add(np.asarray(metrics["canary_cosines"]))
        clipped.append(float(metrics["clip_fraction"]))
    final = audit.final_model_cosines(
        sweep.canaries, initial_params(setting), state.params, sweep.dp
    )
    accounted = (
        sampler.accountant(z, setting.delta).epsilon(setting.rounds, "rdp") if z > 0 else math.inf
    )
    return {
        "sigma_dp": sigma_dp,
        "noise_multiplier": z,
        "epsilon_accounted": accounted,
        "clip_fraction": float(np.mean(clipped)),
    } | audit.estimates(sweep.canaries, trail, final, setting.delta)


# ------------------------------------------------------------------ report


def _eps(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:.3g}"


def table(rows: Sequence[dict[str, float]]) -> str:
    """Markdown: σ_DP, z, ε_accounted and each estimate with its 95 % interval."""
    lines = [
        "| σ_DP | z | ε accounted (RDP) | ε final model [95 % CI] | ε all iterates [95 % CI] |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        views = [
            f"{_eps(row[f'epsilon_{v}'])} [{_eps(row[f'epsilon_{v}_ci_low'])}, "
            f"{_eps(row[f'epsilon_{v}_ci_high'])}]"
            for v in audit.VIEWS
        ]
        lines.append(
            f"| {row['sigma_dp']:g} | {row['noise_multiplier']:.3g} | "
            f"{_eps(row['epsilon_accounted'])} | {views[0]} | {views[1]} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, float]], path: str) -> None:
    """ε_accounted and both estimates (with their intervals) against σ_DP, log scale; σ_DP
    = 0 is drawn at the left edge."""
    fig, ax = plots.plt.subplots(figsize=(6.4, 4.2))
    noisy = [r for r in rows if r["sigma_dp"] > 0]
    x = np.array([r["sigma_dp"] for r in noisy])
    ax.plot(x, [r["epsilon_accounted"] for r in noisy], "k-o", label="ε accounted (RDP)")
    for view, style in zip(audit.VIEWS, ("C0-s", "C1-^")):
        y = np.array([r[f"epsilon_{view}"] for r in noisy])
        low = np.array([r[f"epsilon_{view}_ci_low"] for r in noisy])
        high = np.array([r[f"epsilon_{view}_ci_high"] for r in noisy])
        ax.errorbar(
            x,
            y,
            yerr=[y - low, high - y],
            fmt=style,
            capsize=3,
            label=f"ε empirical, {view.replace('_', ' ')}",
        )
        for r in rows:
            if r["sigma_dp"] == 0:
                ax.axhline(
                    r[f"epsilon_{view}"],
                    color=style[:2],
                    ls=":",
                    lw=1,
                    label=f"{view.replace('_', ' ')}, σ_DP = 0",
                )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="σ_DP (noise std on the mean / C)",
        ylabel="ε at δ",
        title="canary clients: empirical vs accounted ε",
    )
    ax.legend(fontsize=8)
    plots.save(fig, path)


def embed(document: str, text: str) -> str:
    """``document`` with the text between the sweep's README markers replaced by ``text``."""
    return markers.embed(document, BEGIN, END, text)


def main(argv: Sequence[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Setting()
    parser.add_argument("--sigmas", default=",".join(f"{s:g}" for s in SIGMAS))
    for name in ("rounds", "dims", "canaries", "population", "cohort_size"):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name)
        )
    parser.add_argument("--out", default="docs/audit_sweep.png")
    parser.add_argument("--readme", default=None, help="embed the table in this README")
    args = parser.parse_args(argv)
    setting = defaults._replace(
        rounds=args.rounds,
        dims=args.dims,
        canaries=args.canaries,
        population=args.population,
        cohort_size=args.cohort_size,
    )
    sweep = make_sweep(setting)
    rows = []
    for sigma in (float(s) for s in args.sigmas.split(",")):
        rows.append(run(sweep, sigma))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = (
        f"K = {setting.population} users + k = {setting.canaries} canaries (and "
        f"{setting.canaries} held out), Poisson S = {setting.cohort_size}, "
        f"T = {setting.rounds} rounds, D = {setting.dims + 1}, δ = {setting.delta:g}; "
        f"`python -m experiments.audit_sweep`\n\n" + table(rows)
    )
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    plot(rows, args.out)
    if args.readme:
        readme = pathlib.Path(args.readme).read_text(encoding="utf-8")
        utils.write_text(args.readme, embed(readme, text))  # atomic
    print(text)
    return rows


if __name__ == "__main__":
    main()
