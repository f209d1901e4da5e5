"""Why does a student not learn? Look at what its classifier sees.

For one group run, passes every cohort pair's MRI through the saved student and prints:

- the student's AUC and probability spread per split;
- the spread of its pooled embeddings across pairs (median over dimensions of the
  standard deviation), next to their mean magnitude: a spread that is a small fraction
  of the magnitude means every subject looks alike to the classifier;
- how many of the classifier's hidden ReLU units are never active on the training pairs
  (a dead unit passes no gradient);
- the AUC on validation and test of a logistic regression fitted on the training pairs'
  embeddings after standardising each dimension: the label information the embeddings
  hold, whatever their scale.

::

    python benchmarks/student_probe.py OUT OUT/group/RUN [--model student_T1w.pt]
    python benchmarks/student_probe.py OUT OUT/group/RUN/fold-K      # one --cv fold
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="the participant-level output folder")
    p.add_argument("run", type=Path, help="the group run folder (cohort.tsv, config.toml)")
    p.add_argument("--model", default="student_T1w.pt", help="model file in the run folder")
    return p.parse_args()


def embed(out: Path, run: Path, model_file: str) -> tuple[pd.DataFrame, np.ndarray, object]:
    """Cohort pairs with the student's probability, their pooled embeddings, the network."""
    from bids_amyloid import derivatives
    from bids_amyloid.config import load_config
    from bids_amyloid.predict.inference import infer
    from bids_amyloid.predict.model import load_predict_model

    config = run / "config.toml"
    if not config.is_file():                    # a --cv fold: the run's configuration
        config = run.parent / "config.toml"
    model = load_predict_model(run / model_file, load_config(config))
    cohort = pd.read_csv(run / "cohort.tsv", sep="\t", dtype=str)
    contrasts = tuple(model.network.contrasts)
    plans = []
    for row in cohort.itertuples():
        sub, ses = row.participant_id.removeprefix("sub-"), row.mri_session.removeprefix("ses-")
        caches = {c: derivatives.mri_slice_cache(out, sub, ses, c) for c in contrasts}
        plans.append(SimpleNamespace(contrasts=contrasts, caches=caches,
                                     key=(sub, ses, row.pet_session)))
    embeddings: dict = {}
    probs = infer(plans, model, embeddings=embeddings)
    cohort["probability"] = [probs[p.key] for p in plans]
    cohort["label"] = cohort["label"].astype(int)
    return cohort, np.stack([embeddings[p.key] for p in plans]), model.network


def main() -> None:
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from bids_amyloid.evaluation import auc

    args = parse()
    cohort, x, network = embed(args.out, args.run, args.model)
    split, y = cohort["split"].to_numpy(), cohort["label"].to_numpy()
    for name in ("train", "val", "test"):
        part = cohort[split == name]
        print(f"student {name:5s}: {len(part):3d} pairs, AUC {auc(part['label'], part['probability']):.3f}, "
              f"probability sd {part['probability'].std():.3g}")
    print(f"pooled embeddings: spread across pairs {np.median(x.std(axis=0)):.3g} "
          f"(median per-dimension sd), mean magnitude {np.abs(x).mean():.3g}")
    with torch.no_grad():
        hidden = torch.relu(network.classifier[0](torch.from_numpy(x[split == "train"]).float()))
    dead = int((hidden.max(dim=0).values <= 0).sum())
    print(f"classifier hidden units never active on the training pairs: {dead} of {hidden.shape[1]}")
    train = split == "train"
    for c in (0.01, 0.1, 1.0):
        reader = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
        reader.fit(x[train], y[train])
        scores = {s: auc(y[split == s], reader.predict_proba(x[split == s])[:, 1])
                  for s in ("val", "test")}
        print(f"logistic regression on standardised embeddings (C={c}): "
              f"val AUC {scores['val']:.3f}, test AUC {scores['test']:.3f}")


if __name__ == "__main__":
    main()
