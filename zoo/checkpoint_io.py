"""Lightning's checkpoint writer, made atomic on the checkpoint's own file system.

Lightning's ``TorchCheckpointIO`` writes a checkpoint through an fsspec transaction whose temporary file lives in
the system temp dir (``/tmp``), then ``shutil.move``s it into place. When ``/tmp`` is another file system than the
run directory (node-local ``/tmp``, the run on NFS / Lustre -- the usual cluster layout) that move is a copy into
``last.ckpt`` itself: a job killed during the copy leaves a truncated ``last.ckpt`` that ``ckpt_path=last`` picks,
and a small or full ``/tmp`` fails every save although the run directory has room. This writes the temporary file
next to the checkpoint, fsyncs it and ``os.replace``s it (``zoo.checkpoint.atomic_torch_save``).
"""

from __future__ import annotations

from typing import Any, Optional

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are temp-file-in-the-same-directory + ``os.replace``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        protocol = get_filesystem(path).protocol  # "file" or ("file", "local"), by fsspec version
        if storage_options is not None or "file" not in ((protocol,) if isinstance(protocol, str) else protocol):
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote storage: Lightning's way
        from zoo.checkpoint import atomic_torch_save

        atomic_torch_save(checkpoint, path)
