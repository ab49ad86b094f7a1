"""imgpipe's core: model manifest, decoding, classifier, AWS adapters, local stack, CLI.

Kept free of imports so `import pipeline.<module>` loads only what it needs (cold start).
"""
