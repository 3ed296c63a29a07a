"""What a checkpoint tensor is, from its name alone, where torch's own modules make that unambiguous."""

from __future__ import annotations

from modinspect.sources.base import TensorKind

# Buffers torch's own modules register under these names, and never parameters:
# BatchNorm*/SyncBatchNorm/InstanceNorm* (running stats), FractionalMaxPool* (_random_samples),
# torch.ao fake-quantize and observer modules. Generic names some modules use for buffers and
# others for parameters (`scale`, `weight`, `eps`, `min_val`) stay unknown.
STANDARD_BUFFER_NAMES = frozenset(
    {
        "running_mean",
        "running_var",
        "num_batches_tracked",
        "_random_samples",
        "fake_quant_enabled",
        "observer_enabled",
        "zero_point",
    }
)


def checkpoint_kind(name: str, is_parameter: bool = False) -> TensorKind:
    """'parameter' when the file says so, 'buffer' for a standard buffer name, else 'unknown'."""
    if is_parameter:
        return "parameter"
    return "buffer" if name.rpartition(".")[2] in STANDARD_BUFFER_NAMES else "unknown"
