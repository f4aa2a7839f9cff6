"""Offline 5-modality mini benchmark for the SkillNet + Wukong model (issue 6): real data from
installed packages only, built once, cached, split deterministically.

    from model.data import build_benchmark, WordPieceTokenizer, retrieval_metrics, accuracy
    tasks = build_benchmark()            # name -> Task; tasks whose source is absent are skipped
    tok = WordPieceTokenizer.default()   # bert-base-chinese WordPiece (21,128) or the fallback

`python -m model.data` builds and prints a table. See benchmark.TASKS and sources.py for what each
task is made of and which package provides it.
"""
from ._common import SourceMissing
from .benchmark import TASKS, Task, build_benchmark, default_root
from .metrics import accuracy, mean_r1, retrieval_metrics, topk_recall
from .tokenizer import WordPieceTokenizer

__all__ = [
           "TASKS",
           "SourceMissing",
           "Task",
           "WordPieceTokenizer",
           "accuracy",
           "build_benchmark",
           "default_root",
           "mean_r1",
           "retrieval_metrics",
           "topk_recall",
]
