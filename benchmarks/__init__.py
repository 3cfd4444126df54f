"""Benchmark suite (issue #6): scripts that print a table and write JSON.

synthesis_quality (CIFAR-10, CPU scale) and gpu_scale compare our best generated network with pruning and
width-scaled baselines at matched MACs; inference_speed and synthesis_overhead read or run a synthesis;
task_runs runs the segmentation (CamVid) and detection (Penn-Fudan) experiments.
"""
from gensynth_pl.console import silence_foreign_warnings

silence_foreign_warnings()  # every benchmark is an entry point, like train.py
