"""CLIP on open_clip. ``ClipScorer`` is importable without Lightning: ``from zoo.models.clip.scorer import ClipScorer``."""
