"""diffusers' own model tester mixins, run on this project's models: a peer's check, not ours.

``common.py`` (``ModelTesterMixin``: save/load round trips, variants, dtypes, determinism, output equivalence,
fp32 modules, sharded checkpoints) and ``training.py`` (``TrainingTesterMixin``: a training step, EMA, gradient
checkpointing and its equivalence, mixed precision) are copied unchanged from huggingface/diffusers'
``tests/models/testing_utils/`` (commit 58eb52c080, Apache-2.0) except for one line each: they import their helpers
from ``.testing_utils`` (a copy of the few of diffusers' ``tests/testing_utils.py`` they use) instead of
``...testing_utils``. diffusers ships its tests in its repository, not in the wheel, hence the copy.
"""
