"""Does SDSH fine-tuning of a pretrained backbone beat hashing its frozen features? One command, mean +- std.

The paper's pipeline at CPU scale:

1. the pretrained backbone: ``scripts/pretrain_backbone.py`` (plain DINOv2 on a generated mix of families
   that are not fine-tuning sets), run first when ``--weights`` does not exist;
2. for each family (``shapes`` of ``scripts/image_families.py``, the three sets of
   ``scripts/collapse_study.py`` and the demo data) and each seed: SDSH fine-tunes from those weights
   (``student.pretrained_weights``) with ``--preset`` at each code length, and every evaluation's teacher
   is kept;
3. on the same split (``train.train_ratio`` of the preset) and metric (mAP@all, Hamming ranking, ties by
   database index), each cell is the mean +- std over the seeds of:

   - SDSH codes, selected two ways: **reference** (the evaluation with the best mAP on the test queries,
     as the reference code and the trainer's default do: selection on the test set) and **validation**
     (the evaluation with the best mAP of validation queries carved from the database side: the last
     ``--val-ratio`` of each class's database images, ranked against the rest of the database; the test
     queries are never looked at), and the last evaluation;
   - LSH / PCAH / ITQ / SH on the CLS token of the **frozen pretrained** backbone (seeded by the seed);
   - ITQ on the CLS token of the **fine-tuned** teacher (the validation-selected one), and its codes'
     margin over it;
   - the SDSH codes after an ITQ rotation of the continuous codes u fitted on the database codes (no
     labels; an orthogonal map a hash head can fold into its last layer), validation-selected on those codes;
   - LSH / ITQ on 16x16 pixels.

Writes ``claim.json`` (every run's figures) and ``claim.md`` (the tables; a difference is marked where
it exceeds two standard deviations of the difference, sqrt(s_a^2 + s_b^2) over the seeds)::

    python scripts/pretrained_claim.py --output-dir outputs/claim
    python scripts/pretrained_claim.py --output-dir outputs/claim --families shapes,demo --bits 32 --seeds 0,1,2 \\
        --preset configs/finetune_demo.yaml -- optim.base_lr=0.002
"""

import argparse
import glob
import json
import math
import os
import shutil
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (REPO_ROOT, os.path.dirname(os.path.abspath(__file__))):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import collapse_study  # noqa: E402
import image_families  # noqa: E402
import pretrain_backbone  # noqa: E402

from dinov2.checkpoint import load_torch_file  # noqa: E402
from dinov2.data.builders import make_eval_dataset  # noqa: E402
from dinov2.data.demo import generate_demo_dataset  # noqa: E402
from dinov2.eval.baselines.methods import fit_baseline  # noqa: E402
from dinov2.eval.baselines.tool import evaluate_baselines, make_pixel_transform  # noqa: E402
from dinov2.eval.encode import extract_codes  # noqa: E402
from dinov2.eval.metrics import retrieval_metrics  # noqa: E402
from dinov2.models import load_hashing_network  # noqa: E402
from dinov2.train import train as train_module  # noqa: E402
from dinov2.utils.config import get_cfg_from_args  # noqa: E402

DEFAULT_PRESET = os.path.join(REPO_ROOT, "configs", "demo.yaml")
DEFAULT_WEIGHTS = os.path.join(REPO_ROOT, "outputs", "pretrain", pretrain_backbone.WEIGHTS_NAME)
FAMILIES = ("shapes", "phototiles", "lowcontrast", "gratings", "demo")
FROZEN_METHODS = ("lsh", "pcah", "itq", "sh")
PIXEL_METHODS = ("lsh", "itq")
EPOCH_LENGTH = 10  # configs/demo.yaml and the fine-tuning presets: train.OFFICIAL_EPOCH_LENGTH


# --------------------------------------------------------------------------------------------- data


def build_data(family: str, root: str, seed: int) -> str:
    """The class-folder tree of ``family`` under ``root`` (built once)."""
    if family in collapse_study.SETS:
        return collapse_study.build_set(family, root, seed)
    if family in image_families.FINETUNE_FAMILIES:
        return image_families.build_family(family, root, seed)
    if family == "demo":
        path = os.path.join(root, "demo")
        generate_demo_dataset(path, num_classes=6, images_per_class=40, image_size=64)
        return path
    raise ValueError(f"unknown family '{family}' (known: {', '.join(FAMILIES)})")


