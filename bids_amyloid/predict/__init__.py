"""Predict level: amyloid positivity from MRI alone with a trained student model.

``bids-amyloid BIDS_DIR OUT predict --model student_T1w.pt`` runs, in order:

1. load the model file (:mod:`.model`; ``torch.load(weights_only=True)``; a
   pretrained backbone is looked up from ``--backbone-weights`` /
   ``$BIDS_AMYLOID_WEIGHTS`` and must hash to what the model was trained with);
2. inventory the BIDS dataset; every MRI session holding at least one of the
   model's contrasts is predicted, the others are listed in ``excluded.tsv``
   with the reason (a multi-contrast model uses the subset present and says
   so in the ``note`` column) (:mod:`.plan`);
3. reuse participant-level slice caches whose preprocessing parameters and
   sources match the model's, otherwise run the MRI part of preprocessing
   (same code, the model file's ``[preproc]`` parameters) — PET and Centiloid
   are never needed (:mod:`.plan`);
4. infer (:mod:`.inference`), and write the tables (:mod:`.tables`): each
   subject's split in the model's cohort is written (``cohort_split``: train,
   val, test, or none); train and val subjects shaped the model and are
   warned about unless ``--allow-training-subjects``; where the dataset has
   Centiloid values, ``evaluation.tsv`` (per MRI–PET pair) and ``metrics.tsv``
   with the group level's columns;
5. with ``--saliency``, maps and per-subject pages (:mod:`.saliency`).

Outputs (all written atomically; names from
:class:`bids_amyloid.derivatives.PredictRun`)::

    OUT/predict/<model>/predictions.tsv   participant_id session_id contrasts_used probability
                                          positive_at_0.5 positive_at_tau tau model model_sha256
                                          cohort_split note
    OUT/predict/<model>/excluded.tsv      participant_id session_id reason
    OUT/predict/<model>/evaluation.tsv    per MRI–PET pair with Centiloid and label (if any)
    OUT/predict/<model>/metrics.tsv       set, then the group level's metrics columns (if any)
    OUT/predict/<model>/predict.json      provenance: model, configuration, counts

Example
-------
``bids-amyloid /data/new_bids /data/out predict --model /data/out/group/default/student_T1w.pt``
"""

from bids_amyloid.predict.inference import infer
from bids_amyloid.predict.model import PredictModel, load_predict_model
from bids_amyloid.predict.plan import SessionPlan, plan_sessions
from bids_amyloid.predict.run import run_predict
from bids_amyloid.predict.tables import PREDICTION_COLUMNS

__all__ = ["PREDICTION_COLUMNS", "PredictModel", "SessionPlan", "infer", "load_predict_model",
           "plan_sessions", "run_predict"]
