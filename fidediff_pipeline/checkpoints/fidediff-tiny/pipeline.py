# Weights and configs only: the code is the installed fidediff_pipeline package (pip install fidediff-pipeline).
# `fidediff push`, `fidediff export-space` and `save_pretrained(..., remote_code=True)` write the pipeline's own
# code here instead, for loading with trust_remote_code where the package is not installed.
from fidediff_pipeline import FideDiffPipeline  # noqa: F401