def validation_split(labels: np.ndarray, val_ratio: float) -> Tuple[np.ndarray, np.ndarray]:
    """Indices (validation queries, validation database) of the database: the last ``val_ratio`` of each class.

    The database is in class order then file order, so "last" is deterministic; every class keeps at least
    one image on each side.
    """
    val, rest = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_val = min(max(1, int(round(len(members) * val_ratio))), len(members) - 1)
        val += list(members[len(members) - n_val :])
        rest += list(members[: len(members) - n_val])
    return np.array(sorted(val)), np.array(sorted(rest))


class _CodesAndCls(torch.nn.Module):
    """A teacher network -> [continuous codes u, normalised CLS token] side by side."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network
        self.hash_bit = network.hash_bit + network.backbone.embed_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.network.backbone.forward_features(images)
        codes = self.network.hash_head(out["x_norm_clstoken"], out["x_norm_patchtokens"], view="global")["codes"]
        return torch.cat((codes, out["x_norm_clstoken"]), dim=1)


def encode(network: torch.nn.Module, datasets: Dict[str, Any], batch_size: int) -> Dict[str, np.ndarray]:
    """``{split: codes}``, ``{split_cls: features}`` and ``{split_labels}`` of a teacher network for every split."""
    wrapper = _CodesAndCls(network).eval()
    k = network.hash_bit
    out = {}
    for split, dataset in datasets.items():
        both, labels = extract_codes(wrapper, dataset, batch_size, 0, torch.device("cpu"), False, split, shard=False)
        both = both.double().numpy()
        out[split], out[f"{split}_cls"], out[f"{split}_labels"] = both[:, :k], both[:, k:], labels.numpy()
    return out


def cls_features(network: torch.nn.Module, datasets: Dict[str, Any], batch_size: int) -> Dict[str, np.ndarray]:
    enc = encode(network, datasets, batch_size)
    return {s: enc[f"{s}_cls"] for s in datasets} | {f"{s}_labels": enc[f"{s}_labels"] for s in datasets}


def pixel_features(cfg, datasets: Dict[str, Any]) -> Dict[str, np.ndarray]:
    identity = torch.nn.Identity()
    identity.hash_bit = 3 * 16 * 16
    out = {}
    transform = make_pixel_transform(cfg.crops.global_crops_size, 16)
    for split, dataset in datasets.items():
        saved, dataset.transform = dataset.transform, transform
        feats, labels = extract_codes(identity, dataset, 256, 0, torch.device("cpu"), False, split, shard=False)
        dataset.transform = saved
        out[split], out[f"{split}_labels"] = feats.double().numpy(), labels.numpy()
    return out


def code_map(query: np.ndarray, db: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray) -> float:
    """mAP@all of sign codes (sign(0) -> +1), Hamming ranking with ties by database index."""
    q = np.where(query >= 0, 1, -1).astype(np.int8)
    d = np.where(db >= 0, 1, -1).astype(np.int8)
    return float(retrieval_metrics(q, d, q_labels, db_labels)["mAP"])


def bit_stats(db: np.ndarray) -> Dict[str, float]:
    """Bit balance and decorrelation of the database codes: mean |bit mean|, mean |off-diagonal correlation|."""
    b = np.where(db >= 0, 1.0, -1.0)
    means = b.mean(axis=0)
    centred = b - means
    std = centred.std(axis=0)
    std[std == 0] = 1.0
    corr = (centred / std).T @ (centred / std) / len(b)
    off = corr[~np.eye(len(corr), dtype=bool)]
    return {"bit_imbalance": float(np.abs(means).mean()), "bit_correlation": float(np.abs(off).mean())}


# --------------------------------------------------------------------------------------------- fine-tuning


class _TeacherKeeper:
    """Hard-links every ``eval/last/teacher_checkpoint.pth`` the trainer writes, so that no evaluation is lost.

    The trainer keeps only the best and the last teacher; selecting on a validation split afterwards needs
    them all. It writes each one atomically (a rename), so a link always names a complete file.
    """

    def __init__(self, run_dir: str, keep_dir: str):
        self.source = os.path.join(run_dir, "eval", "last", "teacher_checkpoint.pth")
        self.keep_dir = keep_dir
        self.seen: Optional[int] = None
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _grab(self) -> None:
        try:
            inode = os.stat(self.source).st_ino
        except FileNotFoundError:
            return
        if inode != self.seen:
            target = os.path.join(self.keep_dir, f"teacher_{self.count:03d}.pth")
            try:
                os.link(self.source, target)
            except FileNotFoundError:
                return
            self.seen, self.count = inode, self.count + 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._grab()
            time.sleep(0.2)

    def __enter__(self):
        os.makedirs(self.keep_dir, exist_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._grab()


def finetune(data: str, run_dir: str, preset: str, weights: str, bits: int, seed: int, iterations: int,
             eval_period: int, opts: List[str]) -> List[str]:
    """Fine-tune SDSH from ``weights``; return the teacher checkpoints of every evaluation, in order."""
    epochs = max(1, iterations // EPOCH_LENGTH)
    args = train_module.get_args_parser().parse_args(
        ["--config-file", preset, "--output-dir", run_dir, "--no-resume", f"train.data_path={data}",
         f"student.pretrained_weights={weights}", f"hash.hash_bit={bits}", f"train.seed={seed}",
         f"optim.epochs={epochs}", f"optim.warmup_epochs={min(max(1, epochs // 10), epochs)}",
         f"evaluation.eval_period_iterations={eval_period}", f"train.saveckp_freq={epochs}", *opts]
    )  # fmt: skip
    keep = os.path.join(run_dir, "teachers")
    shutil.rmtree(keep, ignore_errors=True)
    with _TeacherKeeper(run_dir, keep):
        train_module.main(args)
    return sorted(glob.glob(os.path.join(keep, "teacher_*.pth")))


def rotated_codes(db: np.ndarray, queries: np.ndarray, bits: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Binary codes after an ITQ rotation of the continuous codes u, fitted on the database codes (no labels).

    u is centred on the database mean and rotated (PCA to all K directions, then ITQ's rotation): an
    orthogonal map that a hash head can fold into its last linear layer, so the codes stay sign(W'v + b').
    """
    model = fit_baseline("itq", db, bits, seed=seed)
    return model.encode(db), model.encode(queries)


