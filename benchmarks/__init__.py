"""medseg's benchmarks: each module measures one thing and runs from the repository root as
``python -m benchmarks.<name> --output benchmarks/results/<name>/<result>``; ``benchmarks.common`` writes every result
file in one shape. They import medseg and ``medseg.testing``, never the tests."""
