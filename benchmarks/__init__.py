"""Benchmarks of mlpersonalize: quality of new-label updates, speed against plain baselines, scaling.

Run ``python -m benchmarks.run [--quick|--smoke|--full] [--model PATH] [--out DIR]``; it writes
``results.json`` (raw numbers) and ``BENCHMARKS.md`` (tables and analysis). Nothing here is
imported by the runtime package.
"""