def score_run(cfg, teachers: List[str], datasets, val: np.ndarray, rest: np.ndarray, bits: int, seed: int) -> Dict[str, Any]:
    """Test and validation mAP of every kept teacher; the reference, validation-selected and last picks.

    Each teacher is scored on its codes sign(u) and on its codes after the ITQ rotation of u
    (``rotated_codes``); each selection is made on its own kind of codes.
    """
    evals = []
    selected_enc = None
    best_val = -1.0
    for path in teachers:
        network, _ = load_hashing_network(cfg, path, torch.device("cpu"))
        iteration = int(load_torch_file(path).get("iteration", -1))
        enc = encode(network, datasets, cfg.evaluation.batch_size)
        db, db_y, q_y = enc["database"], enc["database_labels"], enc["queries_labels"]
        test = code_map(enc["queries"], db, q_y, db_y)
        val_map = code_map(db[val], db[rest], db_y[val], db_y[rest])
        db_r, q_r = rotated_codes(db, enc["queries"], bits, seed)
        evals.append({"iteration": iteration, "test_mAP": test, "val_mAP": val_map,
                      "test_mAP_rotated": code_map(q_r, db_r, q_y, db_y),
                      "val_mAP_rotated": code_map(db_r[val], db_r[rest], db_y[val], db_y[rest]),
                      **bit_stats(db)})  # fmt: skip
        if val_map > best_val:  # the first of equal validation scores, as the trainer keeps its first best
            best_val, selected_enc = val_map, enc
    reference = max(evals, key=lambda e: e["test_mAP"])
    selected = max(evals, key=lambda e: e["val_mAP"])
    selected_rotated = max(evals, key=lambda e: e["val_mAP_rotated"])
    itq = evaluate_baselines(selected_enc["database_cls"], selected_enc["database_labels"], selected_enc["queries_cls"],
                             selected_enc["queries_labels"], ["itq"], [bits], seed=seed)[0]["mAP"]  # fmt: skip
    return {"evaluations": evals, "reference": reference, "validation": selected, "last": evals[-1],
            "validation_rotated": selected_rotated, "itq_finetuned_cls": itq}  # fmt: skip


# --------------------------------------------------------------------------------------------- table


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else float("nan")


def fmt(values: Sequence[float]) -> str:
    m, s = mean_std(values)
    if math.isnan(m):
        return "–"
    return f"{m:.3f} (one run)" if math.isnan(s) else f"{m:.3f} ± {s:.3f}"


