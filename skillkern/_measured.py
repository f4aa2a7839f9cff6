"""backend="auto"'s measured order per GPU model (device name) and op: written by
`python -m skillkern.bench.auto_order ROWS.jsonl... --write` from goal-shape bench rows
(ms: each backend's total over the op's goal shapes; rows: the commit and date they were
measured at). Do not edit by hand; _backend.resolve() reads MEASURED."""

MEASURED = {'NVIDIA H200': {'skill_ffn': {'ms': {'cuda': 23.7366, 'triton': 5.239},
                               'order': ['triton', 'cuda', 'torch'],
                               'rows': {'cuda': '7994832 2026-12-04',
                                        'triton': '3b06bd5 2026-12-04'}}}}
