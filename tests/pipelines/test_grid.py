"""zoo.pipelines.grid: a checkpoint's own validation grid (what zoo-sample ckpt=<file> writes without prompts)."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("n_averaged,want_trained", [(0, True), (3, False)])
def test_grid_uses_the_ema_once_started_and_the_trained_weights_before(
    tmp_path, dalle_helpers, n_averaged, want_trained
):
    """A checkpoint saved before the EMA's first update holds the INITIAL weights as its average (state_dict) and the
    trained ones in current_model_state: its grid is drawn with the trained weights (it was drawn with the initial
    ones); once the EMA has started, with the EMA."""
    from zoo.checkpoint import atomic_torch_save, safe_load
    from zoo.pipelines.grid import checkpoint_sample_grid

    H = dalle_helpers
    ck = safe_load(H.tiny_tokenizer_ckpt(tmp_path / "tok.ckpt"))
    trained = ck["state_dict"]
    average = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in trained.items()}  # outputs 0
    ck.update(state_dict=average, current_model_state=trained, averaging_state={"n_averaged": torch.tensor(n_averaged)})
    ck["zoo_config"]["data"] = {
        "_target_": "zoo.data.modules.ShapesDataModule",
        "resolution": H.RESOLUTION,
        "batch_size": 4,
        "train_size": 4,
        "val_size": 4,
        "test_size": 4,
        "num_workers": 0,
    }
    atomic_torch_save(ck, tmp_path / "tok_ema.ckpt")
    grid, _ = checkpoint_sample_grid(str(tmp_path / "tok_ema.ckpt"))
    recon = grid[1::2]  # input | reconstruction pairs
    assert bool(recon.std() > 0) == want_trained
