"""cacheward's benchmarks: programs that measure cacheward and its peers side by side.

Run them from the repository root: ``python -m benchmarks NAME [--quick] [--json PATH]``.
"""
