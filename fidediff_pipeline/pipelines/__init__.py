"""FideDiff's pipeline (``pipeline_fidediff.py``, as in ``diffusers.pipelines``)."""

from .pipeline_fidediff import DEFAULT_TIMESTEP, FideDiffPipeline, FideDiffPipelineOutput

__all__ = ["DEFAULT_TIMESTEP", "FideDiffPipeline", "FideDiffPipelineOutput"]