def compare(a: Sequence[float], b: Sequence[float]) -> str:
    """'>' / '<' when mean(a) - mean(b) exceeds two standard deviations of the difference, else '≈';
    without a spread on either side (fewer than two runs) no mark is given."""
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    if math.isnan(ma) or math.isnan(mb):
        return "–"
    if math.isnan(sa) or math.isnan(sb):
        return f"{ma - mb:+.3f} (one run)"
    diff, sd = ma - mb, math.sqrt(sa * sa + sb * sb)
    mark = ">" if diff > 2 * sd else "<" if -diff > 2 * sd else "≈"
    return f"{diff:+.3f} {mark}"


def cells(results: Dict[str, Any], family: str, bits: int) -> Dict[str, List[float]]:
    runs = [r for r in results[family]["runs"] if r["bits"] == bits]
    out: Dict[str, List[float]] = {
        "sdsh_reference": [r["reference"]["test_mAP"] for r in runs],
        "sdsh_validation": [r["validation"]["test_mAP"] for r in runs],
        "sdsh_last": [r["last"]["test_mAP"] for r in runs],
        "sdsh_rotated": [r["validation_rotated"]["test_mAP_rotated"] for r in runs if "validation_rotated" in r],
        "itq_finetuned_cls": [r["itq_finetuned_cls"] for r in runs],
    }
    for kind, methods in (("frozen", FROZEN_METHODS), ("pixels", PIXEL_METHODS)):
        for method in methods:
            out[f"{method}_{kind}"] = [
                row["mAP"] for row in results[family]["baselines"] if row["features"] == kind and row["method"] == method
                and row["bits"] == bits
            ]  # fmt: skip
    return out


