"""Benchmark suite (issue #6): synthesis quality at matched MACs, inference speed, synthesis overhead, GPU scale.

Segmentation (CamVid) and detection (Penn-Fudan) benchmarks are not here yet: those tasks do not exist on this
branch. Once they land on main, their benchmarks plug into ``benchmarks.common.compare`` with the task's
datamodule, task object and prototype (the gate metric is read from ``common.MONITOR``, which would become an
argument).
"""
