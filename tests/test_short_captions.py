"""experiments/unclip/short_captions.sh: the caption mix it passes reaches every model's training data, the zoo-eval
rows score short captions, and prior_diversity.py's real reference finds scenes that a short caption cannot tell apart.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from zoo.data.shapes import ShapesDataset, main_subject
from zoo.train import instantiate

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "unclip" / "short_captions.sh"


def _mix_override() -> str:
    """The MIX='...' override exactly as the script passes it (so the script and this test cannot drift)."""
    (mix,) = re.findall(r"^MIX='([^']+)'", SCRIPT.read_text(), re.M)
    return mix


def test_the_script_trains_every_model_of_the_chain_on_the_mix():
    text = SCRIPT.read_text()
    for experiment in ("demo/clip", "leaderboard/decoder", "glide/clip_text"):
        (line,) = [ln for ln in text.splitlines() if f"experiment={experiment}" in ln]
        assert '"$MIX"' in line, experiment
    # the prior trains from zoo-embed features, so the mix goes to zoo-embed (the train split's captions)
    assert '"$MIX"' in text[text.index("zoo.embed") : text.index("done", text.index("zoo.embed"))]


@pytest.mark.parametrize("experiment", ["demo/clip", "leaderboard/decoder", "glide/clip_text"])
def test_the_mix_reaches_the_training_scenes(train_cfg, experiment):
    cfg = train_cfg(f"experiment={experiment}", _mix_override(), "data.train_size=400")
    ds = instantiate(cfg.data).build_dataset("train")
    styles = [ds.scene(i)[2] for i in range(400)]
    assert set(styles) == {"descriptive", "short"}
    assert 0.4 < styles.count("short") / 400 < 0.6
    assert dict(cfg.data.caption_mix) == {"descriptive": 0.5, "short": 0.5}


def test_the_eval_rows_score_short_captions(tmp_path):
    from tests.conftest import compose_cfg

    for row in ("unclip_diffusion", "glide_clip_text"):
        cfg = compose_cfg(
            tmp_path, [f"experiment=leaderboard/{row}", "protocol.caption_style=short"], "conf.eval", "eval"
        )
        OmegaConf.to_container(cfg, resolve=True)
        assert cfg.protocol.caption_style == "short" and cfg.protocol.n == 256
    protocol = instantiate(cfg.protocol, n=16)
    captions = protocol.load().captions  # a short caption names only the main subject: a few words
    assert len(captions) == 16 and max(len(c.split()) for c in captions) <= 5


def test_same_subject_scenes_share_what_a_short_caption_names():
    spec = importlib.util.spec_from_file_location("prior_diversity", ROOT / "experiments/unclip/prior_diversity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ds = ShapesDataset("val", size=8, caption_style="short")
    search = ShapesDataset("val", size=2000)
    for i in range(8):
        group = mod.same_subject_scenes(ds, i, 4, search)
        assert group[0] == i and len(set(group)) == 4
        want = main_subject(ds.scene(i)[0])
        for j in group:
            got = main_subject(search.scene(j)[0])
            assert (got["colour"], got["shape"]) == (want["colour"], want["shape"])
        # the real twins differ in what the caption leaves open (other objects, cells, background)
        assert len({str(search.scene(j)[0]) for j in group}) == 4
    with pytest.raises(ValueError, match="--search"):
        mod.same_subject_scenes(ds, 0, 4, ShapesDataset("val", size=3))
