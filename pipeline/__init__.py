"""imgpipe's runtime core: what runs in Lambda (model manifest, decoding, classifier, AWS adapters).

Everything in this folder ships in the Lambda package; the tooling (CLI, local stack, benchmark,
report, cost) lives in `imgpipe/` and is never imported from here.
Kept free of imports so `import pipeline.<module>` loads only what it needs (cold start).
"""