def markdown(results: Dict[str, Any], bits_list: Sequence[int], seeds: Sequence[int], header: str) -> str:
    lines = [header, ""]
    for bits in bits_list:
        lines += [
            f"### {bits} bits (mAP@all, mean ± std over seeds {','.join(map(str, seeds))})",
            "",
            "| family | SDSH, reference selection (best on test queries) | SDSH, validation-selected | SDSH last "
            "| ITQ frozen pretrained | LSH / PCAH / SH frozen pretrained | ITQ fine-tuned CLS | ITQ / LSH pixels "
            "| SDSH (val.) − ITQ frozen | SDSH (val.) − ITQ fine-tuned CLS "
            "| SDSH + ITQ rotation of u (val.) | rotated − ITQ frozen | rotated − ITQ fine-tuned CLS |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for family in results:
            c = cells(results, family, bits)
            if not c["sdsh_validation"]:
                continue
            lines.append(
                f"| {family} | {fmt(c['sdsh_reference'])} | **{fmt(c['sdsh_validation'])}** | {fmt(c['sdsh_last'])} "
                f"| {fmt(c['itq_frozen'])} | {fmt(c['lsh_frozen'])} / {fmt(c['pcah_frozen'])} / {fmt(c['sh_frozen'])} "
                f"| {fmt(c['itq_finetuned_cls'])} | {fmt(c['itq_pixels'])} / {fmt(c['lsh_pixels'])} "
                f"| {compare(c['sdsh_validation'], c['itq_frozen'])} "
                f"| {compare(c['sdsh_validation'], c['itq_finetuned_cls'])} "
                f"| {fmt(c['sdsh_rotated'])} | {compare(c['sdsh_rotated'], c['itq_frozen'])} "
                f"| {compare(c['sdsh_rotated'], c['itq_finetuned_cls'])} |"
            )
        lines.append("")
    lines.append(
        "`>` / `<`: the difference of the means exceeds two standard deviations of the difference "
        "(sqrt(s_a² + s_b²), sample std over the seeds); `≈`: it does not."
    )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- main


def run(args, opts: List[str]) -> Dict[str, Any]:
    out = os.path.abspath(args.output_dir)
    weights = os.path.abspath(args.weights)
    if not os.path.isfile(weights):
        print(f"no pretrained weights at {weights}: pretraining first", flush=True)
        made = pretrain_backbone.pretrain(os.path.dirname(weights), args.pretrain_iterations, 0, 150, 128, [])
        if os.path.abspath(made) != weights:
            shutil.copyfile(made, weights)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    bits_list = [int(b) for b in args.bits.split(",") if b]
    families = [f for f in args.families.split(",") if f]
    results: Dict[str, Any] = {}
    json_path = os.path.join(out, "claim.json")
    if os.path.isfile(json_path) and args.resume:
        with open(json_path) as f:
            results = json.load(f)["results"]
    for family in families:
        data = build_data(family, os.path.join(out, "data"), args.data_seed)
        cfg = get_cfg_from_args(train_module.get_args_parser().parse_args(
            ["--config-file", args.preset, "--output-dir", os.path.join(out, "runs", family),
             f"train.data_path={data}", f"student.pretrained_weights={weights}", *opts]))  # fmt: skip
        datasets = {"database": make_eval_dataset(cfg, data, "train"), "queries": make_eval_dataset(cfg, data, "query")}
        entry = results.setdefault(family, {"data": data, "runs": [], "baselines": []})
        frozen, _ = load_hashing_network(cfg, weights, torch.device("cpu"))
        features = {"frozen": cls_features(frozen, datasets, cfg.evaluation.batch_size), "pixels": pixel_features(cfg, datasets)}
        val, rest = validation_split(features["pixels"]["database_labels"], args.val_ratio)
        entry["validation"] = {"queries": len(val), "database": len(rest), "val_ratio": args.val_ratio}
        for seed in seeds:
            for kind, methods in (("frozen", FROZEN_METHODS), ("pixels", PIXEL_METHODS)):
                done = {r["bits"] for r in entry["baselines"] if r["seed"] == seed and r["features"] == kind}
                missing = [b for b in bits_list if b not in done]
                if not missing:
                    continue
                f = features[kind]
                for row in evaluate_baselines(f["database"], f["database_labels"], f["queries"], f["queries_labels"],
                                              methods, missing, seed=seed):  # fmt: skip
                    entry["baselines"].append({"features": kind, "method": row["method"], "bits": row["bits"],
                                               "seed": seed, "mAP": row["mAP"]})  # fmt: skip
            for bits in bits_list:
                if any(r["seed"] == seed and r["bits"] == bits for r in entry["runs"]):
                    continue
                start = time.time()
                run_dir = os.path.join(out, "runs", family, f"b{bits}_s{seed}")
                teachers = finetune(data, run_dir, args.preset, weights, bits, seed, args.iterations, args.eval_period, opts)
                run_cfg = get_cfg_from_args(train_module.get_args_parser().parse_args(
                    ["--config-file", args.preset, "--output-dir", run_dir, f"train.data_path={data}",
                     f"hash.hash_bit={bits}", *opts]))  # fmt: skip
                scored = score_run(run_cfg, teachers, datasets, val, rest, bits, seed)
                entry["runs"].append({"bits": bits, "seed": seed, "seconds": time.time() - start, **scored})
                if not args.keep_checkpoints:
                    for path in glob.glob(os.path.join(run_dir, "model_*.pth")) + teachers:
                        os.remove(path)
                print(f"[{family} {bits} bits seed {seed}] reference {scored['reference']['test_mAP']:.4f} validation-selected "
                      f"{scored['validation']['test_mAP']:.4f} last {scored['last']['test_mAP']:.4f} ITQ fine-tuned CLS "
                      f"{scored['itq_finetuned_cls']:.4f} ({time.time() - start:.0f} s)", flush=True)  # fmt: skip
                with open(json_path, "w") as f:
                    json.dump({"args": vars(args), "opts": opts, "results": results}, f, indent=2)
        with open(json_path, "w") as f:
            json.dump({"args": vars(args), "opts": opts, "results": results}, f, indent=2)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Options after -- are config overrides added to every fine-tuning run.")
    parser.add_argument("--output-dir", default="outputs/claim")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS, help="pretrained backbone (made when missing)")
    parser.add_argument("--pretrain-iterations", type=int, default=1500)
    parser.add_argument("--preset", default=DEFAULT_PRESET, help="fine-tuning config (default configs/demo.yaml)")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--bits", default="16,32,64")
    parser.add_argument("--iterations", type=int, default=300, help="fine-tuning iterations per run")
    parser.add_argument("--eval-period", type=int, default=50, help="iterations between evaluations")
    parser.add_argument("--val-ratio", type=float, default=0.25, help="share of each class's database held out for selection")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the built image sets")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in claim.json")
    parser.add_argument("--keep-checkpoints", action="store_true")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    opts = [o for o in args.opts if o != "--"]
    args.preset = os.path.abspath(args.preset)
    results = run(args, opts)
    header = (f"Preset `{os.path.relpath(args.preset, REPO_ROOT)}` {' '.join(opts)}, {args.iterations} fine-tuning "
              f"iterations, evaluation every {args.eval_period}; validation: last {args.val_ratio:.0%} of each class's "
              f"database.")  # fmt: skip
    seeds = [int(s) for s in args.seeds.split(",") if s]
    bits_list = [int(b) for b in args.bits.split(",") if b]
    text = markdown(results, bits_list, seeds, header)
    with open(os.path.join(os.path.abspath(args.output_dir), "claim.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
