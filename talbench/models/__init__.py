"""ActionFormer (Zhang, Wu, Li, ECCV 2022): model, batching helper and builder."""

from talbench.models.actionformer import ActionFormer, build_model, pad_batch

__all__ = ["ActionFormer", "build_model", "pad_batch"]
