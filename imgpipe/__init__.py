"""imgpipe's tooling: the CLI, the local stack, the benchmark, the report and the cost model.

None of it ships to Lambda; it imports the runtime core (`pipeline/`), never the other way.
"""
